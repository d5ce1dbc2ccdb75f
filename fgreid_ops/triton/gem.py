"""GeM pooling in Triton (docs/ops.md#gem): the launchers of fgreid::gem_triton / gem_triton_backward.

Each program reduces BLOCK_R rows (n, c) over H*W in BLOCK_HW chunks. Addresses come from the
input's own strides, so channels_last and sliced views are read in place without a copy. Each lane
of the running sums is Kahan-compensated: a long row (H*W / BLOCK_HW terms per lane) would
otherwise saturate a float32 sum."""

import torch
import triton
import triton.language as tl

from .._checks import is_channels_last
from ..checks.gem import check_backward_inputs, check_inputs
from ._utils import acc_dtype, grid, kahan_add, launcher


@triton.jit
def _gem_fwd_kernel(
    x_ptr, p_ptr, out_ptr, R, C, HW, W, stride_n, stride_c, stride_h, stride_w, eps,
    BLOCK_R: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """out[r] = (sum_i max(x[r, i], eps) ** p / HW) ** (1 / p), with t ** p = exp(p log t)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    c = rows % C
    row_offset = (rows // C) * stride_n + c * stride_c
    p = tl.load(p_ptr + c, mask=row_mask, other=1.0).to(ACC)
    acc = tl.zeros([BLOCK_R, BLOCK_HW], dtype=ACC)
    comp = tl.zeros([BLOCK_R, BLOCK_HW], dtype=ACC)
    for start in range(0, HW, BLOCK_HW):
        i = start + tl.arange(0, BLOCK_HW).to(tl.int64)
        offsets = row_offset[:, None] + ((i // W) * stride_h + (i % W) * stride_w)[None, :]
        mask = row_mask[:, None] & (i < HW)[None, :]
        v = tl.load(x_ptr + offsets, mask=mask, other=1.0).to(ACC)
        v = tl.where(v < eps, eps, v)  # keeps NaN, unlike tl.maximum
        acc, comp = kahan_add(acc, comp, tl.where(mask, tl.exp(p[:, None] * tl.log(v)), 0.0))
    mean = tl.where(row_mask, tl.sum(acc, axis=1) / HW, 1.0)
    out = tl.exp(tl.log(mean) / p)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _gem_bwd_kernel(
    grad_ptr, x_ptr, p_ptr, grad_x_ptr, grad_p_ptr, R, C, HW, W, grad_stride_n, grad_stride_c,
    stride_n, stride_c, stride_h, stride_w, gstride_n, gstride_c, gstride_h, gstride_w, eps,
    NEED_GRAD_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """With t = max(x, eps) ** p, s = sum t, m = s / HW, y = m ** (1/p):
    grad_x = g y / s * t / x where x >= eps (else 0);
    grad_p_rows = g y (-log(m) / p**2 + sum(t log x) / (p s)).
    s is recomputed from x (first loop): the forward output is rounded to x's dtype."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    n = rows // C
    c = rows % C
    row_offset = n * stride_n + c * stride_c
    grad_row_offset = n * gstride_n + c * gstride_c
    p = tl.load(p_ptr + c, mask=row_mask, other=1.0).to(ACC)
    acc = tl.zeros([BLOCK_R, BLOCK_HW], dtype=ACC)
    comp = tl.zeros([BLOCK_R, BLOCK_HW], dtype=ACC)
    for start in range(0, HW, BLOCK_HW):
        i = start + tl.arange(0, BLOCK_HW).to(tl.int64)
        mask = row_mask[:, None] & (i < HW)[None, :]
        offsets = row_offset[:, None] + ((i // W) * stride_h + (i % W) * stride_w)[None, :]
        v = tl.load(x_ptr + offsets, mask=mask, other=1.0).to(ACC)
        v = tl.where(v < eps, eps, v)
        acc, comp = kahan_add(acc, comp, tl.where(mask, tl.exp(p[:, None] * tl.log(v)), 0.0))
    s = tl.where(row_mask, tl.sum(acc, axis=1), 1.0)
    log_m = tl.log(s / HW)
    # grad_out read through its strides (the expand of a .sum() has stride 0)
    g = tl.load(grad_ptr + n * grad_stride_n + c * grad_stride_c, mask=row_mask, other=0.0).to(ACC)
    g_y = g * tl.exp(log_m / p)
    coef = g_y / s
    acc = tl.zeros([BLOCK_R, BLOCK_HW], dtype=ACC)
    comp = tl.zeros([BLOCK_R, BLOCK_HW], dtype=ACC)
    for start in range(0, HW, BLOCK_HW):
        i = start + tl.arange(0, BLOCK_HW).to(tl.int64)
        hw_offset = (i // W) * stride_h + (i % W) * stride_w
        grad_hw_offset = (i // W) * gstride_h + (i % W) * gstride_w
        mask = row_mask[:, None] & (i < HW)[None, :]
        raw = tl.load(x_ptr + row_offset[:, None] + hw_offset[None, :], mask=mask, other=1.0).to(ACC)
        v = tl.where(raw < eps, eps, raw)
        log_v = tl.log(v)
        t = tl.exp(p[:, None] * log_v)
        grad_x = tl.where(raw >= eps, coef[:, None] * t / v, 0.0)
        tl.store(
            grad_x_ptr + grad_row_offset[:, None] + grad_hw_offset[None, :],
            grad_x.to(grad_x_ptr.dtype.element_ty),
            mask=mask,
        )
        if NEED_GRAD_P:
            acc, comp = kahan_add(acc, comp, tl.where(mask, t * log_v, 0.0))
    if NEED_GRAD_P:
        grad_p = g_y * (-log_m / (p * p) + tl.sum(acc, axis=1) / (p * s))
        tl.store(grad_p_ptr + rows, grad_p, mask=row_mask)


def _per_channel(p, C, x):
    return p.to(acc_dtype(x.dtype)[0]).expand(C).contiguous()


def _blocks(hw):
    block_hw = min(triton.next_power_of_2(hw), 256)
    return max(1, 2048 // block_hw), block_hw


@launcher(check_inputs)
def gem_triton(x, p, eps):
    N, C, H, W = x.shape
    out = x.new_empty((N, C))
    block_r, block_hw = _blocks(H * W)
    _gem_fwd_kernel[grid((N * C, block_r))](
        x, _per_channel(p, C, x), out, N * C, C, H * W, W, *x.stride(), eps,
        BLOCK_R=block_r, BLOCK_HW=block_hw, ACC=acc_dtype(x.dtype)[1],
    )
    return out


@launcher(check_backward_inputs)
def gem_triton_backward(grad_out, x, p, eps, need_grad_p):
    N, C, H, W = x.shape
    acc_torch, acc_tl = acc_dtype(x.dtype)
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)
    grad_p_rows = x.new_empty((N, C) if need_grad_p else (0,), dtype=acc_torch)
    block_r, block_hw = _blocks(H * W)
    _gem_bwd_kernel[grid((N * C, block_r))](
        grad_out, x, _per_channel(p, C, x), grad_x, grad_p_rows,
        N * C, C, H * W, W, *grad_out.stride(), *x.stride(), *grad_x.stride(), eps,
        NEED_GRAD_P=need_grad_p, BLOCK_R=block_r, BLOCK_HW=block_hw,
        ACC=acc_tl,
    )
    return grad_x, grad_p_rows

