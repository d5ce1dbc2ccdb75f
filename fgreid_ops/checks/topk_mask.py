"""Checks of fgreid::topk_mask and its backward (csrc/include/fgreid_ops/topk_mask_checks.h)."""

import operator

import torch

from .. import _checks as checks

OP = "topk_mask"


def check_k(k):
    """k as an int >= 0 (a SymInt under torch.compile passes through)."""
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


def check_inputs(f1, f2, k):
    """The checks of topk_mask_checks.h, in the same order; returns k as an int."""
    checks.check_tensor(OP, "f1", f1)
    checks.check_tensor(OP, "f2", f2)
    checks.check_dim(OP, "f1", f1, 4, "(N, C, H, W)")
    checks.check_float_dtype(OP, "f1", f1)
    checks.check_same_device(OP, "f2", f2, "f1", f1)
    if f2.dtype != f1.dtype:
        raise TypeError(f"fgreid_ops.topk_mask: expected f2 to have the same dtype as f1 ({f1.dtype}), got {f2.dtype}")
    if f2.shape != f1.shape:
        raise ValueError(f"fgreid_ops.topk_mask: expected f2 of the same shape as f1 {list(f1.shape)}, got {list(f2.shape)}")
    checks.check_nonempty_batch(OP, "f1", f1)
    checks.check_nonempty(OP, "f1", f1)
    return check_k(k)


def check_backward_inputs(grad_out, mask):
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
