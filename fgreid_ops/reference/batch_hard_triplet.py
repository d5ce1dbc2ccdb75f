import torch
import torch.nn.functional as F


def _first_index(key, candidate, best):
    """Per row, the lowest column where `candidate` holds and key == best; -1 if none."""
    M = key.shape[1]
    columns = torch.arange(M, device=key.device).expand_as(key)
    hit = candidate & (key == best[:, None])
    idx = torch.where(hit, columns, M).amin(dim=1)
    return torch.where(idx == M, -1, idx)


def batch_hard_triplet_reference(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = 0.3,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    distance: str = "euclidean",
    normalize: bool = False,
    reduction: str = "mean",
    return_indices: bool = False,
):
    """Batch-hard triplet loss (SPEC §5) from the full B×M distance matrix, in float32 for
    half/bfloat16 input (float64 stays float64); the loss is returned in emb's dtype.

    dist = sqrt(clamp(|a|² + |b|² − 2a·b, min=1e-12)) ("euclidean"), clamp(…, min=0)
    ("sqeuclidean") or 1 − cos(a, b) ("cosine"); normalize=True L2-normalizes the rows first.
    d_ap = max over references with the anchor's label (the anchor itself included when the
    batch is its own reference), d_an = min over the others; the lowest index wins ties and a
    NaN distance wins both. loss_i = relu(d_ap − d_an + margin), or softplus(d_ap − d_an) when
    margin is 0 or None; anchors without a positive or a negative reference give 0. reduction
    "mean" divides by B (every anchor), "sum", "none" ([B]). With return_indices=True also
    returns (idx_p, idx_n), -1 where an anchor has none.
    """
    compute = torch.float64 if emb.dtype == torch.float64 else torch.float32
    a = emb.to(compute)
    b = a if ref_emb is None else ref_emb.to(compute)
    ref_labels = labels if ref_labels is None else ref_labels
    if normalize or distance == "cosine":
        a_n = F.normalize(a, dim=1)
        b = a_n if ref_emb is None else F.normalize(b, dim=1)
        a = a_n
    dots = a @ b.T
    if distance == "cosine":
        dist = 1 - dots
    else:
        sq = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2 * dots
        dist = sq.clamp(min=1e-12).sqrt() if distance == "euclidean" else sq.clamp(min=0)

    same = labels[:, None] == ref_labels[None, :]
    nan = dist.isnan()
    key_p = torch.where(nan, torch.inf, dist).masked_fill(~same, -torch.inf)
    key_n = torch.where(nan, -torch.inf, dist).masked_fill(same, torch.inf)
    idx_p = _first_index(key_p, same, key_p.amax(dim=1))
    idx_n = _first_index(key_n, ~same, key_n.amin(dim=1))

    d_ap = dist.gather(1, idx_p.clamp(min=0)[:, None]).squeeze(1)
    d_an = dist.gather(1, idx_n.clamp(min=0)[:, None]).squeeze(1)
    if margin:
        loss = F.relu(d_ap - d_an + margin)
    else:
        loss = F.softplus(d_ap - d_an)
    loss = torch.where((idx_p >= 0) & (idx_n >= 0), loss, 0.0)
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    loss = loss.to(emb.dtype)
    return (loss, idx_p, idx_n) if return_indices else loss

__all__ = ["batch_hard_triplet_reference"]
