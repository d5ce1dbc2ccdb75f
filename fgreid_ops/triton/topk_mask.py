"""Top-k attention exploration in Triton (SPEC §4): the launchers of fgreid::topk_mask_triton /
topk_mask_triton_backward.

Three launches: partial channel sums of f1 over fixed chunks of channels (no atomics, so the
result is deterministic), the per-sample selection by rank, and the masked multiply. Inputs are
read through their own strides (channels_last and sliced views need no copy)."""

import torch
import triton
import triton.language as tl

from .._checks import is_channels_last
from ..checks.topk_mask import check_backward_inputs, check_inputs
from ._utils import acc_dtype, grid, launcher

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
    """A[n, hw] = sum of the chunk partials, added in chunk order."""
    a = tl.load(partial_ptr + n * CHUNKS * HW + hw, mask=valid, other=0.0)
    for j in range(1, CHUNKS):
        a += tl.load(partial_ptr + (n * CHUNKS + j) * HW + hw, mask=valid, other=0.0)
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
def topk_mask_triton(f1, f2, k):
    N, C, H, W = f1.shape
    HW = H * W
    mask = f2.new_empty((N, 1, H, W))
    if k == 0 or k >= HW:
        mask.fill_(1.0 if k == 0 else 0.0)
        return _masked_multiply(f2, mask), mask
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
    return _masked_multiply(f2, mask), mask


@launcher(check_backward_inputs)
def topk_mask_triton_backward(grad_out, mask):
    return _masked_multiply(grad_out, mask.to(grad_out.dtype).contiguous())

