"""OFF, the optical-flow-guided feature (docs/ops.md#off): the public function, its fakes and its autograd."""

import torch

from .. import _backend, _registry
from ..checks.off import check_backward_grad, check_pair, check_segment, check_segment_backward_grad, check_stride
from ..reference.off import off_reference


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
        check_stride(stride)
        check_segment(a, stride)
        return _backend.dispatch(OFF_SEGMENT, a.device.type, backend, a, stride)
    if stride is not None:
        raise ValueError("fgreid_ops.off: expected either b or stride, got both")
    check_pair(a, b)
    return _backend.dispatch(OFF, a.device.type, backend, a, b)


def _fake_off(a, b):
    check_pair(a, b)
    return a.new_empty((*a.shape[:-3], 3 * a.shape[-3], *a.shape[-2:]))


def _fake_off_backward(grad_out):
    check_backward_grad(grad_out)
    return grad_out.new_empty((*grad_out.shape[:-3], grad_out.shape[-3] // 3, *grad_out.shape[-2:]))


def _fake_off_segment(x, stride):
    check_segment(x, stride)
    N, T, C, H, W = x.shape
    return x.new_empty((N, T - stride, 3 * C, H, W))


def _fake_off_segment_backward(grad_out, stride):
    check_segment_backward_grad(grad_out, stride)
    N, pairs, C3, H, W = grad_out.shape
    return grad_out.new_empty((N, pairs + stride, C3 // 3, H, W))


def _setup_off(ctx, inputs, output):
    ctx.channels = inputs[0].shape[-3]


def _make_backward_off(backward_op):
    def backward(ctx, grad_out):
        grad_a = backward_op(grad_out) if ctx.needs_input_grad[0] else None
        grad_b = grad_out.narrow(-3, 2 * ctx.channels, ctx.channels) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b

    return backward


def _setup_segment(ctx, inputs, output):
    ctx.stride = inputs[1]


def _make_backward_segment(backward_op):
    def backward(ctx, grad_out):
        return backward_op(grad_out, ctx.stride), None

    return backward


# off and off_segment are linear, so each backward op is the adjoint of a linear map and its own
# backward is the forward map again: (a -> grad_a)ᵀ is h -> off(h, 0), (x -> grad_x)ᵀ is
# off_segment. This gives double backward (e.g. gradient penalties) for free.
def _make_backward_off_backward(forward_op):
    def backward(ctx, grad):
        return forward_op(grad, torch.zeros_like(grad))

    return backward


def _make_backward_segment_backward(forward_op):
    def backward(ctx, grad):
        return forward_op(grad, ctx.stride), None

    return backward


def _off_segment_reference(x, stride):
    return off_reference(x, stride=stride)


OFF = _registry.register(_registry.OpDef(
    name="off", op="off", check=check_pair, fake=_fake_off, reference=off_reference,
    signature="(Tensor a, Tensor b) -> Tensor",
    cpp=("cpu", "cuda"),
    backward=_registry.Backward(
        fake=_fake_off_backward, setup_context=_setup_off, make=_make_backward_off,
        signature="(Tensor grad_out) -> Tensor", double=_make_backward_off_backward,
    ),
    onnx="off_onnx",
))

OFF_SEGMENT = _registry.register(_registry.OpDef(
    name="off_segment", op="off", check=check_segment, fake=_fake_off_segment, reference=_off_segment_reference,
    signature="(Tensor x, int stride) -> Tensor",
    cpp=("cpu", "cuda"),
    backward=_registry.Backward(
        fake=_fake_off_segment_backward, setup_context=_setup_segment, make=_make_backward_segment,
        signature="(Tensor grad_out, int stride) -> Tensor", double=_make_backward_segment_backward,
        double_setup_context=_setup_segment,
    ),
    onnx="off_segment_onnx",
))

__all__ = ["off"]
