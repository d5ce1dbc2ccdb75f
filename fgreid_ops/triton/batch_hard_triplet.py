"""Batch-hard triplet mining in Triton (SPEC §5), registered as fgreid::batch_hard_triplet_mine_triton.

One pass in the flash-attention style: a program holds BLOCK_M anchors and walks its share of
the references in BLOCK_N tiles; each tile of dot products comes from tl.dot over D in BLOCK_K
chunks (fp32 accumulation), is turned into selection keys and folded into a running max over
positives and min over negatives with their indices. The B×M matrix is never written.

When there are few anchor blocks (small B, large M) the references are split over a second
grid axis; each split writes its best (key, index) per anchor and a tiny torch merge keeps the
best, the earlier split (lower index) on ties. Embeddings and labels are read through their
strides, so sliced views are not copied."""

import torch
import triton
import triton.language as tl

from . import DEVICES


@triton.jit
def _batch_hard_triplet_mine_kernel(
    a_ptr, la_ptr, na_ptr, b_ptr, lb_ptr, nb_ptr,
    key_p_ptr, idx_p_ptr, key_n_ptr, idx_n_ptr,
    B, M, D, refs_per_split, floor,
    stride_ab, stride_ad, stride_la, stride_bb, stride_bd, stride_lb,
    COSINE: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """key(i, j) = max(|a_i|² + |b_j|² − 2 a_i·b_j, floor) (floor 1e-12 for euclidean, 0 for
    sqeuclidean; monotone in the distance) or 1 − a_i·b_j (cosine, rows pre-normalized).
    Per anchor i: the largest key over j with lb[j] == la[i] and the smallest over the others,
    each with the lowest such j; a NaN key counts as +inf for the max and −inf for the min."""
    pid_m = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    la = tl.load(la_ptr + rows * stride_la, mask=row_ok, other=0)
    if not COSINE:
        na = tl.load(na_ptr + rows, mask=row_ok, other=0.0)
    best_p = tl.full([BLOCK_M], float("-inf"), ACC)
    best_n = tl.full([BLOCK_M], float("inf"), ACC)
    idx_p = tl.full([BLOCK_M], -1, tl.int64)
    idx_n = tl.full([BLOCK_M], -1, tl.int64)
    start = split * refs_per_split
    stop = tl.minimum(start + refs_per_split, M)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < stop
        dots = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            a = tl.load(a_ptr + rows[:, None] * stride_ab + ks[None, :] * stride_ad,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptr + ks[:, None] * stride_bd + cols[None, :] * stride_bb,
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(ACC)
                b = b.to(ACC)
            dots = tl.dot(a, b, dots, input_precision=PRECISION, out_dtype=ACC)
        lb = tl.load(lb_ptr + cols * stride_lb, mask=col_ok, other=0)
        if COSINE:
            key = 1.0 - dots
        else:
            nb = tl.load(nb_ptr + cols, mask=col_ok, other=0.0)
            sq = na[:, None] + nb[None, :] - 2.0 * dots
            key = tl.where(sq < floor, floor, sq)  # keeps NaN
        nan = key != key
        same = la[:, None] == lb[None, :]
        pos = same & col_ok[None, :]
        neg = (~same) & col_ok[None, :]

        key_p = tl.where(pos, tl.where(nan, float("inf"), key), float("-inf"))
        tile_p = tl.max(key_p, axis=1)
        first_p = tl.min(tl.where(pos & (key_p == tile_p[:, None]), cols[None, :], M), axis=1)
        # strict > keeps the earlier tile (lower index) on ties
        take_p = (first_p < M) & ((idx_p < 0) | (tile_p > best_p))
        best_p = tl.where(take_p, tile_p, best_p)
        idx_p = tl.where(take_p, first_p, idx_p)

        key_n = tl.where(neg, tl.where(nan, float("-inf"), key), float("inf"))
        tile_n = tl.min(key_n, axis=1)
        first_n = tl.min(tl.where(neg & (key_n == tile_n[:, None]), cols[None, :], M), axis=1)
        take_n = (first_n < M) & ((idx_n < 0) | (tile_n < best_n))
        best_n = tl.where(take_n, tile_n, best_n)
        idx_n = tl.where(take_n, first_n, idx_n)

    out = split * B + rows
    tl.store(key_p_ptr + out, best_p, mask=row_ok)
    tl.store(idx_p_ptr + out, idx_p, mask=row_ok)
    tl.store(key_n_ptr + out, best_n, mask=row_ok)
    tl.store(idx_n_ptr + out, idx_n, mask=row_ok)


def _merge_splits(keys, idx, largest):
    """The best (key, index) over the split axis 0; the first split wins ties (its indices are
    lower); -1 where no split found a candidate."""
    empty = idx < 0
    keys = keys.masked_fill(empty, float("-inf") if largest else float("inf"))
    best = keys.amax(0) if largest else keys.amin(0)
    hit = ~empty & (keys == best)
    first = hit.to(torch.int32).argmax(0)  # argmax returns the first maximal index
    merged = idx.gather(0, first[None]).squeeze(0)
    return torch.where(hit.any(0), merged, -1)


def _config(x, D):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)."""
    block_k = max(16, min(triton.next_power_of_2(D), 64 if x.element_size() <= 2 else 32))
    if x.device.type != "cuda":  # the interpreter: few, large blocks
        return 64, 64, max(16, min(triton.next_power_of_2(D), 128)), 4, 1
    if x.element_size() <= 2:
        return 128, 64, block_k, 8, 3
    return 64, 64, block_k, 4, 2


def mine(emb, labels, ref_emb, ref_labels, distance, splits=None):
    B, D = emb.shape
    M = ref_emb.shape[0]
    acc_torch = torch.float64 if emb.dtype == torch.float64 else torch.float32
    acc_tl = tl.float64 if emb.dtype == torch.float64 else tl.float32
    cosine = distance == "cosine"
    if cosine:
        na = nb = emb.new_empty((1,), dtype=acc_torch)
    else:
        na = emb.to(acc_torch).pow(2).sum(1)
        same = ref_emb.data_ptr() == emb.data_ptr() and ref_emb.shape == emb.shape and ref_emb.stride() == emb.stride()
        nb = na if same else ref_emb.to(acc_torch).pow(2).sum(1)
    block_m, block_n, block_k, num_warps, num_stages = _config(emb, D)
    row_blocks = triton.cdiv(B, block_m)
    if splits is None:
        splits = 1
        if emb.device.type == "cuda":
            sms = torch.cuda.get_device_properties(emb.device).multi_processor_count
            splits = max(1, min(2 * sms // row_blocks, triton.cdiv(M, 4 * block_n)))
    refs_per_split = triton.cdiv(triton.cdiv(M, splits), block_n) * block_n
    splits = triton.cdiv(M, refs_per_split)
    key_p = emb.new_empty((splits, B), dtype=acc_torch)
    key_n = emb.new_empty((splits, B), dtype=acc_torch)
    idx_p = emb.new_empty((splits, B), dtype=torch.int64)
    idx_n = emb.new_empty((splits, B), dtype=torch.int64)
    # fp32 keeps IEEE products: TF32 would reorder near-ties among the candidates.
    precision = "tf32" if emb.element_size() <= 2 else "ieee"
    _batch_hard_triplet_mine_kernel[(row_blocks, splits)](
        emb, labels, na, ref_emb, ref_labels, nb, key_p, idx_p, key_n, idx_n,
        B, M, D, refs_per_split, 1e-12 if distance == "euclidean" else 0.0,
        emb.stride(0), emb.stride(1), labels.stride(0),
        ref_emb.stride(0), ref_emb.stride(1), ref_labels.stride(0),
        COSINE=cosine, PRECISION=precision, ACC=acc_tl,
        # the interpreter's tl.dot reads bfloat16 operands as garbage (triton 3.6)
        UPCAST=emb.device.type != "cuda" and emb.dtype == torch.bfloat16,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
    )
    if splits == 1:
        return idx_p[0], idx_n[0]
    return _merge_splits(key_p, idx_p, largest=True), _merge_splits(key_n, idx_n, largest=False)


def batch_hard_triplet_mine_triton(emb, labels, ref_emb, ref_labels, distance):
    from ..ops.batch_hard_triplet import check_mine_inputs

    check_mine_inputs(emb, labels, ref_emb, ref_labels, distance)
    return mine(emb, labels, ref_emb, ref_labels, distance)


torch.library.register_kernel("fgreid::batch_hard_triplet_mine_triton", DEVICES, batch_hard_triplet_mine_triton)
