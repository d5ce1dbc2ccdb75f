"""Top-k attention exploration (docs/ops.md#topk_mask, CUHS eq. 5-6): the public function, its fakes and its
autograd."""

import torch

from .. import _backend, _registry
from .._checks import is_channels_last
from ..checks.topk_mask import check_backward_inputs, check_inputs
from ..reference.topk_mask import topk_mask_reference


def topk_mask(f1: torch.Tensor, f2: torch.Tensor, k: int, pool: bool = False, *, backend: str | None = None):
    """Masks the k most-attended positions of f1 out of f2 (CUHS eq. 5-6).

    ``A[n] = sum_c f1[n, c]`` ([N, H, W], float32 accumulation; float64 for float64 input);
    ``mask[n, 0]`` is 0 at the k positions of largest ``A[n]`` and 1 elsewhere;
    ``out = f2 * mask`` with the mask broadcast over channels.

    Args:
        f1: [N, C, H, W] feature map whose attention picks the positions; float32, float16,
            bfloat16 or float64, any strides.
        f2: the feature map to mask, same shape, dtype and device as f1.
        k: number of positions to zero per sample, an int >= 0. k = 0 returns a copy of f2
            (mask all ones); k >= H*W zeroes everything.
        pool: return ``(f2 * mask).mean((2, 3))``, [N, C], instead of the product, which is then
            never written (its backward writes ``grad_f2 = grad / (H*W) * mask`` directly).
        backend: None (auto), "reference", "cpu", "cuda" or "triton".

    Returns ``(out, mask)``: out [N, C, H, W] in f2's dtype (channels_last when f2 is, else
    contiguous), or with pool the contiguous [N, C] mean, and mask [N, 1, H, W] in f2's dtype
    (0.0 / 1.0).

    Ties: among equal values of A the lower flat index h*W + w is zeroed first, so the result is
    deterministic and equal on every backend; NaN in A counts as larger than any number (as in
    torch.sort). Since the mask multiplies, an inf or NaN of f2 at a zeroed position gives NaN,
    exactly as ``f2 * mask``. Which positions are picked depends on A's float32 rounding: when
    two sums differ by less than their rounding error, backends may pick different ones.

    Gradient: ``grad_f2 = grad_out * mask``; with pool ``grad_out[n, c] / (H*W) * mask`` (the
    quotient rounded to the dtype first, as autograd's mean backward does), contiguous. f1 receives none (the selection is piecewise
    constant in f1): ``f1.grad`` stays None when f1 is used only here. The mask output is not
    differentiable.
    """
    k = check_inputs(f1, f2, k, pool)
    return _backend.dispatch(TOPK_MASK, f1.device.type, backend, f1, f2, k, pool)


def _layout_of(t):
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def _fake_forward(f1, f2, k, pool=False):
    check_inputs(f1, f2, k, pool)
    N, C, H, W = f2.shape
    if pool:
        out = f2.new_empty((N, C))
    else:
        out = torch.empty(f2.shape, dtype=f2.dtype, device=f2.device, memory_format=_layout_of(f2))
    return out, f2.new_empty((N, 1, H, W))


def _fake_backward(grad_out, mask, pool=False):
    check_backward_inputs(grad_out, mask, pool)
    if pool:
        return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], mask.shape[2], mask.shape[3]))
    return torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=_layout_of(grad_out))


def _setup_context(ctx, inputs, output):
    _, mask = output
    ctx.pool = inputs[3] if len(inputs) > 3 else False
    ctx.save_for_backward(mask)
    ctx.mark_non_differentiable(mask)


def _make_backward(backward_op):
    def backward(ctx, grad_out, _grad_mask):
        (mask,) = ctx.saved_tensors
        grad_f2 = backward_op(grad_out, mask, ctx.pool) if ctx.needs_input_grad[1] else None
        return (None, grad_f2) + (None,) * (len(ctx.needs_input_grad) - 2)

    return backward


# The backward is linear in grad_out (grad_out * mask; with pool grad_out / (H*W) * mask), so its
# derivative is the adjoint map: double backward (gradient penalties) is exact, never zeros.
def _setup_backward_backward(ctx, inputs, output):
    ctx.pool = inputs[2] if len(inputs) > 2 else False
    ctx.save_for_backward(inputs[1])


def _make_backward_backward(forward_op):
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        masked = grad * mask
        return (masked.mean((2, 3)) if ctx.pool else masked), None, None

    return backward


TOPK_MASK = _registry.register(_registry.OpDef(
    name="topk_mask", op="topk_mask", check=check_inputs, fake=_fake_forward, reference=topk_mask_reference,
    signature="(Tensor f1, Tensor f2, int k, bool pool=False) -> (Tensor out, Tensor mask)",
    cpp=("cpu", "cuda"), triton="topk_mask",
    backward=_registry.Backward(
        fake=_fake_backward, setup_context=_setup_context, make=_make_backward,
        signature="(Tensor grad_out, Tensor mask, bool pool=False) -> Tensor",
        double=_make_backward_backward, double_setup_context=_setup_backward_backward,
    ),
    onnx="topk_mask_onnx",
))

__all__ = ["topk_mask"]
