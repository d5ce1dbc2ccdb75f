"""OFF in the FG video model's motion stream: the 5 ResNet-50 levels of 224×224 frames, segments of
T = 10 frames, pairs Δt = 5 apart, called as off(x, stride=5) on x [N, 10, C, H, W] -> [N, 5, 3C, H, W].
CUDA: N = 16 (N·T = 160 frames). CPU: N = 1 (10 frames), levels 1, 3 and 5 by default (all five
with --full). The eager baseline is the natural code: slice, two depthwise conv2d, sub, cat.

The fwd+bwd cases send all-ones output gradients, and at the first level also the gradients the
models send: GAP's expand (the gradient of a mean over H, W), sum's, a dense random one (--quick:
dense only)."""

import torch

import fgreid_ops
from fgreid_ops.reference import off_reference

from common import Case, bound, bound_backward, compiled, dense_grad, grad_bytes, grad_mode, nbytes, spec

LEVELS = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]
T, STRIDE = 10, 5
QUICK = [(1, 4, 8, 12, 2)]  # (N, T, C, H=W, stride)
LAYOUTS = ("gap", "sum", "dense")  # at the first config; quick: dense only


def _ours(x, stride):
    return fgreid_ops.off(x, stride=stride)


def _eager(x, stride):
    return off_reference(x, stride=stride)


def _out_shape(n, t, c, h, stride):
    return (n, t - stride, 3 * c, h, h)


def _setup(shape, stride, backward, grad="ones"):
    def setup(device):
        torch.manual_seed(0)
        x = torch.randn(shape, device=device).requires_grad_(backward)
        fns = {"eager": _eager, "compile": compiled(_eager), "fgreid": _ours}
        if not backward:
            return {name: bound(fn, x, stride) for name, fn in fns.items()}
        g = dense_grad(_out_shape(*shape[:3], shape[3], stride), device) if grad == "dense" else grad
        return {name: bound_backward(fn, x, stride, grad=g) for name, fn in fns.items()}
    return setup


def cases(device: str, size: str) -> list[Case]:
    if size == "quick":
        configs = QUICK
    else:
        n = 16 if device == "cuda" else 1
        levels = LEVELS if device == "cuda" or size == "full" else LEVELS[::2]
        configs = [(n, T, C, H, STRIDE) for C, H in levels]
    note = "" if size == "quick" or device == "cuda" else "CPU: N=1 segment (10 frames) instead of 16 (160 frames)"
    out = []
    for n, t, c, h, d in configs:
        shape = (n, t, c, h, h)
        inputs = {"x": spec(shape)}
        out_bytes = n * (t - d) * 3 * c * h * h * 4
        config = f"x={list(shape)} stride={d}"
        # the least traffic: read x once, write the output
        out.append(Case("off", config, "fwd", inputs, _setup(shape, d, False), nbytes(inputs["x"]) + out_bytes, note))
        # forward, then read grad_out and write grad_x once
        out.append(Case("off", config, "fwd+bwd", inputs, _setup(shape, d, True),
                        2 * (nbytes(inputs["x"]) + out_bytes), note))
    n, t, c, h, d = configs[0]
    shape, out_shape = (n, t, c, h, h), _out_shape(n, t, c, h, d)
    inputs, out_bytes = {"x": spec(shape)}, nbytes(spec(out_shape))
    for grad in ("dense",) if size == "quick" else LAYOUTS:
        case_inputs = {**inputs, "grad_out": spec(out_shape)} if grad == "dense" else inputs
        # read x, write the output; then read the gradient, write grad_x
        moved = 2 * nbytes(inputs["x"]) + out_bytes + grad_bytes(grad, out_shape, 4)
        out.append(Case("off", f"x={list(shape)} stride={d}", grad_mode(grad), case_inputs, _setup(shape, d, True, grad),
                        moved, note))
    return out
