"""Gradients in the layouts autograd hands a backward op, for backward parity tests: what a dense
random gradient, GAP (`.mean((2, 3))`: stride 0 over H, W), `.sum()` (stride 0 everywhere), a
broadcast over one dim and a permuted (non-contiguous) gradient look like."""

import torch

GRAD_LAYOUTS = ["dense", "mean_expand", "sum_expand", "broadcast", "permuted"]


def grad_like(out: torch.Tensor, layout: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random values of out's shape, dtype and device, in `layout`; never contiguous except "dense"."""
    shape = tuple(out.shape)

    def randn(*size):
        return torch.randn(size, generator=generator, dtype=torch.float64).to(out.dtype).to(out.device)

    if layout == "dense":
        return randn(*shape)
    if layout == "sum_expand":
        return randn().expand(shape)
    if layout == "mean_expand":  # one value per leading (n, c) of a 4-D output; per n otherwise
        keep = 2 if len(shape) >= 4 else 1
        return randn(*shape[:keep], *([1] * (len(shape) - keep))).expand(shape)
    if layout == "broadcast":  # the same values for every index of dim 1 (channels), or dim 0 of 1-D
        dim = 1 if len(shape) > 1 else 0
        return randn(*shape[:dim], 1, *shape[dim + 1:]).expand(shape)
    if layout == "permuted":
        if len(shape) == 1:
            return randn(2 * shape[0])[::2]
        return randn(*shape[::-1]).permute(*range(len(shape) - 1, -1, -1))
    raise ValueError(layout)



# What a backward must not run on its incoming gradient.
COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous"}


def copies_of_shape(fn, op_name: str, shape) -> list:
    """The copy ops (COPY_OPS) that ran on a tensor of `shape` while fn ran; checks that the
    profiler saw `op_name`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    events = prof.events()
    assert any(e.name == op_name for e in events), {e.name for e in events}
    return [e.name for e in events if e.name in COPY_OPS and list(shape) in [list(s) for s in e.input_shapes]]
