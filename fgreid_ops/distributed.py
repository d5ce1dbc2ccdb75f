"""Batch-hard triplet loss across ranks: every rank mines its anchors against the batches of all
ranks (fast-reid's cross-GPU negatives), using the all-gathered embeddings as the reference set.

    loss = fgreid_ops.distributed.batch_hard_triplet(emb, labels, margin=0.3)

The gathered embeddings keep their gradient: the backward sums, over ranks, the gradient that
each rank's loss sends to every gathered row and hands each rank the part for its own rows. So
with DistributedDataParallel (which averages gradients over ranks) training equals one process
that sees the concatenated batch with reduction="mean": the rank losses average to its loss and
the averaged gradients to its gradients (with reduction="sum", the sums are equal). Ranks may
hold batches of different sizes (then "mean" is a per-rank mean, weighted accordingly)."""

import torch
import torch.distributed as dist

from .ops.batch_hard_triplet import batch_hard_triplet as _batch_hard_triplet


def world_size(group=None) -> int:
    """The number of ranks, 1 when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _gather_sizes(n: int, device, group) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size(group))]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device), group=group)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenation over ranks of x (rank r holding sizes[r] rows); rows padded to the largest
    batch for the collective, then dropped."""
    most = max(sizes)
    padded = x.new_zeros((most,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGatherRows(torch.autograd.Function):
    """all_gather along dim 0 whose backward all-reduces (sums) the gradient of the gathered
    tensor and returns each rank its own rows: the gradient of Σ_ranks loss_rank."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        start = sum(ctx.sizes[:rank])
        return grad[start : start + ctx.sizes[rank]], None, None


def all_gather_embeddings(emb: torch.Tensor, labels: torch.Tensor, group=None):
    """(all_emb, all_labels): the rows of every rank in rank order, this rank's rows at offset
    sum(sizes of lower ranks). all_emb is differentiable (see the module docstring). Every rank
    of the group must call this (it is a collective), also in the backward."""
    if world_size(group) == 1:
        return emb, labels
    sizes = _gather_sizes(emb.shape[0], emb.device, group)
    return _AllGatherRows.apply(emb, sizes, group), _gather_padded(labels, sizes, group)


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3, *,
                       group=None, **kwargs):
    """fgreid_ops.batch_hard_triplet of this rank's anchors against the batches of all ranks
    (same keyword arguments, except ref_emb/ref_labels which this sets). Without an initialized
    process group it is the plain single-process loss."""
    if "ref_emb" in kwargs or "ref_labels" in kwargs:
        raise ValueError("fgreid_ops.batch_hard_triplet: the distributed loss sets ref_emb and ref_labels itself")
    all_emb, all_labels = all_gather_embeddings(emb, labels, group)
    if all_emb is emb:
        return _batch_hard_triplet(emb, labels, margin, **kwargs)
    return _batch_hard_triplet(emb, labels, margin, ref_emb=all_emb, ref_labels=all_labels, **kwargs)
