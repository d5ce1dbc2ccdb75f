"""OFF, the optical-flow-guided feature (docs/ops.md#off): the public function, its fakes and its autograd."""

import torch

from .. import _backend
from .. import _checks as checks
from .._extension import has_extension
from ..reference.off import off_reference

_OP = "off"


def _check_frames(arg, t):
    checks.check_tensor(_OP, arg, t)
    if t.dim() < 3:
        raise ValueError(f"fgreid_ops.off: expected {arg} to be at least 3-D (..., C, H, W), got {t.dim()}-D")
    checks.check_float_dtype(_OP, arg, t)
    checks.check_nonempty(_OP, arg, t)


def _check_pair(a, b):
    _check_frames("a", a)
    checks.check_tensor(_OP, "b", b)
    checks.check_float_dtype(_OP, "b", b)
    checks.check_same_device(_OP, "b", b, "a", a)
    if b.dtype != a.dtype:
        raise TypeError(f"fgreid_ops.off: expected b to have the same dtype as a ({a.dtype}), got {b.dtype}")
    if b.shape != a.shape:
        raise ValueError(f"fgreid_ops.off: expected b to have the same shape as a ({list(a.shape)}), got {list(b.shape)}")


def _check_segment(x, stride):
    checks.check_tensor(_OP, "x", x)
    checks.check_dim(_OP, "x", x, 5, "(N, T, C, H, W)")
    checks.check_float_dtype(_OP, "x", x)
    checks.check_nonempty(_OP, "x", x)
    if not (1 <= stride < x.shape[1]):
        raise ValueError(f"fgreid_ops.off: expected stride in [1, T-1] for T={x.shape[1]}, got {stride}")


def off(a: torch.Tensor, b: torch.Tensor | None = None, *, stride: int | None = None,
        backend: str | None = None) -> torch.Tensor:
    """Optical-flow-guided feature: ``cat([Sx(a), Sy(a), b - a], dim=-3)``.

    Sx, Sy are depthwise 3×3 Sobel filters applied exactly as ``F.conv2d`` (cross-correlation,
    zero padding 1): Kx = [[-1,0,1],[-2,0,2],[-1,0,1]], Ky = Kxᵀ. NaN/inf spread to the whole
    3×3 neighbourhood, zero taps included, as in conv2d.

    Two forms:
        ``off(a, b)``: a (frame t) and b (frame t+Δt) of the same shape [..., C, H, W] (any number
            of leading dims, including none), same dtype and device; returns [..., 3C, H, W].
        ``off(x, stride=d)``: x [N, T, C, H, W], all pairs (t, t+d) at once, 1 <= d <= T-1;
            returns [N, T-d, 3C, H, W], equal to ``off(x[:, :-d], x[:, d:])``. Its backward
            writes grad_x in one pass instead of two gradients that autograd scatters and adds.

    Inputs are read in place with their strides (segment views ``x[:, :-d]``, ``x[:, d:]``, sliced or
    channels_last tensors): the kernels fold the leading dims into two strided batch dims and copy
    only when that is impossible (several independently sliced leading dims). Planes whose W is not
    the innermost dim (channels_last) are gathered element by element: correct, but slower than
    NCHW. The output is always contiguous. float32/float16/bfloat16/float64; half and bfloat16 are computed in float32 and
    rounded once. Gradients: grad_a = Sxᵀ(g_x) + Syᵀ(g_y) − g_t = −Sx(g_x) − Sy(g_y) − g_t
    (the flipped Sobel kernels are the negated ones), grad_b = g_t (a view of the incoming gradient).

    backend: None (auto), "reference", "cpu" or "cuda". There is no Triton kernel for this op.
    """
    if b is None:
        if stride is None:
            raise ValueError("fgreid_ops.off: expected b or stride=d, got neither")
        if isinstance(stride, bool) or not isinstance(stride, (int, torch.SymInt)):
            raise TypeError(f"fgreid_ops.off: expected stride to be an int, got {type(stride).__name__}")
        _check_segment(a, stride)
    else:
        if stride is not None:
            raise ValueError("fgreid_ops.off: expected either b or stride, got both")
        _check_pair(a, b)
    backend = _backend.resolve(_OP, a.device.type, backend)
    if backend == "triton":
        raise RuntimeError(
            "fgreid_ops.off: no Triton kernel for this op; build the extension with CUDA "
            "or use backend='reference'"
        )
    if backend == "reference":
        return off_reference(a, b, stride=stride)
    if b is None:
        return torch.ops.fgreid.off_segment(a, stride)
    return torch.ops.fgreid.off(a, b)


def _fake_off(a, b):
    _check_pair(a, b)
    return a.new_empty((*a.shape[:-3], 3 * a.shape[-3], *a.shape[-2:]))


def _fake_off_backward(grad_out):
    _check_frames("grad_out", grad_out)
    if grad_out.shape[-3] % 3 != 0:
        raise ValueError(f"fgreid_ops.off: expected grad_out to have 3C channels, got {grad_out.shape[-3]}")
    return grad_out.new_empty((*grad_out.shape[:-3], grad_out.shape[-3] // 3, *grad_out.shape[-2:]))


def _fake_off_segment(x, stride):
    _check_segment(x, stride)
    N, T, C, H, W = x.shape
    return x.new_empty((N, T - stride, 3 * C, H, W))


def _fake_off_segment_backward(grad_out, stride):
    N, pairs, C3, H, W = grad_out.shape
    return grad_out.new_empty((N, pairs + stride, C3 // 3, H, W))


def _setup_off(ctx, inputs, output):
    ctx.channels = inputs[0].shape[-3]


def _backward_off(ctx, grad_out):
    grad_a = torch.ops.fgreid.off_backward(grad_out) if ctx.needs_input_grad[0] else None
    grad_b = grad_out.narrow(-3, 2 * ctx.channels, ctx.channels) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b


def _setup_segment(ctx, inputs, output):
    ctx.stride = inputs[1]


def _backward_segment(ctx, grad_out):
    return torch.ops.fgreid.off_segment_backward(grad_out, ctx.stride), None


# off and off_segment are linear, so each backward op is the adjoint of a linear map and its own
# backward is the forward map again: (a -> grad_a)ᵀ is h -> off(h, 0), (x -> grad_x)ᵀ is
# off_segment. This gives double backward (e.g. gradient penalties) for free.
def _backward_off_backward(ctx, grad):
    return torch.ops.fgreid.off(grad, torch.zeros_like(grad))


def _backward_segment_backward(ctx, grad):
    return torch.ops.fgreid.off_segment(grad, ctx.stride), None


if has_extension():
    torch.library.register_fake("fgreid::off")(_fake_off)
    torch.library.register_fake("fgreid::off_backward")(_fake_off_backward)
    torch.library.register_fake("fgreid::off_segment")(_fake_off_segment)
    torch.library.register_fake("fgreid::off_segment_backward")(_fake_off_segment_backward)
    torch.library.register_autograd("fgreid::off", _backward_off, setup_context=_setup_off)
    torch.library.register_autograd("fgreid::off_segment", _backward_segment, setup_context=_setup_segment)
    torch.library.register_autograd("fgreid::off_backward", _backward_off_backward)
    torch.library.register_autograd(
        "fgreid::off_segment_backward", _backward_segment_backward, setup_context=_setup_segment
    )
