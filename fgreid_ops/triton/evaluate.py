"""Rank evaluation on GPU (SPEC §6): the launchers of fgreid::evaluate_triton (whole distance
matrix), fgreid::evaluate_count_triton (one gallery chunk, accumulating) and of the streamed
path's evaluate_matches_triton / evaluate_finalize_triton.

The hot loop is a Triton kernel: each program takes one query row and a block of gallery
columns, builds the kept-other-pid mask once and compares the block against the query's
matches, a [BLOCK_M, BLOCK_G] tile at a time, adding the counts with integer atomics (exact,
so the result does not depend on the order programs run). Building the match lists and turning
counts into ranks are a few sort/search calls over O(Q + matches) elements, in plain PyTorch
(`matches_torch`, `finalize_torch`), which also serve the streamed path on CUDA."""

import torch
import triton
import triton.language as tl

from ..checks.evaluate import check_count_inputs, check_finalize_inputs, check_matches_inputs, check_op_inputs
from ._utils import acc_dtype, launcher


@triton.jit
def _evaluate_count_kernel(
    dist_ptr, stride_q, stride_g, q_pids_ptr, g_pids_ptr, G, g_start,
    offsets_ptr, match_index_ptr, match_dist_ptr, counts_ptr, junk_pid,
    HAS_JUNK: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr,
):
    """counts[m] += #{kept gallery j of another pid in this block : (d[q, j], j) < (d_m, i_m)}
    for every match m of query q, in the order ascending distance, NaN last, lower index first."""
    q = tl.program_id(0).to(tl.int64)
    first = tl.load(offsets_ptr + q)
    last = tl.load(offsets_ptr + q + 1)
    if first < last:
        j = tl.program_id(1).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
        in_row = j < G
        qp = tl.load(q_pids_ptr + q)
        gp = tl.load(g_pids_ptr + j, mask=in_row, other=qp)
        kept = in_row & (gp != qp)
        if HAS_JUNK:
            kept = kept & (gp != junk_pid)
        d = tl.load(dist_ptr + q * stride_q + j * stride_g, mask=in_row, other=0.0).to(ACC)
        gj = j + g_start
        for start in range(first, last, BLOCK_M):
            m = start + tl.arange(0, BLOCK_M)
            in_list = m < last
            dm = tl.load(match_dist_ptr + m, mask=in_list, other=0.0).to(ACC)
            im = tl.load(match_index_ptr + m, mask=in_list, other=0)
            lower = gj[None, :] < im[:, None]
            before = (d[None, :] < dm[:, None]) | ((d[None, :] == dm[:, None]) & lower)
            # a NaN match ranks after every non-NaN item and after NaN items of lower index
            before_nan = (d[None, :] == d[None, :]) | lower
            before = tl.where((dm != dm)[:, None], before_nan, before)
            count = tl.sum((before & kept[None, :]).to(tl.int32), axis=1)
            tl.atomic_add(counts_ptr + m, count.to(tl.int64), mask=in_list & (count > 0))


def _check_offsets(offsets: torch.Tensor, nnz: int) -> None:
    """The kernel indexes the match lists with these values; reject any that would go out of
    bounds (one small reduction, a device sync on CUDA)."""
    if offsets.numel() > 0:
        bad = (offsets[0] < 0) | (offsets[-1] > nnz) | (offsets.diff() < 0).any()
        if bool(bad):
            raise ValueError(f"fgreid_ops.evaluate_count: expected match_offsets non-decreasing within [0, nnz]=[0, {nnz}]")


def count_launch(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts):
    Q, G = dist.shape
    if Q == 0 or G == 0 or index.numel() == 0:
        return
    block_g = min(1024, triton.next_power_of_2(G))
    grid = (Q, triton.cdiv(G, block_g))
    _evaluate_count_kernel[grid](
        dist, dist.stride(0), dist.stride(1), q_pids, g_pids, G, g_start,
        offsets, index, match_dist, counts, 0 if junk_pid is None else junk_pid,
        HAS_JUNK=junk_pid is not None, BLOCK_G=block_g, BLOCK_M=16, ACC=acc_dtype(dist.dtype)[1],
    )


def matches_torch(q_pids, g_pids, q_camids, g_camids, junk_pid=None):
    """CSR match lists (offsets [Q + 1], index [nnz]): per query, the gallery items of its pid
    from another camera (none for a junk-pid query), ascending gallery index. Sorts the gallery
    pids once and binary-searches each query's pid; nnz is read back (a sync on CUDA)."""
    Q = q_pids.shape[0]
    g_sorted, order = torch.sort(g_pids, stable=True)
    lo = torch.searchsorted(g_sorted, q_pids)
    n = torch.searchsorted(g_sorted, q_pids, right=True) - lo
    if junk_pid is not None:
        n = torch.where(q_pids == junk_pid, 0, n)
    query = torch.repeat_interleave(torch.arange(Q, device=q_pids.device), n)
    start = torch.cumsum(n, 0) - n
    index = order[torch.arange(query.shape[0], device=q_pids.device) - start[query] + lo[query]]
    other_camera = g_camids[index] != q_camids[query]
    index, query = index[other_camera], query[other_camera]
    offsets = torch.zeros(Q + 1, dtype=torch.int64, device=q_pids.device)
    offsets[1:] = torch.cumsum(torch.bincount(query, minlength=Q), 0)
    return offsets, index


def finalize_torch(offsets, index, match_dist, counts):
    """(first_hit, ap, inp) per query from the counts of kept other-pid items before each match:
    with a query's matches sorted (distance, NaN last; gallery index), the k-th (0-based) is at
    rank 1 + k + counts. Two stable sorts order the matches within each query."""
    Q, nnz, device = offsets.shape[0] - 1, index.shape[0], offsets.device
    n = offsets.diff()
    first_hit = torch.full((Q,), -1, dtype=torch.int64, device=device)
    nan = torch.full((Q,), float("nan"), dtype=torch.float64, device=device)
    if nnz == 0:
        return first_hit, nan, nan.clone()
    query = torch.repeat_interleave(torch.arange(Q, device=device), n, output_size=nnz)
    # + 0.0 turns -0.0 into +0.0: the CUDA radix sort would order them, the kernel ties them
    key = match_dist.to(acc_dtype(match_dist.dtype)[0]) + 0.0
    by_dist = torch.sort(key, stable=True).indices
    perm = by_dist[torch.sort(query[by_dist], stable=True).indices]
    k = torch.arange(nnz, device=device) - offsets[query]
    rank = 1 + k + counts[perm]
    precision = (k + 1).double() / rank.double()
    ap = torch.segment_reduce(precision, "sum", offsets=offsets, axis=0, unsafe=True) / n
    has_match = n > 0
    first_hit = torch.where(has_match, rank[offsets[:-1].clamp(max=nnz - 1)], first_hit)
    inp = torch.where(has_match, n.double() / rank[(offsets[1:] - 1).clamp(min=0)].double(), nan)
    return first_hit, torch.where(has_match, ap, nan), inp


@launcher(check_count_inputs)
def evaluate_count_triton(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts):
    _check_offsets(offsets, index.shape[0])
    count_launch(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts)


@launcher(check_op_inputs)
def evaluate_triton(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid):
    offsets, index = matches_torch(q_pids, g_pids, q_camids, g_camids, junk_pid)
    query = torch.repeat_interleave(torch.arange(distmat.shape[0], device=distmat.device), offsets.diff(),
                                    output_size=index.shape[0])
    match_dist = distmat[query, index]
    counts = torch.zeros(index.shape[0], dtype=torch.int64, device=distmat.device)
    count_launch(distmat, q_pids, g_pids, 0, offsets, index, match_dist, junk_pid, counts)
    return finalize_torch(offsets, index, match_dist, counts)


evaluate_matches_triton = launcher(check_matches_inputs)(matches_torch)
evaluate_finalize_triton = launcher(check_finalize_inputs)(finalize_torch)
