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
    if mask.dtype != feat.dtype:
        raise TypeError(
            f"fgreid_ops.{OP}: expected mask to have the same dtype as feat ({feat.dtype}), got {mask.dtype}"
        )
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
