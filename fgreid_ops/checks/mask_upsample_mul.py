"""Checks of fgreid::mask_upsample_mul and its backward."""

from .. import _checks as checks
from ..reference.mask_upsample_mul import MODES

OP = "mask_upsample_mul"


def check_inputs(feat, mask, mode, pool=False):
    checks.check_tensor(OP, "feat", feat)
    checks.check_tensor(OP, "mask", mask)
    checks.check_choice(OP, "mode", mode, MODES)
    checks.check_dim(OP, "feat", feat, 4, "(N, C, H, W)")
    checks.check_dim(OP, "mask", mask, 4, "(N, 1 or C, h, w)")
    checks.check_float_dtype(OP, "feat", feat)
    checks.check_same_dtype(OP, "mask", mask, "feat", feat)
    checks.check_same_device(OP, "mask", mask, "feat", feat)
    checks.check_nonempty_batch(OP, "feat", feat)
    checks.check_nonempty(OP, "feat", feat)
    N, C = feat.shape[:2]
    if not (mask.shape[0] == N and (mask.shape[1] == 1 or mask.shape[1] == C)):
        raise ValueError(
            f"fgreid_ops.{OP}: expected mask of shape [N, 1, h, w] or [N, C, h, w] with N={N}, C={C}, "
            f"got {list(mask.shape)}"
        )
    checks.check_nonempty(OP, "mask", mask)



def check_backward_inputs(grad_out, feat, mask, mode, pool, need_grad_feat=True, need_grad_mask=True):
    """The forward's checks, then check_mask_upsample_mul_grad's: grad_out of the forward output's
    shape ([N, C] with pool), float, on feat's device (a meta grad_out among CPU tensors is an
    error, not a fake result)."""
    check_inputs(feat, mask, mode)
    checks.check_tensor(OP, "grad_out", grad_out)
    shape = tuple(feat.shape[:2]) if pool else tuple(feat.shape)
    if tuple(grad_out.shape) != shape:
        raise ValueError(f"fgreid_ops.{OP}: expected grad_out of shape {list(shape)}, got {list(grad_out.shape)}")
    checks.check_float_dtype(OP, "grad_out", grad_out)
    checks.check_same_device(OP, "grad_out", grad_out, "feat", feat)
