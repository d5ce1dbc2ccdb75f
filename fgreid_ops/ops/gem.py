"""GeM pooling (docs/ops.md#gem): the public function, its fakes and its autograd."""

import torch

from .. import _backend, _registry
from .._checks import is_channels_last
from ..checks.gem import check_backward_inputs, check_inputs
from ..reference.gem import gem_reference


def gem(x: torch.Tensor, p, eps: float = 1e-6, *, backend: str | None = None) -> torch.Tensor:
    """Generalized-mean (GeM) pooling over H×W: ``y[n,c] = (mean_hw clamp(x, min=eps)**p)**(1/p)``.

    Args:
        x: [N, C, H, W], float32/float16/bfloat16/float64, any strides (channels_last and sliced
            views are read in place by the CPU and Triton kernels; CUDA C++ copies them).
        p: exponent, a tensor of shape [1] (one learnable p, fast-reid's default 3.0) or [C],
            or a Python number. Expected > 0 (not checked: that would read tensor values).
        eps: clamp floor, > 0.
        backend: None (auto), "reference", "cpu", "cuda" or "triton".

    Returns [N, C] in x's dtype. Half/bfloat16 accumulate in float32. Gradients flow to x (zero
    where x < eps, as torch.clamp) and to p. In float32, x**p must stay below 3.4e38
    (e.g. x < 6.8e12 for p = 3), as in the reference.
    """
    if isinstance(p, (int, float)):
        p = torch.tensor([float(p)], device=getattr(x, "device", None))
    check_inputs(x, p, eps)
    return _backend.dispatch(GEM, x.device.type, backend, x, p, eps)


def _fake_forward(x, p, eps):
    check_inputs(x, p, eps)
    return x.new_empty((x.shape[0], x.shape[1]))


def _fake_backward(grad_out, x, p, eps, need_grad_p):
    check_backward_inputs(grad_out, x, p, eps, need_grad_p)
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_p_rows = x.new_empty((x.shape[0], x.shape[1]) if need_grad_p else (0,), dtype=acc)
    return grad_x, grad_p_rows


def _setup_context(ctx, inputs, output):
    x, p, eps = inputs
    ctx.save_for_backward(x, p)
    ctx.eps = eps


def _make_backward(backward_op):
    def backward(ctx, grad_out):
        x, p = ctx.saved_tensors
        need_grad_p = ctx.needs_input_grad[1]
        grad_x, grad_p_rows = backward_op(grad_out, x, p, ctx.eps, need_grad_p)
        grad_p = None
        if need_grad_p:
            grad_p = grad_p_rows.sum(0) if p.shape[0] != 1 else grad_p_rows.sum().reshape(1)
            grad_p = grad_p.to(p.dtype)
        return grad_x, grad_p, None

    return backward


GEM = _registry.register(_registry.OpDef(
    name="gem", op="gem", check=check_inputs, fake=_fake_forward, reference=gem_reference,
    signature="(Tensor x, Tensor p, float eps) -> Tensor",
    cpp=("cpu", "cuda"), triton="gem",
    backward=_registry.Backward(
        fake=_fake_backward, setup_context=_setup_context, make=_make_backward,
        signature="(Tensor grad_out, Tensor x, Tensor p, float eps, bool need_grad_p)"
                  " -> (Tensor grad_x, Tensor grad_p_rows)",
        double=_registry.no_double_backward,
    ),
    onnx="gem_onnx",
))

__all__ = ["gem"]
