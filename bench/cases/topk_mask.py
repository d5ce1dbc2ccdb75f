"""Top-k attention exploration: CUHS IN stream at 384x128 input, last stride 1 ([N, C, 24, 8]).

k = 5 (FG-reID), 20 (DukeMTMC-reID), 45 (Market-1501). The eager baseline is the reference:
sum over channels, stable sort (the tie rule), scatter, multiply."""

import torch

import fgreid_ops
from fgreid_ops.reference import topk_mask_reference

from common import Case, compiled, forward_backward, nbytes

# (shape, k, dtype)
SHAPES = [
    ((64, 2048, 24, 8), 5, torch.float32),
    ((64, 2048, 24, 8), 20, torch.float32),
    ((64, 2048, 24, 8), 45, torch.float32),
    ((64, 1024, 24, 8), 5, torch.float32),
    ((64, 1024, 24, 8), 20, torch.float32),
    ((64, 1024, 24, 8), 45, torch.float32),
    ((256, 2048, 24, 8), 20, torch.float32),
    ((64, 2048, 24, 8), 20, torch.bfloat16),  # mixed-precision training
]
# On CPU every k costs the same (the selection is ~0.1% of the time), so one k per channel
# count; the N=256 shape is 4x the N=64 work per call and is left to CUDA.
CPU_SHAPES = [
    ((64, 2048, 24, 8), 5, torch.float32),
    ((64, 2048, 24, 8), 45, torch.float32),
    ((64, 1024, 24, 8), 20, torch.float32),
    ((64, 2048, 24, 8), 20, torch.bfloat16),
]
QUICK_SHAPES = [((4, 64, 24, 8), 5, torch.float32)]


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    shapes = QUICK_SHAPES if quick else (CPU_SHAPES if device == "cpu" else SHAPES)
    for shape, k, dtype in shapes:
        f1 = torch.randn(shape, device=device, dtype=dtype)
        f2 = torch.randn(shape, device=device, dtype=dtype)
        backends = {"fgreid": None}
        if device == "cuda" and fgreid_ops._backend.triton_available("cuda"):
            backends = {"fgreid-cuda": "cuda", "fgreid-triton": "triton"}
        ours = {name: (lambda b: lambda a, b2, kk: fgreid_ops.topk_mask(a, b2, kk, backend=b))(b)
                for name, b in backends.items()}
        compiled_ref = compiled(topk_mask_reference)
        config = f"f1=f2={list(shape)} k={k}" + ("" if dtype == torch.float32 else f" {str(dtype).split('.')[-1]}")
        note = "CPU: N=256 and the other k values are run on CUDA only" if device == "cpu" and not quick else ""
        fwd = {"eager": lambda: topk_mask_reference(f1, f2, k), "compile": lambda: compiled_ref(f1, f2, k)}
        fwd.update({name: (lambda f: lambda: f(f1, f2, k))(f) for name, f in ours.items()})
        mask_bytes = shape[0] * shape[2] * shape[3] * f2.element_size()
        # the least traffic: read f1 and f2, write out and the mask
        out.append(Case("topk_mask", config, "fwd", 3 * nbytes(f1) + mask_bytes, fwd, note))

        f2g = f2.clone().requires_grad_()
        inputs = (f1, f2g, k)
        bwd = {"eager": forward_backward(topk_mask_reference, inputs),
               "compile": forward_backward(compiled_ref, inputs)}
        bwd.update({name: forward_backward(f, inputs) for name, f in ours.items()})
        # forward, then the backward reads grad_out and the mask and writes grad_f2
        out.append(Case("topk_mask", config, "fwd+bwd", 5 * nbytes(f1) + 2 * mask_bytes, bwd, note))
    return out
