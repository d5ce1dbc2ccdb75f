"""Top-k attention exploration (SPEC §4, CUHS eq. 5-6): the public function, its fakes and its
autograd."""

import operator

import torch

from .. import _backend
from .. import _checks as checks
from .._extension import has_extension
from ._register import register_with_backward
from ..reference.topk_mask import topk_mask_reference

_OP = "topk_mask"


def _check_k(k):
    if isinstance(k, torch.SymInt):
        value = k
    else:
        try:
            if isinstance(k, bool):
                raise TypeError
            value = operator.index(k)
        except TypeError:
            raise TypeError(f"fgreid_ops.topk_mask: expected k to be an int, got {type(k).__name__}") from None
    if value < 0:
        raise ValueError(f"fgreid_ops.topk_mask: expected k >= 0, got {value}")
    return value


def _check_inputs(f1, f2, k):
    """The checks of csrc/include/fgreid_ops/topk_mask_checks.h, in the same order; returns k as an int."""
    checks.check_tensor(_OP, "f1", f1)
    checks.check_tensor(_OP, "f2", f2)
    checks.check_dim(_OP, "f1", f1, 4, "(N, C, H, W)")
    checks.check_float_dtype(_OP, "f1", f1)
    checks.check_same_device(_OP, "f2", f2, "f1", f1)
    if f2.dtype != f1.dtype:
        raise TypeError(f"fgreid_ops.topk_mask: expected f2 to have the same dtype as f1 ({f1.dtype}), got {f2.dtype}")
    if f2.shape != f1.shape:
        raise ValueError(f"fgreid_ops.topk_mask: expected f2 of the same shape as f1 {list(f1.shape)}, got {list(f2.shape)}")
    checks.check_nonempty_batch(_OP, "f1", f1)
    checks.check_nonempty(_OP, "f1", f1)
    return _check_k(k)


def topk_mask(f1: torch.Tensor, f2: torch.Tensor, k: int, *, backend: str | None = None):
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
        backend: None (auto), "reference", "cpu", "cuda" or "triton".

    Returns ``(out, mask)``: out [N, C, H, W] in f2's dtype (channels_last when f2 is, else
    contiguous) and mask [N, 1, H, W] in f2's dtype (0.0 / 1.0).

    Ties: among equal values of A the lower flat index h*W + w is zeroed first, so the result is
    deterministic and equal on every backend; NaN in A counts as larger than any number (as in
    torch.sort). Since the mask multiplies, an inf or NaN of f2 at a zeroed position gives NaN,
    exactly as ``f2 * mask``. Which positions are picked depends on A's float32 rounding: when
    two sums differ by less than their rounding error, backends may pick different ones.

    Gradient: ``grad_f2 = grad_out * mask``. f1 receives none (the selection is piecewise
    constant in f1): ``f1.grad`` stays None when f1 is used only here. The mask output is not
    differentiable.
    """
    k = _check_inputs(f1, f2, k)
    backend = _backend.resolve(_OP, f1.device.type, backend)
    if backend == "reference":
        return topk_mask_reference(f1, f2, k)
    if backend == "triton":
        return torch.ops.fgreid.topk_mask_triton(f1, f2, k)
    return torch.ops.fgreid.topk_mask(f1, f2, k)


def _layout_of(t):
    return torch.channels_last if checks.is_channels_last(t) else torch.contiguous_format


def _fake_forward(f1, f2, k):
    _check_inputs(f1, f2, k)
    N, _, H, W = f2.shape
    out = torch.empty(f2.shape, dtype=f2.dtype, device=f2.device, memory_format=_layout_of(f2))
    return out, f2.new_empty((N, 1, H, W))


def _check_backward_inputs(grad_out, mask):
    checks.check_dim("topk_mask_backward", "grad_out", grad_out, 4, "(N, C, H, W)")
    checks.check_float_dtype("topk_mask_backward", "grad_out", grad_out)
    checks.check_float_dtype("topk_mask_backward", "mask", mask)
    checks.check_same_device("topk_mask_backward", "mask", mask, "grad_out", grad_out)
    N, _, H, W = grad_out.shape
    if mask.shape != (N, 1, H, W):
        raise ValueError(
            f"fgreid_ops.topk_mask_backward: expected mask of shape [N, 1, H, W]=[{N}, 1, {H}, {W}], "
            f"got {list(mask.shape)}"
        )


def _fake_backward(grad_out, mask):
    _check_backward_inputs(grad_out, mask)
    return torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=_layout_of(grad_out))


def _setup_context(ctx, inputs, output):
    _, mask = output
    ctx.save_for_backward(mask)
    ctx.mark_non_differentiable(mask)


def _make_backward(backward_op):
    def backward(ctx, grad_out, _grad_mask):
        (mask,) = ctx.saved_tensors
        grad_f2 = backward_op(grad_out, mask) if ctx.needs_input_grad[1] else None
        return None, grad_f2, None

    return backward


register_with_backward(("topk_mask", "topk_mask_triton"), _fake_forward, _fake_backward, _make_backward, _setup_context)


# The backward is linear in grad_out (grad_out * mask), so its own derivative is the same map:
# double backward (gradient penalties) is exact, never zeros.
def _setup_backward(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _make_double_backward(backward_op):
    def double_backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return backward_op(grad, mask), None

    return double_backward


if has_extension():
    for _name in ("topk_mask_backward", "topk_mask_triton_backward"):
        torch.library.register_autograd(f"fgreid::{_name}", _make_double_backward(getattr(torch.ops.fgreid, _name)),
                                        setup_context=_setup_backward)
