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


def check_pool(pool):
    if not isinstance(pool, bool):
        raise TypeError(f"fgreid_ops.topk_mask: expected pool to be a bool, got {type(pool).__name__}")


def check_inputs(f1, f2, k, pool=False):
    """The checks of topk_mask_checks.h, in the same order; returns k as an int."""
    checks.check_tensor(OP, "f1", f1)
    checks.check_tensor(OP, "f2", f2)
    checks.check_dim(OP, "f1", f1, 4, "(N, C, H, W)")
    checks.check_float_dtype(OP, "f1", f1)
    checks.check_same_device(OP, "f2", f2, "f1", f1)
    checks.check_same_dtype(OP, "f2", f2, "f1", f1)
    if f2.shape != f1.shape:
        raise ValueError(f"fgreid_ops.topk_mask: expected f2 of the same shape as f1 {list(f1.shape)}, got {list(f2.shape)}")
    checks.check_nonempty_batch(OP, "f1", f1)
    checks.check_nonempty(OP, "f1", f1)
    k = check_k(k)
    check_pool(pool)
    return k


def check_backward_inputs(grad_out, mask, pool=False):
    """grad_out is [N, C, H, W], or [N, C] (the gradient of the pooled output) with pool."""
    checks.check_tensor("topk_mask_backward", "grad_out", grad_out)
    checks.check_tensor("topk_mask_backward", "mask", mask)
    if pool:
        checks.check_dim("topk_mask_backward", "grad_out", grad_out, 2, "(N, C)")
    else:
        checks.check_dim("topk_mask_backward", "grad_out", grad_out, 4, "(N, C, H, W)")
    checks.check_float_dtype("topk_mask_backward", "grad_out", grad_out)
    checks.check_float_dtype("topk_mask_backward", "mask", mask)
    checks.check_same_device("topk_mask_backward", "mask", mask, "grad_out", grad_out)
    if pool:
        if mask.dim() != 4 or mask.shape[0] != grad_out.shape[0] or mask.shape[1] != 1:
            raise ValueError(
                f"fgreid_ops.topk_mask_backward: expected mask of shape [N, 1, H, W] with N={grad_out.shape[0]}, "
                f"got {list(mask.shape)}"
            )
        return
    N, _, H, W = grad_out.shape
    if mask.shape != (N, 1, H, W):
        raise ValueError(
            f"fgreid_ops.topk_mask_backward: expected mask of shape [N, 1, H, W]=[{N}, 1, {H}, {W}], "
            f"got {list(mask.shape)}"
        )
