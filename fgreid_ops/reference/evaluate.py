"""Rank evaluation (SPEC §6) in plain PyTorch: sorts every row of the full distance matrix.

Memory is several Q x G tensors: use it to check the kernels, not on MSMT17-size data."""

import torch
import torch.nn.functional as F


def distance_reference(q_feats: torch.Tensor, g_feats: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """[Q, G] distances as torchreid computes them: ``"euclidean"`` is the *squared* Euclidean
    distance ||q||^2 + ||g||^2 - 2 q.g (monotone in the Euclidean one, so it ranks the same),
    ``"cosine"`` is 1 - cos(q, g). float32 for half/bfloat16 features, float64 for float64."""
    compute = torch.float64 if torch.float64 in (q_feats.dtype, g_feats.dtype) else torch.float32
    q, g = q_feats.to(compute), g_feats.to(compute)
    if metric == "cosine":
        return 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    return (q * q).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2 * (q @ g.T)


def per_query_reference(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid=None):
    """(first_hit [Q] int64, ap [Q] float64, inp [Q] float64) of each query.

    Per query: gallery items with the query's pid and camera are removed (and, when junk_pid is
    given, every item of that pid); the rest is sorted by ascending distance, ties to the lower
    gallery index, NaN last (a stable sort). The remaining items of the query's pid are its hits
    at 1-based ranks r_1 < ... < r_n. first_hit = r_1, ap = mean_k k / r_k,
    inp = n / r_n (fast-reid's mINP term). A query with n = 0 is skipped: -1, NaN, NaN."""
    order = torch.sort(distmat, dim=1, stable=True).indices
    gp, gc = g_pids[order], g_camids[order]
    same_pid = gp == q_pids[:, None]
    keep = ~(same_pid & (gc == q_camids[:, None]))
    if junk_pid is not None:
        keep &= gp != junk_pid
    hit = same_pid & keep
    rank = keep.cumsum(1)
    hits_so_far = hit.cumsum(1)
    n = hit.sum(1)
    precision = torch.where(hit, hits_so_far.double() / rank.double(), 0.0)
    ap = precision.sum(1) / n
    first_hit = torch.where(hit, rank, distmat.shape[1] + 1).amin(1)
    first_hit = torch.where(n > 0, first_hit, -1)
    inp = n.double() / torch.where(hit, rank, 0).amax(1)
    return first_hit, ap, inp


def summarize(first_hit, ap, inp, max_rank: int):
    """(cmc [max_rank], mAP, mINP, num_skipped) over the queries with a hit (first_hit > 0).

    cmc[k] is the fraction of those queries whose first hit is at rank <= k + 1; ranks past
    the gallery size keep the last value (1.0), so cmc always has max_rank entries. With no
    valid query, cmc, mAP and mINP are NaN (torchreid raises instead)."""
    valid = first_hit > 0
    num_valid = valid.sum()
    ranks = torch.arange(1, max_rank + 1, device=first_hit.device)
    hits = (first_hit[:, None] <= ranks[None, :]) & valid[:, None]
    cmc = hits.sum(0).double() / num_valid
    mean_ap = torch.where(valid, ap, 0.0).sum() / num_valid
    mean_inp = torch.where(valid, inp, 0.0).sum() / num_valid
    return cmc, mean_ap, mean_inp, first_hit.shape[0] - num_valid


def evaluate_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, junk_pid=None):
    """(cmc, mAP, mINP, num_skipped, ap) as fgreid_ops.evaluate computes them (SPEC §6)."""
    first_hit, ap, inp = per_query_reference(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid)
    return (*summarize(first_hit, ap, inp, max_rank), ap)

__all__ = ["distance_reference", "evaluate_reference", "per_query_reference"]
