"""Batch-hard triplet mining in Triton (docs/ops.md#batch_hard_triplet): the launchers of fgreid::batch_hard_triplet_mine_triton
and its backward.

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

from .._checks import check_index_range
from ..checks.batch_hard_triplet import check_mine_backward_inputs, check_mine_inputs
from ._utils import acc_dtype, grid, kahan_add, launcher


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
    acc_torch, acc_tl = acc_dtype(emb.dtype)
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


@triton.jit
def _pair_distance_kernel(
    a_ptr, b_ptr, idx_ptr, out_ptr, B, D, stride_ab, stride_ad, stride_bb, stride_bd,
    MISSING: tl.constexpr, COSINE: tl.constexpr, SQUARED: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[i] = d(a_i, b_idx[i]) for the selected pairs, MISSING where idx[i] < 0 (−inf for
    d_ap, +inf for d_an: relu(d_ap − d_an + margin) is then 0 without a mask): 1 − a·b (cosine),
    s = |a − b|² (sqeuclidean) or sqrt(max(s, 1e-12)) (euclidean; |a − b|² has no
    cancellation and is exactly 0 for a row paired with itself)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    idx = tl.load(idx_ptr + rows, mask=row_ok, other=-1)
    ok = row_ok & (idx >= 0)
    # each lane's running sum over D / BLOCK_D terms is Kahan-compensated (a long D would
    # otherwise saturate it)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
    comp = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        mask = ok[:, None] & (ks < D)[None, :]
        a = tl.load(a_ptr + rows[:, None] * stride_ab + ks[None, :] * stride_ad, mask=mask, other=0.0).to(ACC)
        b = tl.load(b_ptr + idx[:, None] * stride_bb + ks[None, :] * stride_bd, mask=mask, other=0.0).to(ACC)
        if COSINE:
            acc, comp = kahan_add(acc, comp, a * b)
        else:
            acc, comp = kahan_add(acc, comp, (a - b) * (a - b))
    s = tl.sum(acc, axis=1)
    if COSINE:
        d = 1.0 - s
    elif SQUARED:
        d = s
    else:
        d = tl.sqrt(tl.where(s < 1e-12, 1e-12, s))
    if not COSINE:
        # |a - b|^2 = inf only from an inf (or overflowing) row, whose search distance
        # |a|^2 + |b|^2 - 2a.b is inf - inf = NaN: the selected pair keeps that NaN (not inf -> loss 0)
        d = tl.where(s == float("inf"), float("nan"), d)
    tl.store(out_ptr + rows, tl.where(ok, d, MISSING), mask=row_ok)


@triton.jit
def _pair_backward_kernel(
    a_ptr, b_ptr, idx_p_ptr, idx_n_ptr, gp_ptr, gn_ptr, dp_ptr, dn_ptr,
    grad_a_ptr, contrib_p_ptr, contrib_n_ptr, B, D,
    stride_ab, stride_ad, stride_bb, stride_bd, stride_gp, stride_gn,
    COSINE: tl.constexpr, SQUARED: tl.constexpr, NEED_REF: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """With c = g / d where |a − b|² >= 1e-12 else 0 (euclidean), 2g (sqeuclidean), −g (cosine),
    0 for a missing pair: grad_a = c_p (a − b_p) + c_n (a − b_n) and the contribution to the
    selected reference rows −c (a − b); for cosine grad_a = c_p b_p + c_n b_n and c a."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    ip = tl.load(idx_p_ptr + rows, mask=row_ok, other=-1)
    i_n = tl.load(idx_n_ptr + rows, mask=row_ok, other=-1)
    ok_p = row_ok & (ip >= 0)
    ok_n = row_ok & (i_n >= 0)
    # the gradients are read through their strides (the expand of a .sum() has stride 0)
    cp = tl.load(gp_ptr + rows * stride_gp, mask=ok_p, other=0.0).to(ACC)
    cn = tl.load(gn_ptr + rows * stride_gn, mask=ok_n, other=0.0).to(ACC)
    if COSINE:
        cp = -cp
        cn = -cn
    elif SQUARED:
        cp = 2.0 * cp
        cn = 2.0 * cn
    else:
        sp = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        sn = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        for k0 in range(0, D, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_ok = (ks < D)[None, :]
            a = tl.load(a_ptr + rows[:, None] * stride_ab + ks[None, :] * stride_ad, mask=row_ok[:, None] & k_ok, other=0.0).to(ACC)
            bp = tl.load(b_ptr + ip[:, None] * stride_bb + ks[None, :] * stride_bd, mask=ok_p[:, None] & k_ok, other=0.0).to(ACC)
            bn = tl.load(b_ptr + i_n[:, None] * stride_bb + ks[None, :] * stride_bd, mask=ok_n[:, None] & k_ok, other=0.0).to(ACC)
            sp += (a - bp) * (a - bp)
            sn += (a - bn) * (a - bn)
        dp = tl.load(dp_ptr + rows, mask=ok_p, other=1.0).to(ACC)
        dn = tl.load(dn_ptr + rows, mask=ok_n, other=1.0).to(ACC)
        cp = tl.where(tl.sum(sp, axis=1) >= 1e-12, cp / dp, 0.0)
        cn = tl.where(tl.sum(sn, axis=1) >= 1e-12, cn / dn, 0.0)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_ok = (ks < D)[None, :]
        a = tl.load(a_ptr + rows[:, None] * stride_ab + ks[None, :] * stride_ad, mask=row_ok[:, None] & k_ok, other=0.0).to(ACC)
        bp = tl.load(b_ptr + ip[:, None] * stride_bb + ks[None, :] * stride_bd, mask=ok_p[:, None] & k_ok, other=0.0).to(ACC)
        bn = tl.load(b_ptr + i_n[:, None] * stride_bb + ks[None, :] * stride_bd, mask=ok_n[:, None] & k_ok, other=0.0).to(ACC)
        out = rows[:, None] * D + ks[None, :]
        if COSINE:
            ga = cp[:, None] * bp + cn[:, None] * bn
            to_p = cp[:, None] * a
            to_n = cn[:, None] * a
        else:
            ga = cp[:, None] * (a - bp) + cn[:, None] * (a - bn)
            to_p = -cp[:, None] * (a - bp)
            to_n = -cn[:, None] * (a - bn)
        tl.store(grad_a_ptr + out, ga.to(grad_a_ptr.dtype.element_ty), mask=row_ok[:, None] & k_ok)
        if NEED_REF:  # rows of missing pairs are 0, so their index may be clamped to 0
            tl.store(contrib_p_ptr + out, tl.where(ok_p[:, None], to_p, 0.0), mask=row_ok[:, None] & k_ok)
            tl.store(contrib_n_ptr + out, tl.where(ok_n[:, None], to_n, 0.0), mask=row_ok[:, None] & k_ok)


def _row_blocks(D):
    block_d = min(triton.next_power_of_2(D), 128)
    return max(1, 2048 // block_d), block_d


def pair_distances(emb, ref_emb, idx, distance, missing):
    B, D = emb.shape
    acc_torch, acc_tl = acc_dtype(emb.dtype)
    out = emb.new_empty((B,), dtype=acc_torch)
    block_b, block_d = _row_blocks(D)
    _pair_distance_kernel[grid((B, block_b))](
        emb, ref_emb, idx, out, B, D, emb.stride(0), emb.stride(1), ref_emb.stride(0), ref_emb.stride(1),
        MISSING=missing, COSINE=distance == "cosine", SQUARED=distance == "sqeuclidean", ACC=acc_tl,
        BLOCK_B=block_b, BLOCK_D=block_d,
    )
    return out


@launcher(check_mine_inputs)
def batch_hard_triplet_mine_triton(emb, labels, ref_emb, ref_labels, distance):
    idx_p, idx_n = mine(emb, labels, ref_emb, ref_labels, distance)
    d_ap = pair_distances(emb, ref_emb, idx_p, distance, float("-inf"))
    d_an = pair_distances(emb, ref_emb, idx_n, distance, float("inf"))
    return d_ap, d_an, idx_p, idx_n


@launcher(check_mine_backward_inputs)
def batch_hard_triplet_mine_triton_backward(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an,
                                            distance, need_ref_grad):
    for arg, idx in (("idx_p", idx_p), ("idx_n", idx_n)):  # -1: no pair; the kernel gathers rows by the rest
        check_index_range("batch_hard_triplet_mine_backward", arg, idx, -1, ref_emb.shape[0])
    B, D = emb.shape
    acc_torch, acc_tl = acc_dtype(emb.dtype)
    grad_emb = emb.new_empty((B, D))
    contrib = [emb.new_empty((B, D) if need_ref_grad else (1,), dtype=acc_torch) for _ in range(2)]
    block_b, block_d = _row_blocks(D)
    _pair_backward_kernel[grid((B, block_b))](
        emb, ref_emb, idx_p.contiguous(), idx_n.contiguous(), grad_d_ap, grad_d_an,
        d_ap.contiguous(), d_an.contiguous(), grad_emb, contrib[0], contrib[1], B, D,
        emb.stride(0), emb.stride(1), ref_emb.stride(0), ref_emb.stride(1), grad_d_ap.stride(0), grad_d_an.stride(0),
        COSINE=distance == "cosine", SQUARED=distance == "sqeuclidean", NEED_REF=need_ref_grad, ACC=acc_tl,
        BLOCK_B=block_b, BLOCK_D=block_d,
    )
    if not need_ref_grad:
        return grad_emb, ref_emb.new_empty((0,))
    if ref_emb.shape[0] == 0:  # every index is -1 (checked above): no row to gather into
        return grad_emb, ref_emb.new_zeros(ref_emb.shape)
    # accumulate=True sums rows picked by several anchors (sort-based, deterministic on CUDA)
    grad_ref = ref_emb.new_zeros(ref_emb.shape, dtype=acc_torch)
    for idx, rows in zip((idx_p, idx_n), contrib):
        grad_ref.index_put_((idx.clamp(min=0),), rows, accumulate=True)
    return grad_emb, grad_ref.to(ref_emb.dtype)

