"""The one place where python_models reaches the fgreid_ops ops.

Every model, loss and evaluator imports the ops from here, so that an op that has not landed in
fgreid_ops yet can be served by a TEMPORARY plain-PyTorch stand-in written from SPEC.md without
anything else changing when the real op lands. An op found in fgreid_ops is always used; a
stand-in is used only while `getattr(fgreid_ops, name)` is missing, and `STAND_INS` lists
which ones are active (tests and the training script print it).
"""

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
# TEMPORARY stand-ins (SPEC §3–§5). Delete each one when its op is in fgreid_ops.
# ---------------------------------------------------------------------------------------------

def _mask_upsample_mul_stand_in(feat, mask, mode="bilinear", pool=False):
    """SPEC §3: interpolate(mask, size=(H, W), mode, align_corners=False) ⊙ feat (mean over H×W if pool)."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(mask, size=feat.shape[-2:], mode=mode, **kwargs)
    out = feat * up
    return out.mean(dim=(2, 3)) if pool else out


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


off = fgreid_ops.off
mask_upsample_mul = _resolve("mask_upsample_mul", _mask_upsample_mul_stand_in)
topk_mask = fgreid_ops.topk_mask
batch_hard_triplet = _resolve("batch_hard_triplet", _batch_hard_triplet_stand_in)
evaluate = fgreid_ops.evaluate
evaluate_features = fgreid_ops.evaluate_features
tracklet_features = fgreid_ops.tracklet_features
gem = fgreid_ops.gem
GeM = fgreid_ops.nn.GeM

__all__ = ["off", "mask_upsample_mul", "topk_mask", "batch_hard_triplet", "evaluate", "evaluate_features",
           "tracklet_features", "gem", "GeM", "STAND_INS"]
