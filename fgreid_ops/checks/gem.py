"""Checks of fgreid::gem and its backward."""

from .. import _checks as checks

OP = "gem"


def check_inputs(x, p, eps):
    checks.check_tensor(OP, "x", x)
    checks.check_tensor(OP, "p", p)
    checks.check_dim(OP, "x", x, 4, "(N, C, H, W)")
    checks.check_float_dtype(OP, "x", x)
    checks.check_float_dtype(OP, "p", p)
    checks.check_same_device(OP, "p", p, "x", x)
    checks.check_nonempty_batch(OP, "x", x)
    checks.check_nonempty(OP, "x", x)
    if not (p.dim() == 1 and (p.shape[0] == 1 or p.shape[0] == x.shape[1])):
        raise ValueError(f"fgreid_ops.gem: expected p of shape [1] or [C]=[{x.shape[1]}], got {list(p.shape)}")
    checks.check_positive(OP, "eps", eps)


def check_backward_inputs(grad_out, x, p, eps, need_grad_p):
    check_inputs(x, p, eps)
    checks.check_tensor(OP, "grad_out", grad_out)
    checks.check_float_dtype(OP, "grad_out", grad_out)
    checks.check_same_device(OP, "grad_out", grad_out, "x", x)
    if tuple(grad_out.shape) != (x.shape[0], x.shape[1]):
        raise ValueError(
            f"fgreid_ops.gem: expected grad_out of shape [N, C]=[{x.shape[0]}, {x.shape[1]}], got {list(grad_out.shape)}"
        )
