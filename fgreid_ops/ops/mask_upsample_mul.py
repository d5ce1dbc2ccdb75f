"""Fused localization (SPEC §3): the public function, its fakes and its autograd."""

import torch

from .. import _backend
from .. import _checks as checks
from .._extension import has_extension
from ._register import register_no_second_derivative
from ..reference.mask_upsample_mul import MODES, mask_upsample_mul_reference

_OP = "mask_upsample_mul"


def _check_inputs(feat, mask, mode):
    checks.check_tensor(_OP, "feat", feat)
    checks.check_tensor(_OP, "mask", mask)
    checks.check_choice(_OP, "mode", mode, MODES)
    checks.check_dim(_OP, "feat", feat, 4, "(N, C, H, W)")
    checks.check_dim(_OP, "mask", mask, 4, "(N, 1 or C, h, w)")
    checks.check_float_dtype(_OP, "feat", feat)
    if mask.dtype != feat.dtype:
        raise TypeError(
            f"fgreid_ops.{_OP}: expected mask to have the same dtype as feat ({feat.dtype}), got {mask.dtype}"
        )
    checks.check_same_device(_OP, "mask", mask, "feat", feat)
    checks.check_nonempty_batch(_OP, "feat", feat)
    checks.check_nonempty(_OP, "feat", feat)
    N, C = feat.shape[:2]
    if not (mask.shape[0] == N and (mask.shape[1] == 1 or mask.shape[1] == C)):
        raise ValueError(
            f"fgreid_ops.{_OP}: expected mask of shape [N, 1, h, w] or [N, C, h, w] with N={N}, C={C}, "
            f"got {list(mask.shape)}"
        )
    checks.check_nonempty(_OP, "mask", mask)


def mask_upsample_mul(feat: torch.Tensor, mask: torch.Tensor, mode: str = "bilinear", pool: bool = False, *,
                      backend: str | None = None) -> torch.Tensor:
    """Masked features, Yin et al. eq. 3: ``out = feat * up(mask)``, or with ``pool=True`` its mean
    over H×W, where ``up(mask) = F.interpolate(mask, size=(H, W), mode=mode, align_corners=False)``.

    The kernels compute ATen's source indices and weights per output pixel (the legacy "nearest"
    rule ``floor(dst * in / out)``; bilinear with half-pixel centers) and never write the upsampled
    mask; ``pool=True`` also never writes the [N, C, H, W] product. The CPU kernel also follows
    ATen's CPU choice of bilinear formula (x-then-y blends, or the four-tap sum for H + W <= 128)
    and its FMA order, so in float32 on AVX2 CPUs the mask equals F.interpolate's bit for bit
    (tested); the CUDA kernel blends x then y as ATen's CUDA kernel does (within an ulp or two).

    Args:
        feat: [N, C, H, W], float32/float16/bfloat16/float64, any strides (the CPU and CUDA
            kernels read contiguous NCHW: other layouts are copied first).
        mask: [N, 1, h, w] (one mask for all channels) or [N, C, h, w], feat's dtype and device;
            h×w may be smaller or larger than H×W.
        mode: "bilinear" or "nearest".
        pool: return the spatial mean [N, C] instead of [N, C, H, W].
        backend: None (auto), "reference", "cpu" or "cuda".

    Returns a contiguous tensor in feat's dtype. Half/bfloat16 interpolate and accumulate in
    float32 with a single rounding of each output (F.interpolate in half would round the mask
    too). Gradients flow to feat and mask; the mask gradient is the adjoint of the resize, summed
    over channels (for a shared mask), then x, then y in a fixed order: deterministic, no atomics.
    """
    _check_inputs(feat, mask, mode)
    backend = _backend.resolve(_OP, feat.device.type, backend)
    if backend == "reference":
        return mask_upsample_mul_reference(feat, mask, mode, pool)
    if backend == "triton":
        raise ValueError(f"fgreid_ops.{_OP}: has no Triton kernel; use backend 'cuda' on GPU tensors")
    return torch.ops.fgreid.mask_upsample_mul(feat, mask, mode, pool)


def _fake_forward(feat, mask, mode, pool):
    _check_inputs(feat, mask, mode)
    return feat.new_empty(tuple(feat.shape[:2]) if pool else tuple(feat.shape))


def check_backward_inputs(grad_out, feat, mask, mode, pool):
    """The checks of fgreid::mask_upsample_mul_backward: the forward's, and grad_out of the
    forward output's shape on feat's device."""
    _check_inputs(feat, mask, mode)
    checks.check_grad(f"{_OP}_backward", "grad_out", grad_out, "feat", feat, feat.shape[:2] if pool else feat.shape)


def _fake_backward(grad_out, feat, mask, mode, pool, need_grad_feat, need_grad_mask):
    check_backward_inputs(grad_out, feat, mask, mode, pool)
    grad_feat = feat.new_empty(tuple(feat.shape) if need_grad_feat else (0,))
    grad_mask = mask.new_empty(tuple(mask.shape) if need_grad_mask else (0,))
    return grad_feat, grad_mask


def _setup_context(ctx, inputs, output):
    feat, mask, mode, pool = inputs
    ctx.save_for_backward(feat, mask)
    ctx.mode, ctx.pool = mode, pool


def _backward(ctx, grad_out):
    feat, mask = ctx.saved_tensors
    need_feat, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_feat, grad_mask = torch.ops.fgreid.mask_upsample_mul_backward(
        grad_out, feat, mask, ctx.mode, ctx.pool, need_feat, need_mask
    )
    return (grad_feat if need_feat else None), (grad_mask if need_mask else None), None, None


if has_extension():
    torch.library.register_fake(f"fgreid::{_OP}")(_fake_forward)
    torch.library.register_fake(f"fgreid::{_OP}_backward")(_fake_backward)
    torch.library.register_autograd(f"fgreid::{_OP}", _backward, setup_context=_setup_context)
    register_no_second_derivative(f"{_OP}_backward")
