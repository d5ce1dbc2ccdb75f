"""The one place where python_models reaches the fgreid_ops ops.

Every model, loss and evaluator imports the ops from here, so that an op that has not landed in
fgreid_ops yet can be served by a TEMPORARY plain-PyTorch stand-in written from SPEC.md without
anything else changing when the real op lands. An op found in fgreid_ops is always used; a
stand-in is used only while `getattr(fgreid_ops, name)` is missing, and `STAND_INS` lists
which ones are active (tests and the training script print it).
"""

import numpy as np
import torch
import torch.nn.functional as F

import fgreid_ops

STAND_INS: list[str] = []


def _resolve(name, stand_in):
    op = getattr(fgreid_ops, name, None)
    if op is not None:
        return op
    STAND_INS.append(name)
    return stand_in


# ---------------------------------------------------------------------------------------------
# TEMPORARY stand-ins (SPEC §3–§6). Delete each one when its op is in fgreid_ops.
# ---------------------------------------------------------------------------------------------

def _mask_upsample_mul_stand_in(feat, mask, mode="bilinear", pool=False):
    """SPEC §3: interpolate(mask, size=(H, W), mode, align_corners=False) ⊙ feat (mean over H×W if pool)."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(mask, size=feat.shape[-2:], mode=mode, **kwargs)
    out = feat * up
    return out.mean(dim=(2, 3)) if pool else out


def _topk_mask_stand_in(f1, f2, k):
    """SPEC §4: zero f2 at the k spatial positions of largest Σ_c f1 (ties to the lower index)."""
    n, _, h, w = f1.shape
    keep = torch.ones(n, h * w, dtype=f2.dtype, device=f2.device)
    k = min(int(k), h * w)
    if k > 0:
        idx = f1.detach().sum(1).reshape(n, h * w).topk(k, dim=1, sorted=False).indices
        keep = keep.scatter(1, idx, 0.0)
    mask = keep.reshape(n, 1, h, w)
    return f2 * mask, mask


def _batch_hard_triplet_stand_in(emb, labels, margin=0.3, **_unused):
    """SPEC §5, the batch as its own reference, Euclidean distance, mean reduction."""
    sq = emb.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * emb @ emb.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    d_an = dist.masked_fill(same, float("inf")).amin(1)
    has_neg = (~same).any(1)
    if margin:
        loss = F.relu(d_ap - d_an + margin)
    else:
        loss = F.softplus(d_ap - d_an)
    return torch.where(has_neg, loss, torch.zeros_like(loss)).mean()


def _evaluate_stand_in(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """SPEC §6 (Market-1501 protocol) on a full distance matrix; returns (cmc, mAP, mINP)."""
    distmat = torch.as_tensor(distmat, dtype=torch.float64)
    q_pids, g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
    q_camids, g_camids = torch.as_tensor(q_camids), torch.as_tensor(g_camids)
    num_g = distmat.shape[1]
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64)
    aps, inps, valid = [], [], 0
    gallery_index = torch.arange(num_g, dtype=torch.float64)
    for i in range(distmat.shape[0]):
        # stable sort on (distance, index): ties go to the lower gallery index
        order = torch.from_numpy(np.lexsort((gallery_index.numpy(), distmat[i].numpy())))
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        matches = (g_pids[order] == q_pids[i])[keep].to(torch.float64)
        if matches.sum() == 0:
            continue
        valid += 1
        cmc = matches.cumsum(0).clamp(max=1)
        take = min(max_rank, cmc.numel())
        cmc_sum[:take] += cmc[:take]
        if take < max_rank:
            cmc_sum[take:] += 1
        hits = matches.nonzero().flatten().to(torch.float64)
        aps.append(((torch.arange(1, hits.numel() + 1, dtype=torch.float64)) / (hits + 1)).mean())
        inps.append(hits.numel() / (hits[-1] + 1))
    if valid == 0:
        raise RuntimeError("evaluate: no query has a valid match in the gallery")
    return cmc_sum / valid, float(torch.stack(aps).mean()), float(torch.stack(inps).mean())


def _evaluate_features_stand_in(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank=50, **_unused):
    """SPEC §6 from features (Euclidean), through the full distance matrix."""
    return _evaluate_stand_in(torch.cdist(q_feats.double(), g_feats.double()), q_pids, g_pids, q_camids, g_camids,
                              max_rank)


off = fgreid_ops.off
mask_upsample_mul = _resolve("mask_upsample_mul", _mask_upsample_mul_stand_in)
topk_mask = _resolve("topk_mask", _topk_mask_stand_in)
batch_hard_triplet = _resolve("batch_hard_triplet", _batch_hard_triplet_stand_in)
evaluate = _resolve("evaluate", _evaluate_stand_in)
evaluate_features = _resolve("evaluate_features", _evaluate_features_stand_in)
gem = fgreid_ops.gem
GeM = fgreid_ops.nn.GeM

__all__ = ["off", "mask_upsample_mul", "topk_mask", "batch_hard_triplet", "evaluate", "evaluate_features", "gem", "GeM",
           "STAND_INS"]
