"""Registration shared by the ops whose C++ schema has a Triton twin (`<op>` and `<op>_triton`,
each with a `_backward` op): the same fakes and the same autograd formula for both, the backward
calling that variant's own registered backward op so torch.compile sees it."""

import torch

from .._extension import has_extension


def register_with_backward(names, fake_forward, fake_backward, make_backward, setup_context,
                           second_derivative=True):
    """For each name: register_fake for it and for `<name>_backward`, and register_autograd with
    `make_backward(torch.ops.fgreid.<name>_backward)`. second_derivative=False: the backward op
    has no derivative formula, so differentiating it raises (instead of silent zeros).
    No-op when the extension failed to load."""
    if not has_extension():
        return
    for name in names:
        torch.library.register_fake(f"fgreid::{name}")(fake_forward)
        torch.library.register_fake(f"fgreid::{name}_backward")(fake_backward)
        torch.library.register_autograd(
            f"fgreid::{name}",
            make_backward(getattr(torch.ops.fgreid, f"{name}_backward")),
            setup_context=setup_context,
        )
        if not second_derivative:
            register_no_second_derivative(f"{name}_backward")


def register_no_second_derivative(backward_name):
    """An autograd formula for fgreid::<backward_name> that raises when used: a double backward
    (create_graph=True, then a second grad) fails clearly rather than treating the first
    derivative as a constant."""
    def backward(ctx, *grads):
        raise RuntimeError(
            f"fgreid_ops.{backward_name}: the second derivative is not implemented "
            f"(fgreid::{backward_name} has no derivative formula); use backend='reference' to differentiate twice"
        )

    torch.library.register_autograd(f"fgreid::{backward_name}", backward)
