"""Top-k attention exploration: CUHS IN stream at 384x128 input, last stride 1 ([N, C, 24, 8]).

k = 5 (FG-reID), 20 (DukeMTMC-reID), 45 (Market-1501). The eager baseline is the reference:
sum over channels, stable sort (the tie rule), scatter, multiply. The backward is to f2 (f1 only
picks the positions). The fwd+bwd cases send all-ones output gradients, and at the first default
shape also the gradients the models send (GAP's and sum's expands, a dense random one). The
pooled cases time topk_mask(..., pool=True) against the models' eager
``topk_mask_reference(f1, f2, k)[0].mean((2, 3))`` and torch.compile of it."""

import torch

import fgreid_ops
from fgreid_ops.reference import topk_mask_reference

from common import Case, bound, bound_backward, compiled, dense_grad, grad_bytes, grad_mode, nbytes, our_backends, spec

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
CUHS_SHAPE, POOL_KS = (64, 2048, 24, 8), (5, 20, 45)
LAYOUTS = ("gap", "sum", "dense")  # at the first default shape; quick: gap only


def _topk(backend):
    def run(f1, f2, k):
        return fgreid_ops.topk_mask(f1, f2, k, backend=backend)
    return run


def _pooled(backend):
    def run(f1, f2, k):
        return fgreid_ops.topk_mask(f1, f2, k, pool=True, backend=backend)
    return run


def _pooled_reference(f1, f2, k):
    return topk_mask_reference(f1, f2, k)[0].mean((2, 3))


def _setup(shape, k, dtype, backward, backends, grad="ones", pool=False):
    def setup(device):
        torch.manual_seed(0)
        f1 = torch.randn(shape, device=device, dtype=dtype)
        f2 = torch.randn(shape, device=device, dtype=dtype).requires_grad_(backward)
        if pool:  # as CUHS calls it: topk_mask(f_in, f_in, k, pool=True)
            f1 = f2
        reference, ours = (_pooled_reference, _pooled) if pool else (topk_mask_reference, _topk)
        fns = {"eager": reference, "compile": compiled(reference), **{name: ours(b) for name, b in backends.items()}}
        if not backward:
            return {name: bound(fn, f1, f2, k) for name, fn in fns.items()}
        g = dense_grad(shape, device, dtype) if grad == "dense" else grad
        return {name: bound_backward(fn, f1, f2, k, grad=g) for name, fn in fns.items()}
    return setup


def _label(shape, k, dtype):
    return f"f1, f2 {list(shape)} k={k}" + ("" if dtype == torch.float32 else f" {str(dtype).split('.')[-1]}")


def _layout_cases(device, size, shape, k, dtype):
    """fwd+bwd with the gradients the models send: GAP's and sum's expands, a dense random one."""
    out = []
    inputs = {"f1": spec(shape, dtype), "f2": spec(shape, dtype)}
    f, mask_bytes = nbytes(inputs["f1"]), shape[0] * shape[2] * shape[3] * dtype.itemsize
    for grad in ("gap",) if size == "quick" else LAYOUTS:
        case_inputs = {**inputs, "grad_out": spec(shape, dtype)} if grad == "dense" else inputs
        out.append(Case("topk_mask", _label(shape, k, dtype), grad_mode(grad), case_inputs,
                        _setup(shape, k, dtype, True, our_backends(device), grad),
                        4 * f + 2 * mask_bytes + grad_bytes(grad, shape, dtype.itemsize)))
    return out


def _pooled_cases(device, size):
    """topk_mask(..., pool=True) -> [N, C] vs the models' eager mean of the product."""
    if size == "quick":
        (shape, k, _), = QUICK_SHAPES
        configs = [(shape, k)]
    else:
        configs = [(CUHS_SHAPE, k) for k in (POOL_KS if size == "full" else POOL_KS[:1])]
    out = []
    for shape, k in configs:
        inputs = {"f_in": spec(shape)}
        f, mask_bytes, pooled = nbytes(inputs["f_in"]), shape[0] * shape[2] * shape[3] * 4, shape[0] * shape[1] * 4
        note = ("f1 is f2, as CUHS calls it; pool=True never writes the [N,C,H,W] product (the eager mean "
                "writes and re-reads it)")
        config = f"f1=f2=f_in {list(shape)} k={k} pool"
        # the least traffic: read f_in once, write the [N, C] mean and the mask
        out.append(Case("topk_mask", config, "fwd", inputs, _setup(shape, k, torch.float32, False, our_backends(device),
                                                                    pool=True), f + pooled + mask_bytes, note))
        # forward, then read the [N, C] gradient and the mask, write grad_f2
        out.append(Case("topk_mask", config, "fwd+bwd", inputs,
                        _setup(shape, k, torch.float32, True, our_backends(device), pool=True),
                        2 * f + 2 * pooled + 2 * mask_bytes, note))
    return out


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
        config = _label(shape, k, dtype)
        note = "CPU: N=256 and the other k values are run on CUDA only" if device == "cpu" and size != "quick" else ""
        mask_bytes = shape[0] * shape[2] * shape[3] * dtype.itemsize
        f = nbytes(inputs["f1"])
        # the least traffic: read f1 and f2, write out and the mask
        out.append(Case("topk_mask", config, "fwd", inputs, _setup(shape, k, dtype, False, our_backends(device)),
                        3 * f + mask_bytes, note))
        # forward, then the backward reads grad_out and the mask and writes grad_f2
        out.append(Case("topk_mask", config, "fwd+bwd", inputs, _setup(shape, k, dtype, True, our_backends(device)),
                        5 * f + 2 * mask_bytes, note))
    return out + _layout_cases(device, size, *shapes[0]) + _pooled_cases(device, size)
