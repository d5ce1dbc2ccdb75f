"""fgreid_ops across ranks under torch.distributed (gloo for CPU tensors, NCCL for CUDA tensors;
start the ranks with torchrun and call ``torch.distributed.init_process_group`` first).

- ``batch_hard_triplet``: every rank mines its anchors against the batches of all ranks
  (fast-reid's cross-GPU negatives), with the all-gathered embeddings as the reference set.
- ``evaluate_features``: each rank passes its shard of the gallery and the same queries; every
  rank returns the one-process result on the whole gallery.
- ``all_gather_rows`` / ``all_gather_embeddings``: rows of every rank in rank order.
- ``SyncBatchNorm`` / ``convert_sync_batchnorm``: batch statistics over all ranks, CPU tensors
  included (``torch.nn.SyncBatchNorm`` accepts only GPU tensors; on CUDA this defers to it).

Every collective here first gathers a small descriptor of each rank's arguments (shapes, dtypes,
device type, options) and checks that the ranks agree, so a mismatch or a bad argument on one
rank raises the same error on every rank instead of an abort in the transport or a hang. (A
rank that never calls the collective still hangs the others until the process group's timeout.)
With NCCL, set each rank's CUDA device (``torch.cuda.set_device``) before the first call.

Gradients of the triplet loss: the gathered embeddings keep their gradient, and the backward
sums, over ranks, the gradient that each rank's loss sends to every gathered row and hands each
rank the part for its own rows. So with DistributedDataParallel (which averages gradients over
ranks) training equals one process that sees the concatenated batch with reduction="mean": the
rank losses average to its loss and the averaged gradients to its gradients (with
reduction="sum", the sums are equal). Ranks may hold batches of different sizes (then "mean" is
a per-rank mean, weighted accordingly)."""

import torch
import torch.distributed as dist
import torch.nn as nn

from . import _checks as checks
from .checks.evaluate import check_max_rank
from .checks.rerank import rerank_params
from .ops.evaluate import (EvaluationResult, _chunk_sizes, _compute_dtype, _count_gallery, _Distances,
                           _match_distances, _prepare_features, _result, _streaming_kernels)
from .ops.evaluate import evaluate_features as _evaluate_features
from .ops.batch_hard_triplet import batch_hard_triplet as _batch_hard_triplet

_ERROR_TYPES = {"TypeError": TypeError, "ValueError": ValueError}


def world_size(group=None) -> int:
    """The number of ranks, 1 when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def rank(group=None) -> int:
    """This process's rank, 0 when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


# --- agreement of the ranks --------------------------------------------------------------------

def _per_rank(values) -> str:
    return ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))


def _agree(op: str, group, fields: dict, same, error: Exception | None = None) -> list[dict]:
    """All-gathers this rank's descriptor (`fields`, small picklable values) and returns every
    rank's. Raises, identically on every rank, when a rank's own argument checks failed
    (`error`) or a field named in `same` differs between ranks."""
    mine = {"op": op, "error": None if error is None else (type(error).__name__, str(error)), **fields}
    everyone = [None] * world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    ops = [d["op"] for d in everyone]
    if any(o != op for o in ops):
        raise RuntimeError(f"fgreid_ops.distributed: expected every rank to call the same collective, "
                           f"got {_per_rank(ops)}")
    for r, d in enumerate(everyone):
        if d["error"] is not None:
            kind, message = d["error"]
            raise _ERROR_TYPES.get(kind, RuntimeError)(f"fgreid_ops.distributed.{op}: on rank {r}: {message}") \
                from error
    for key in same:
        values = [d[key] for d in everyone]
        if any(v != values[0] for v in values):
            raise ValueError(f"fgreid_ops.distributed.{op}: expected {key} to be the same on every rank, "
                             f"got {_per_rank(values)}")
    return everyone


def _check_transport(op: str, group, device_type: str) -> None:
    """Same outcome on every rank once the device types agree."""
    if str(dist.get_backend(group)) == "nccl" and device_type != "cuda":
        raise ValueError(f"fgreid_ops.distributed.{op}: expected CUDA tensors with the nccl backend, got "
                         f"{device_type} tensors (use gloo for CPU tensors)")


def _fingerprint(*tensors) -> int:
    """An order-sensitive checksum of the tensors' bits in exact integer arithmetic (so equal
    tensors give equal checksums on any device and in any summation order)."""
    prime = 2**31 - 1
    acc = None
    for position, t in enumerate(tensors):
        flat = t.detach().reshape(-1)
        if flat.element_size() == 1 or flat.dtype == torch.bool:
            bits = flat.to(torch.int16)
        else:
            bits = flat.contiguous().view(torch.int16 if flat.element_size() == 2 else torch.int32)
        step = 2**20
        # products below 2^47, their residues below 2^31: a sum of 2^20 of them fits int64
        for lo in range(0, bits.shape[0], step):
            part = bits[lo:lo + step].to(torch.int64)
            weight = torch.arange(lo, lo + part.shape[0], device=part.device) % 65521 + 1 + position
            term = (part * weight).remainder(prime).sum().remainder(prime)
            acc = term if acc is None else (acc * 31 + term).remainder(prime)
        size = torch.tensor(bits.shape[0] % prime, device=bits.device)
        acc = size if acc is None else (acc * 31 + size).remainder(prime)
    return int(acc)


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)} on {t.device.type}"


# --- gathering rows ----------------------------------------------------------------------------

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
        start = sum(ctx.sizes[: dist.get_rank(ctx.group)])
        return grad[start : start + ctx.sizes[dist.get_rank(ctx.group)]], None, None


def _rows_fields(op, arg, x) -> dict:
    checks.check_tensor(op, arg, x)
    if x.dim() == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at least 1 dimension (rows), got 0-D")
    return {f"{arg}.shape[1:]": list(x.shape[1:]), f"{arg}.dtype": str(x.dtype),
            f"{arg}.device.type": x.device.type,
            f"{arg}.requires_grad": bool(x.requires_grad and torch.is_grad_enabled())}


def all_gather_rows(x: torch.Tensor, group=None) -> torch.Tensor:
    """The rows (dim 0) of x of every rank in rank order; ranks may hold different numbers of
    rows, the other dimensions, dtype and device type must agree. Differentiable (the backward
    sums the gradients of all ranks, see the module doc). x itself without a process group."""
    if world_size(group) == 1:
        return x
    op = "distributed.all_gather_rows"
    fields, error = {}, None
    try:
        fields = _rows_fields(op, "x", x)
    except Exception as e:  # raised on every rank by _agree
        error = e
    same = ("x.shape[1:]", "x.dtype", "x.device.type", "x.requires_grad")
    everyone = _agree("all_gather_rows", group, {**fields, "rows": x.shape[0] if error is None else 0}, same, error)
    _check_transport("all_gather_rows", group, x.device.type)
    sizes = [d["rows"] for d in everyone]
    return _AllGatherRows.apply(x, sizes, group) if fields["x.requires_grad"] else _gather_padded(x, sizes, group)


def _triplet_fields(op, emb, labels) -> dict:
    checks.check_tensor(op, "emb", emb)
    checks.check_dim(op, "emb", emb, 2, "(B, D)")
    checks.check_float_dtype(op, "emb", emb)
    checks.check_tensor(op, "labels", labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"fgreid_ops.{op}: expected labels to be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(f"fgreid_ops.{op}: expected labels of shape [B]=[{emb.shape[0]}], got {list(labels.shape)}")
    checks.check_same_device(op, "labels", labels, "emb", emb)
    return {"rows": emb.shape[0], "emb.shape[1] (D)": emb.shape[1], "emb.dtype": str(emb.dtype),
            "emb.device.type": emb.device.type, "labels.dtype": str(labels.dtype),
            "emb.requires_grad": bool(emb.requires_grad and torch.is_grad_enabled())}


_TRIPLET_SAME = ("emb.shape[1] (D)", "emb.dtype", "emb.device.type", "labels.dtype", "emb.requires_grad")


def _gather_triplet(name, emb, labels, group, options=None):
    op = f"distributed.{name}"
    fields, error = {"rows": 0}, None
    try:
        fields = _triplet_fields(op, emb, labels)
    except Exception as e:  # raised on every rank by _agree
        error = e
    same = _TRIPLET_SAME
    if options is not None:
        fields["options"], same = options, same + ("options",)
    everyone = _agree(name, group, fields, same, error)
    _check_transport(name, group, emb.device.type)
    sizes = [d["rows"] for d in everyone]
    return _AllGatherRows.apply(emb, sizes, group), _gather_padded(labels, sizes, group)


def all_gather_embeddings(emb: torch.Tensor, labels: torch.Tensor, group=None):
    """(all_emb, all_labels): the rows of every rank in rank order, this rank's rows at offset
    sum(sizes of lower ranks). all_emb is differentiable (see the module docstring). Every rank
    of the group must call this (it is a collective), also in the backward."""
    if world_size(group) == 1:
        return emb, labels
    return _gather_triplet("all_gather_embeddings", emb, labels, group)


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3, *,
                       group=None, **kwargs):
    """fgreid_ops.batch_hard_triplet of this rank's anchors against the batches of all ranks
    (same keyword arguments, except ref_emb/ref_labels which this sets; margin and the keyword
    arguments must be the same on every rank). Without an initialized process group (or with one
    rank) it is the plain single-process loss."""
    if "ref_emb" in kwargs or "ref_labels" in kwargs:
        raise ValueError("fgreid_ops.distributed.batch_hard_triplet: the distributed loss sets ref_emb and ref_labels itself")
    if world_size(group) == 1:
        return _batch_hard_triplet(emb, labels, margin, **kwargs)
    options = repr((margin, sorted(kwargs.items())))
    all_emb, all_labels = _gather_triplet("batch_hard_triplet", emb, labels, group, options)
    return _batch_hard_triplet(emb, labels, margin, ref_emb=all_emb, ref_labels=all_labels, **kwargs)


# --- sharded evaluation ------------------------------------------------------------------------

_EVALUATE_SAME = ("q_feats (dtype, shape, device)", "g_feats.dtype", "g_feats.shape[1] (D)",
                  "the queries (q_feats, q_pids, q_camids)", "metric", "max_rank", "junk_pid", "backend", "rerank")


def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                      metric: str = "euclidean", memory_budget: int = 256 * 2**20, progress: bool = False,
                      return_per_query: bool = False, junk_pid: int | None = None,
                      backend: str | None = None, rerank: dict | None = None, group=None) -> EvaluationResult:
    """fgreid_ops.evaluate_features with the gallery sharded over the ranks of `group`.

    Each rank passes the same queries (q_feats, q_pids, q_camids) and its own shard of the
    gallery (g_feats, g_pids, g_camids; any number of rows, zero included); the global gallery is
    rank 0's rows, then rank 1's, and so on. Every rank returns the result of the one-process
    ``fgreid_ops.evaluate_features`` on the whole gallery, ties to the lower global gallery index.

    How: every rank lists the matches of each query in its shard and their distances (read from
    the GEMM blocks it counts with, so a match ties exactly with a duplicate row); the lists
    are all-gathered (O(Q + matches), as in one process); each rank streams its shard in chunks
    (the one-process kernels, with the shard's global offset) counting, for every match of every
    query, the kept other-pid items of the shard ranked before it; the counts are all-reduced
    (summed) and every rank finalizes CMC, AP and INP. Memory per rank: the shard, the queries and
    the match lists, plus ``memory_budget`` bytes for a distance block. Exactness: each pair's
    distance comes from a GEMM of that rank's chunk; identical features give identical distances
    on every rank, but a GEMM of another shape may round a distance differently in the last bit
    (as one process with another memory_budget may), which can only reorder items whose
    distances differ by such a rounding. With backend="reference" (or under use_reference())
    the gallery is gathered to every rank and the reference runs there (not O(shard)).
    With ``rerank`` (k-reciprocal re-ranking, as in fgreid_ops.evaluate_features) the gallery is
    gathered too: every row's neighbours depend on the whole gallery, so each rank holds all the
    features (O(G·D) per rank, plus the O(N·(k1 + k2)) re-ranking state) and streams the
    re-ranked distances of all queries, as one process does.

    The queries' bits, shapes, dtypes, device type and the options are checked to agree across
    ranks first (one descriptor all-gathered); a disagreement or a bad argument on any rank
    raises the same error on every rank. Without a process group (or with one rank) this is
    ``fgreid_ops.evaluate_features``.
    """
    if world_size(group) == 1:
        return _evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank,
                                  metric=metric, memory_budget=memory_budget, progress=progress,
                                  return_per_query=return_per_query, junk_pid=junk_pid, backend=backend,
                                  rerank=rerank)
    name = "evaluate_features"
    fields, error = {"gallery rows": 0}, None
    try:
        q, g, ids, backend = _prepare_features(f"distributed.{name}", q_feats, g_feats,
                                               (q_pids, g_pids, q_camids, g_camids), max_rank, junk_pid,
                                               metric, memory_budget, backend, min_gallery=0)
        fields = {"gallery rows": g.shape[0], "q_feats (dtype, shape, device)": _describe(q),
                  "g_feats.dtype": str(g.dtype), "g_feats.shape[1] (D)": g.shape[1],
                  "the queries (q_feats, q_pids, q_camids)": f"checksum {_fingerprint(q, ids[0], ids[2]):#010x}",
                  "metric": metric, "max_rank": max_rank, "junk_pid": junk_pid, "backend": backend,
                  "rerank": None if rerank is None else rerank_params(f"distributed.{name}", rerank)}
    except Exception as e:  # raised on every rank by _agree
        error = e
    everyone = _agree(name, group, fields, _EVALUATE_SAME, error)
    _check_transport(name, group, q.device.type)
    sizes = [d["gallery rows"] for d in everyone]
    if sum(sizes) == 0:
        raise ValueError(f"fgreid_ops.distributed.{name}: expected at least one gallery item over all ranks, "
                         f"got empty shards on all {len(sizes)} ranks")
    check_max_rank(f"distributed.{name}", max_rank, sum(sizes))  # the same sizes, so the same verdict, on every rank
    q_pids, g_pids, q_camids, g_camids = ids
    if backend == "reference" or rerank is not None:
        gathered = [_gather_padded(t, sizes, group) for t in (g, g_pids, g_camids)]
        return _evaluate_features(q, gathered[0], q_pids, gathered[1], q_camids, gathered[2], max_rank,
                                  metric=metric, memory_budget=memory_budget, progress=progress,
                                  return_per_query=return_per_query, junk_pid=junk_pid, backend=backend,
                                  rerank=rerank)

    Q, D, G = q.shape[0], q.shape[1], g.shape[0]
    g_start = sum(sizes[: dist.get_rank(group)])
    distances = _Distances(q, metric, _compute_dtype(q, g))
    matches, count_op, finalize = _streaming_kernels(backend)
    if G > 0:
        offsets, index = matches(*ids, junk_pid)
    else:
        offsets = torch.zeros(Q + 1, dtype=torch.int64, device=q.device)
        index = torch.zeros(0, dtype=torch.int64, device=q.device)
    q_block, chunk = _chunk_sizes(Q, max(1, G), D + 2, memory_budget, distances.itemsize)
    match_dist = _match_distances(distances, g, offsets, index, q_block, chunk)  # this shard's, from its GEMM blocks
    offsets, index, match_dist = _gather_matches(offsets, index + g_start, match_dist, group)
    counts = torch.zeros(index.shape[0], dtype=torch.int64, device=q.device)
    _count_gallery(distances, g, g_pids, g_start, q_pids, offsets, index, match_dist, counts, junk_pid,
                             count_op, q_block, chunk, progress)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    return _result(*finalize(offsets, index, match_dist, counts), max_rank, return_per_query)


def _gather_matches(offsets, index, match_dist, group):
    """The global CSR match lists from every rank's (global gallery indices): per query, rank 0's
    matches, then rank 1's, ... (ascending gallery index, as one process lists them)."""
    per_query = offsets.diff()
    world = world_size(group)
    parts = [torch.empty_like(per_query) for _ in range(world)]
    dist.all_gather(parts, per_query, group=group)
    per_rank_query = torch.stack(parts)  # [world, Q]
    sizes = per_rank_query.sum(1).tolist()
    if sum(sizes) == 0:
        return torch.zeros_like(offsets), index, match_dist
    all_index = _gather_padded(index, sizes, group)
    all_dist = _gather_padded(match_dist, sizes, group)
    Q = per_query.shape[0]
    queries = torch.arange(Q, device=offsets.device).repeat(world)
    match_query = torch.repeat_interleave(queries, per_rank_query.reshape(-1), output_size=all_index.shape[0])
    order = torch.sort(match_query, stable=True).indices
    global_offsets = torch.zeros_like(offsets)
    global_offsets[1:] = per_rank_query.sum(0).cumsum(0)
    return global_offsets, all_index[order], all_dist[order]


# --- synchronized batch norm -------------------------------------------------------------------

class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm with the mean and variance over the rows of all ranks (Chan's parallel
    combination of per-rank means and squared deviations, one all_gather) and the backward of
    the global statistics (one all_reduce of Σ dy and Σ dy·x̂ per channel)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        C = x.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        dims = [0] + list(range(2, x.dim()))
        shape = [1, C] + [1] * (x.dim() - 2)
        xf = x.to(acc)
        n = x.numel() // C
        mean = xf.sum(dims) / max(n, 1)
        m2 = (xf - mean.view(shape)).square().sum(dims)
        stats = torch.cat([torch.full((1,), float(n), dtype=acc, device=x.device), mean, m2])
        parts = [torch.empty_like(stats) for _ in range(world_size(group))]
        dist.all_gather(parts, stats, group=group)
        stats = torch.stack(parts)
        counts, means, m2s = stats[:, :1], stats[:, 1:C + 1], stats[:, C + 1:]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_m2 = (m2s + counts * (means - g_mean).square()).sum(0)
        invstd = torch.rsqrt(g_m2 / total + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(g_mean.to(running_mean.dtype), alpha=momentum)
                unbiased = g_m2 / (total - 1).clamp(min=1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        xhat = (xf - g_mean.view(shape)) * invstd.view(shape)
        y = xhat if weight is None else xhat * weight.to(acc).view(shape) + bias.to(acc).view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total, ctx.group, ctx.dims, ctx.shape = total, group, dims, shape
        ctx.has_bias = bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        xhat, weight, invstd = ctx.saved_tensors
        dy = grad.to(xhat.dtype)
        sum_dy = dy.sum(ctx.dims)
        sum_dy_xhat = (dy * xhat).sum(ctx.dims)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, op=dist.ReduceOp.SUM, group=ctx.group)
        C = sum_dy.shape[0]
        scale = invstd if weight is None else invstd * weight.to(xhat.dtype)
        grad_x = scale.view(ctx.shape) * (dy - (both[:C] / ctx.total).view(ctx.shape)
                                          - xhat * (both[C:] / ctx.total).view(ctx.shape))
        grad_w = None if weight is None else sum_dy_xhat.to(weight.dtype)
        grad_b = sum_dy.to(weight.dtype) if ctx.has_bias else None
        return grad_x.to(grad.dtype), grad_w, grad_b, None, None, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of all ranks' rows together, for CPU
    tensors over gloo as well (torch.nn.SyncBatchNorm, and DistributedDataParallel around it,
    accept only GPU modules; on CUDA prefer torch's, which has fused kernels). Eval mode, or one
    process, is plain batch norm. Every rank must run the layer in training mode (a collective)
    with the same channels and dtype; the state_dict is torch.nn.BatchNorm's."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"fgreid_ops.distributed.SyncBatchNorm: expected input to be at least 2-D (N, C, ...), "
                             f"got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group
        if not (self.training and world_size(group) > 1):
            return super().forward(input)
        fields, error = {}, None
        try:
            checks.check_tensor("distributed.SyncBatchNorm", "input", input)
            if input.dim() < 2 or input.shape[1] != self.num_features:
                raise ValueError(f"fgreid_ops.distributed.SyncBatchNorm: expected input of shape (N, "
                                 f"{self.num_features}, ...), got {list(input.shape)}")
            fields = {"input.shape[1] (C)": input.shape[1], "input.dtype": str(input.dtype),
                      "input.device.type": input.device.type,
                      "requires grad": bool(torch.is_grad_enabled() and (input.requires_grad or any(
                          p is not None and p.requires_grad for p in (self.weight, self.bias))))}
        except Exception as e:  # raised on every rank by _agree
            error = e
        _agree("SyncBatchNorm", group, fields, ("input.shape[1] (C)", "input.dtype", "input.device.type",
                                                "requires grad"), error)
        _check_transport("SyncBatchNorm", group, input.device.type)
        momentum = 0.0 if self.momentum is None else self.momentum
        running_mean = running_var = None
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch.nn.BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
            running_mean, running_var = self.running_mean, self.running_var
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean, running_var, self.eps,
                                            momentum, group or dist.group.WORLD)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every batch norm layer of `module` (BatchNorm1d/2d/3d, torch.nn.SyncBatchNorm) replaced by
    this module's SyncBatchNorm sharing its parameters and buffers, as
    torch.nn.SyncBatchNorm.convert_sync_batchnorm does; returns the converted module (a new one
    when `module` itself is a batch norm layer)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


__all__ = ["world_size", "rank", "batch_hard_triplet", "all_gather_embeddings", "all_gather_rows",
           "evaluate_features", "SyncBatchNorm", "convert_sync_batchnorm"]
