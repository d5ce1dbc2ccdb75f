"""GeM pooling: CUHS head-shoulder stream [64, 2048, 24, 8] and FG video frames [160, 2048, 7, 7]."""

import torch

import fgreid_ops
from fgreid_ops.reference import gem_reference

from common import Case, compiled, forward_backward, nbytes

SHAPES = [(64, 2048, 24, 8), (160, 2048, 7, 7)]
QUICK_SHAPES = [(4, 64, 24, 8)]


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        x = torch.rand(shape, device=device)
        p = torch.tensor([3.0], device=device)
        backends = {"fgreid": None}
        if device == "cuda" and fgreid_ops._backend.triton_available("cuda"):
            backends = {"fgreid-cuda": "cuda", "fgreid-triton": "triton"}
        ours = {name: (lambda b: lambda x, p: fgreid_ops.gem(x, p, backend=b))(b) for name, b in backends.items()}
        compiled_ref = compiled(gem_reference)
        config = f"x={list(shape)} p=[1]"
        fwd = {"eager": lambda: gem_reference(x, p), "compile": lambda: compiled_ref(x, p)}
        fwd.update({name: (lambda f: lambda: f(x, p))(f) for name, f in ours.items()})
        out.append(Case("gem", config, "fwd", nbytes(x) + x.shape[0] * x.shape[1] * x.element_size(), fwd))

        xg, pg = x.clone().requires_grad_(), p.clone().requires_grad_()
        bwd = {"eager": forward_backward(gem_reference, (xg, pg)), "compile": forward_backward(compiled_ref, (xg, pg))}
        bwd.update({name: forward_backward(f, (xg, pg)) for name, f in ours.items()})
        # the least traffic: forward reads x, backward reads x and writes grad_x
        out.append(Case("gem", config, "fwd+bwd", 3 * nbytes(x), bwd))
    return out
