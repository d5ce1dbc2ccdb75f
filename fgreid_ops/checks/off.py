"""Checks of fgreid::off, fgreid::off_segment and their backwards."""

import torch

from .. import _checks as checks

OP = "off"

# The largest tensor any device addresses (checks.h kMaxTensorBytes): 2^48 bytes.
MAX_TENSOR_BYTES = 2**48


def check_frames(arg, t):
    checks.check_tensor(OP, arg, t)
    if t.dim() < 3:
        raise ValueError(f"fgreid_ops.off: expected {arg} to be at least 3-D (..., C, H, W), got {t.dim()}-D")
    checks.check_float_dtype(OP, arg, t)
    checks.check_nonempty(OP, arg, t)


def check_pair(a, b):
    check_frames("a", a)
    checks.check_tensor(OP, "b", b)
    checks.check_float_dtype(OP, "b", b)
    checks.check_same_device(OP, "b", b, "a", a)
    checks.check_same_dtype(OP, "b", b, "a", a)
    if b.shape != a.shape:
        raise ValueError(f"fgreid_ops.off: expected b to have the same shape as a ({list(a.shape)}), got {list(b.shape)}")


def check_stride(stride):
    if isinstance(stride, bool) or not isinstance(stride, (int, torch.SymInt)):
        raise TypeError(f"fgreid_ops.off: expected stride to be an int, got {type(stride).__name__}")


def check_segment(x, stride):
    checks.check_tensor(OP, "x", x)
    checks.check_dim(OP, "x", x, 5, "(N, T, C, H, W)")
    checks.check_float_dtype(OP, "x", x)
    checks.check_nonempty(OP, "x", x)
    if not (1 <= stride < x.shape[1]):
        raise ValueError(f"fgreid_ops.off: expected stride in [1, T-1] for T={x.shape[1]}, got {stride}")


def check_backward_grad(grad_out):
    check_frames("grad_out", grad_out)
    if grad_out.shape[-3] % 3 != 0:
        raise ValueError(f"fgreid_ops.off: expected grad_out to have 3C channels, got {grad_out.shape[-3]}")


def check_segment_backward_grad(grad_out, stride):
    """grad_out [N, T - stride, 3C, H, W] of off_segment; grad_x gets T = grad_out's frames + stride."""
    checks.check_tensor(OP, "grad_out", grad_out)
    checks.check_dim(OP, "grad_out", grad_out, 5, "(N, T-stride, 3C, H, W)")
    checks.check_float_dtype(OP, "grad_out", grad_out)
    checks.check_nonempty(OP, "grad_out", grad_out)
    N, pairs, C3, H, W = grad_out.shape
    if C3 % 3 != 0:
        raise ValueError(f"fgreid_ops.off: expected grad_out to have 3C channels, got {C3}")
    check_stride(stride)
    if stride < 1:
        raise ValueError(f"fgreid_ops.off: expected stride >= 1, got {stride}")
    max_stride = MAX_TENSOR_BYTES // grad_out.element_size() // (N * (C3 // 3) * H * W) - pairs
    if stride > max_stride:
        raise ValueError(f"fgreid_ops.off: expected stride <= {max_stride} (grad_x of T = {pairs} + stride frames "
                         f"under 2^48 bytes), got {stride}")
