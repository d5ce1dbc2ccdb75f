"""GeM pooling (SPEC §1): the public function, its fakes and its autograd."""

import torch

from .. import _backend
from .. import _checks as checks
from ._register import register_with_backward
from ..reference.gem import gem_reference

_OP = "gem"


def _check_inputs(x, p, eps):
    checks.check_tensor(_OP, "x", x)
    checks.check_tensor(_OP, "p", p)
    checks.check_dim(_OP, "x", x, 4, "(N, C, H, W)")
    checks.check_float_dtype(_OP, "x", x)
    checks.check_float_dtype(_OP, "p", p)
    checks.check_same_device(_OP, "p", p, "x", x)
    checks.check_nonempty_batch(_OP, "x", x)
    checks.check_nonempty(_OP, "x", x)
    if not (p.dim() == 1 and (p.shape[0] == 1 or p.shape[0] == x.shape[1])):
        raise ValueError(f"fgreid_ops.gem: expected p of shape [1] or [C]=[{x.shape[1]}], got {list(p.shape)}")
    checks.check_positive(_OP, "eps", eps)


def check_backward_inputs(grad_out, x, p, eps):
    """The checks of fgreid::gem_backward: the forward's, and grad_out [N, C] on x's device."""
    _check_inputs(x, p, eps)
    checks.check_grad("gem_backward", "grad_out", grad_out, "x", x, x.shape[:2])


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
    _check_inputs(x, p, eps)
    backend = _backend.resolve(_OP, x.device.type, backend)
    if backend == "reference":
        return gem_reference(x, p, eps)
    if backend == "triton":
        return torch.ops.fgreid.gem_triton(x, p, eps)
    return torch.ops.fgreid.gem(x, p, eps)


def _fake_forward(x, p, eps):
    _check_inputs(x, p, eps)
    return x.new_empty((x.shape[0], x.shape[1]))


def _fake_backward(grad_out, x, p, eps, need_grad_p):
    check_backward_inputs(grad_out, x, p, eps)
    layout = torch.channels_last if checks.is_channels_last(x) else torch.contiguous_format
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


register_with_backward(("gem", "gem_triton"), _fake_forward, _fake_backward, _make_backward, _setup_context,
                       second_derivative=False)
