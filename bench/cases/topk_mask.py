"""Top-k attention exploration: CUHS IN stream at 384x128 input, last stride 1 ([N, C, 24, 8]).

k = 5 (FG-reID), 20 (DukeMTMC-reID), 45 (Market-1501). The eager baseline is the reference:
sum over channels, stable sort (the tie rule), scatter, multiply. The backward is to f2 (f1 only
picks the positions)."""

import torch

import fgreid_ops
from fgreid_ops.reference import topk_mask_reference

from common import Case, bound, bound_backward, compiled, nbytes, our_backends, spec

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
CPU_FULL = [
    ((64, 2048, 24, 8), 5, torch.float32),
    ((64, 2048, 24, 8), 45, torch.float32),
    ((64, 1024, 24, 8), 20, torch.float32),
    ((64, 2048, 24, 8), 20, torch.bfloat16),
]
CPU_DEFAULT = [CPU_FULL[1], CPU_FULL[3]]
CUDA_DEFAULT = [SHAPES[0], SHAPES[2], SHAPES[4], SHAPES[7]]
QUICK_SHAPES = [((4, 64, 24, 8), 5, torch.float32)]


def _topk(backend):
    def run(f1, f2, k):
        return fgreid_ops.topk_mask(f1, f2, k, backend=backend)
    return run


def _setup(shape, k, dtype, backward, backends):
    def setup(device):
        torch.manual_seed(0)
        f1 = torch.randn(shape, device=device, dtype=dtype)
        f2 = torch.randn(shape, device=device, dtype=dtype).requires_grad_(backward)
        fns = {"eager": topk_mask_reference, "compile": compiled(topk_mask_reference),
               **{name: _topk(b) for name, b in backends.items()}}
        make = bound_backward if backward else bound
        return {name: make(fn, f1, f2, k) for name, fn in fns.items()}
    return setup


def cases(device: str, size: str) -> list[Case]:
    out = []
    if size == "quick":
        shapes = QUICK_SHAPES
    elif device == "cuda":
        shapes = SHAPES if size == "full" else CUDA_DEFAULT
    else:
        shapes = CPU_FULL if size == "full" else CPU_DEFAULT
    for shape, k, dtype in shapes:
        inputs = {"f1": spec(shape, dtype), "f2": spec(shape, dtype)}
        config = f"f1=f2={list(shape)} k={k}" + ("" if dtype == torch.float32 else f" {str(dtype).split('.')[-1]}")
        note = "CPU: N=256 and the other k values are run on CUDA only" if device == "cpu" and size != "quick" else ""
        mask_bytes = shape[0] * shape[2] * shape[3] * dtype.itemsize
        f = nbytes(inputs["f1"])
        # the least traffic: read f1 and f2, write out and the mask
        out.append(Case("topk_mask", config, "fwd", inputs, _setup(shape, k, dtype, False, our_backends(device)),
                        3 * f + mask_bytes, note))
        # forward, then the backward reads grad_out and the mask and writes grad_f2
        out.append(Case("topk_mask", config, "fwd+bwd", inputs, _setup(shape, k, dtype, True, our_backends(device)),
                        5 * f + 2 * mask_bytes, note))
    return out
