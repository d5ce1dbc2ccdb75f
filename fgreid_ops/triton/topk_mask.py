"""Top-k attention exploration in Triton (docs/ops.md#topk_mask): the launchers of fgreid::topk_mask_triton /
topk_mask_triton_backward.

Three launches: partial channel sums of f1 over fixed chunks of channels (no atomics, so the
result is deterministic), the per-sample selection by rank, and the masked multiply (with pool:
the masked mean over H x W, the product never written; its backward writes g / (H W) * mask).
Inputs and gradients are read through their own strides (channels_last, sliced views and
expanded gradients need no copy)."""

import torch
import triton
import triton.language as tl

from .._checks import is_channels_last
from ..checks.topk_mask import check_backward_inputs, check_inputs
from ._utils import acc_dtype, grid, kahan_add, launcher

# Channels per partial sum: fixed, so the attention map does not depend on the launch.
CHANNEL_CHUNK = 128


@triton.jit
def _topk_mask_sum_kernel(
    f1_ptr, partial_ptr, C, HW, W, CHUNKS, stride_n, stride_c, stride_h, stride_w,
    CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """partial[n, j, hw] = sum_{c in chunk j} f1[n, c, hw] in float32 (float64 for float64)."""
    task = tl.program_id(0).to(tl.int64)
    n = task // CHUNKS
    chunk = task % CHUNKS
    hw = tl.program_id(1).to(tl.int64) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_mask = hw < HW
    hw_offset = (hw // W) * stride_h + (hw % W) * stride_w
    acc_ty = partial_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=acc_ty)
    c_begin = chunk * CHUNK
    c_end = tl.minimum(c_begin + CHUNK, C)
    for start in range(c_begin, c_end, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C).to(tl.int64)
        mask = (c < c_end)[:, None] & hw_mask[None, :]
        offsets = n * stride_n + c[:, None] * stride_c + hw_offset[None, :]
        acc += tl.load(f1_ptr + offsets, mask=mask, other=0.0).to(acc_ty)
    tl.store(partial_ptr + task * HW + hw, tl.sum(acc, axis=0), mask=hw_mask)


@triton.jit
def _attention(partial_ptr, n, hw, valid, HW, CHUNKS):
    """A[n, hw] = sum of the chunk partials, added in chunk order (Kahan-compensated: C may be long)."""
    a = tl.load(partial_ptr + n * CHUNKS * HW + hw, mask=valid, other=0.0)
    comp = tl.zeros_like(a)
    for j in range(1, CHUNKS):
        a, comp = kahan_add(a, comp, tl.load(partial_ptr + (n * CHUNKS + j) * HW + hw, mask=valid, other=0.0))
    return a


@triton.jit
def _topk_mask_select_kernel(
    partial_ptr, mask_ptr, HW, CHUNKS, k, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """mask[n, i] = 0 if rank(i) < k else 1, with rank(i) = #{j : A[j] before A[i]} and
    "before" = larger, or equal with a lower index; NaN is larger than any number and equal to
    NaN (the order of torch.sort). O(HW^2) comparisons per sample: cheap for re-id feature
    maps (H*W of a few hundred)."""
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_valid = i < HW
    a_i = _attention(partial_ptr, n, i, i_valid, HW, CHUNKS)
    nan_i = a_i != a_i
    rank = tl.zeros([BLOCK_I], dtype=tl.int64)
    for start in range(0, HW, BLOCK_J):
        j = start + tl.arange(0, BLOCK_J).to(tl.int64)
        j_valid = j < HW
        a_j = _attention(partial_ptr, n, j, j_valid, HW, CHUNKS)
        nan_j = a_j != a_j
        greater = (a_j[None, :] > a_i[:, None]) | (nan_j[None, :] & ~nan_i[:, None])
        equal = (a_j[None, :] == a_i[:, None]) | (nan_j[None, :] & nan_i[:, None])
        before = (greater | (equal & (j[None, :] < i[:, None]))) & j_valid[None, :]
        rank += tl.sum(before.to(tl.int64), axis=1)
    value = tl.where(rank < k, 0.0, 1.0)
    tl.store(mask_ptr + n * HW + i, value.to(mask_ptr.dtype.element_ty), mask=i_valid)


@triton.jit
def _topk_mask_mul_kernel(
    x_ptr, mask_ptr, out_ptr, total, C, HW, W, stride_n, stride_c, stride_h, stride_w,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """out = x * mask[n, 0, h, w], walking out's memory order (NCHW, or NHWC when CHANNELS_LAST)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = e < total
    if CHANNELS_LAST:
        c = e % C
        pos = e // C
        hw = pos % HW
        n = pos // HW
    else:
        hw = e % HW
        nc = e // HW
        c = nc % C
        n = nc // C
    offsets = n * stride_n + c * stride_c + (hw // W) * stride_h + (hw % W) * stride_w
    x = tl.load(x_ptr + offsets, mask=valid, other=0.0).to(ACC)
    m = tl.load(mask_ptr + n * HW + hw, mask=valid, other=0.0).to(ACC)
    tl.store(out_ptr + e, (x * m).to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _topk_mask_pool_kernel(
    x_ptr, mask_ptr, out_ptr, C, HW, W, stride_n, stride_c, stride_h, stride_w,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """out[n, c] = mean_hw x[n, c, hw] * mask[n, hw]; one program per (n, block of channels)."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_valid = c < C
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    comp = tl.zeros([BLOCK_C], dtype=ACC)  # Kahan: HW / BLOCK_HW block sums may be many
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW).to(tl.int64)
        hw_valid = hw < HW
        offsets = n * stride_n + c[:, None] * stride_c + ((hw // W) * stride_h + (hw % W) * stride_w)[None, :]
        x = tl.load(x_ptr + offsets, mask=c_valid[:, None] & hw_valid[None, :], other=0.0).to(ACC)
        m = tl.load(mask_ptr + n * HW + hw, mask=hw_valid, other=0.0).to(ACC)
        acc, comp = kahan_add(acc, comp, tl.sum(x * m[None, :], axis=1))
    tl.store(out_ptr + n * C + c, (acc / HW).to(out_ptr.dtype.element_ty), mask=c_valid)


@triton.jit
def _topk_mask_pool_backward_kernel(
    g_ptr, mask_ptr, out_ptr, total, C, HW, stride_gn, stride_gc, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """out[n, c, hw] = (g[n, c] / HW, rounded to out's dtype as autograd's mean backward) * mask[n, hw]."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = e < total
    hw = e % HW
    nc = e // HW
    c = nc % C
    n = nc // C
    g = tl.load(g_ptr + n * stride_gn + c * stride_gc, mask=valid, other=0.0).to(ACC)
    v = (g / HW).to(out_ptr.dtype.element_ty).to(ACC)
    m = tl.load(mask_ptr + n * HW + hw, mask=valid, other=0.0).to(ACC)
    tl.store(out_ptr + e, (v * m).to(out_ptr.dtype.element_ty), mask=valid)


def _masked_mean(x, mask):
    N, C, H, W = x.shape
    out = x.new_empty((N, C))
    block_c = min(triton.next_power_of_2(C), 32)
    block_hw = min(triton.next_power_of_2(H * W), 64)
    _topk_mask_pool_kernel[(N, *grid((C, block_c)))](
        x, mask, out, C, H * W, W, *x.stride(), BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=acc_dtype(x.dtype)[1],
    )
    return out


def _masked_multiply(x, mask):
    N, C, H, W = x.shape
    channels_last = is_channels_last(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    total = x.numel()
    if total == 0:
        return out
    block = 1024
    _topk_mask_mul_kernel[grid((total, block))](
        x, mask, out, total, C, H * W, W, *x.stride(),
        CHANNELS_LAST=channels_last, BLOCK=block, ACC=acc_dtype(x.dtype)[1],
    )
    return out


@launcher(check_inputs)
def topk_mask_triton(f1, f2, k, pool=False):
    N, C, H, W = f1.shape
    HW = H * W
    mask = f2.new_empty((N, 1, H, W))
    apply = _masked_mean if pool else _masked_multiply
    if k == 0 or k >= HW:
        mask.fill_(1.0 if k == 0 else 0.0)
        return apply(f2, mask), mask
    chunks = triton.cdiv(C, CHANNEL_CHUNK)
    partial = torch.empty((N, chunks, HW), dtype=acc_dtype(f1.dtype)[0], device=f1.device)
    block_c = min(triton.next_power_of_2(C), 32)
    block_hw = min(triton.next_power_of_2(HW), 64)
    _topk_mask_sum_kernel[(N * chunks, *grid((HW, block_hw)))](
        f1, partial, C, HW, W, chunks, *f1.stride(),
        CHUNK=CHANNEL_CHUNK, BLOCK_C=block_c, BLOCK_HW=block_hw,
    )
    block_i = min(triton.next_power_of_2(HW), 64)
    block_j = min(triton.next_power_of_2(HW), 64)
    _topk_mask_select_kernel[(N, *grid((HW, block_i)))](
        partial, mask, HW, chunks, k, BLOCK_I=block_i, BLOCK_J=block_j,
    )
    return apply(f2, mask), mask


@launcher(check_backward_inputs)
def topk_mask_triton_backward(grad_out, mask, pool=False):
    mask = mask.to(grad_out.dtype).contiguous()
    if not pool:
        return _masked_multiply(grad_out, mask)
    N, C = grad_out.shape
    out = grad_out.new_empty((N, C, mask.shape[2], mask.shape[3]))
    total = out.numel()
    if total == 0:
        return out
    block = 1024
    _topk_mask_pool_backward_kernel[grid((total, block))](
        grad_out, mask, out, total, C, mask.shape[2] * mask.shape[3], *grad_out.stride(),
        BLOCK=block, ACC=acc_dtype(grad_out.dtype)[1],
    )
    return out

