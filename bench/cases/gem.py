"""GeM pooling: CUHS head-shoulder stream [64, 2048, 24, 8] and FG video frames [160, 2048, 7, 7]."""

import torch

import fgreid_ops
from fgreid_ops.reference import gem_reference

from common import Case, bound, bound_backward, compiled, nbytes, our_backends, spec

SHAPES = [(64, 2048, 24, 8), (160, 2048, 7, 7)]
QUICK_SHAPES = [(4, 64, 24, 8)]


def _gem(backend):
    def run(x, p):
        return fgreid_ops.gem(x, p, backend=backend)
    return run


def _setup(shape, backward, backends):
    def setup(device):
        torch.manual_seed(0)
        x = torch.rand(shape, device=device).requires_grad_(backward)
        p = torch.tensor([3.0], device=device).requires_grad_(backward)
        fns = {"eager": gem_reference, "compile": compiled(gem_reference),
               **{name: _gem(b) for name, b in backends.items()}}
        make = bound_backward if backward else bound
        return {name: make(fn, x, p) for name, fn in fns.items()}
    return setup


def cases(device: str, size: str) -> list[Case]:
    out = []
    for shape in QUICK_SHAPES if size == "quick" else SHAPES:
        inputs = {"x": spec(shape), "p": spec((1,))}
        config = f"x={list(shape)} p=[1]"
        x = inputs["x"]
        out.append(Case("gem", config, "fwd", inputs, _setup(shape, False, our_backends(device)),
                        nbytes(x) + shape[0] * shape[1] * 4))
        # the least traffic: forward reads x, backward reads x and writes grad_x
        out.append(Case("gem", config, "fwd+bwd", inputs, _setup(shape, True, our_backends(device)), 3 * nbytes(x)))
    return out
