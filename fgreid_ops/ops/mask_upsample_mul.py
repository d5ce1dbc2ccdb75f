"""Fused localization (docs/ops.md#mask_upsample_mul): the public function, its fakes and its autograd."""

import torch

from .. import _backend, _registry
from ..checks.mask_upsample_mul import check_backward_inputs, check_inputs
from ..reference.mask_upsample_mul import mask_upsample_mul_reference


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
    check_inputs(feat, mask, mode)
    return _backend.dispatch(MASK_UPSAMPLE_MUL, feat.device.type, backend, feat, mask, mode, pool)


def _fake_forward(feat, mask, mode, pool):
    check_inputs(feat, mask, mode)
    return feat.new_empty(tuple(feat.shape[:2]) if pool else tuple(feat.shape))


def _fake_backward(grad_out, feat, mask, mode, pool, need_grad_feat, need_grad_mask):
    check_backward_inputs(grad_out, feat, mask, mode, pool)
    grad_feat = feat.new_empty(tuple(feat.shape) if need_grad_feat else (0,))
    grad_mask = mask.new_empty(tuple(mask.shape) if need_grad_mask else (0,))
    return grad_feat, grad_mask


def _setup_context(ctx, inputs, output):
    feat, mask, mode, pool = inputs
    ctx.save_for_backward(feat, mask)
    ctx.mode, ctx.pool = mode, pool


def _make_backward(backward_op):
    def backward(ctx, grad_out):
        feat, mask = ctx.saved_tensors
        need_feat, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_feat, grad_mask = backward_op(grad_out, feat, mask, ctx.mode, ctx.pool, need_feat, need_mask)
        return (grad_feat if need_feat else None), (grad_mask if need_mask else None), None, None

    return backward


MASK_UPSAMPLE_MUL = _registry.register(_registry.OpDef(
    name="mask_upsample_mul", op="mask_upsample_mul", check=check_inputs, fake=_fake_forward,
    reference=mask_upsample_mul_reference,
    signature="(Tensor feat, Tensor mask, str mode, bool pool) -> Tensor",
    cpp=("cpu", "cuda"),
    backward=_registry.Backward(
        fake=_fake_backward, setup_context=_setup_context, make=_make_backward,
        signature="(Tensor grad_out, Tensor feat, Tensor mask, str mode, bool pool, bool need_grad_feat,"
                  " bool need_grad_mask) -> (Tensor grad_feat, Tensor grad_mask)",
        double=_registry.no_double_backward,
    ),
    onnx="mask_upsample_mul_onnx",
))

__all__ = ["mask_upsample_mul"]
