"""OFF in the FG video model's motion stream: the 5 ResNet-50 levels of 224×224 frames, segments of
T = 10 frames, pairs Δt = 5 apart, called as off(x, stride=5) on x [N, 10, C, H, W] -> [N, 5, 3C, H, W].
CUDA: N = 16 (N·T = 160 frames, as in the issue). CPU: N = 1 (10 frames), to keep each case at a
few seconds. The eager baseline is the natural code: slice, two depthwise conv2d, sub, cat."""

import torch

import fgreid_ops
from fgreid_ops.reference import off_reference

from common import Case, compiled, forward_backward, nbytes

LEVELS = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]
T, STRIDE = 10, 5
QUICK = [(1, 4, 8, 12, 2)]  # (N, T, C, H=W, stride)


def cases(device: str, quick: bool) -> list[Case]:
    # One compiled reference per shape and grad mode (10 graphs): past dynamo's default limit of 8
    # the later "compile" cases would silently run eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    if quick:
        configs = QUICK
    else:
        n = 16 if device == "cuda" else 1
        configs = [(n, T, C, H, STRIDE) for C, H in LEVELS]
    note = "" if quick or device == "cuda" else "CPU: N=1 segment (10 frames) instead of 16 (160 frames)"
    out = []
    for n, t, c, h, d in configs:
        x = torch.randn(n, t, c, h, h, device=device)
        out_bytes = n * (t - d) * 3 * c * h * h * x.element_size()
        config = f"x={list(x.shape)} stride={d}"

        def ours(x, d=d):
            return fgreid_ops.off(x, stride=d)

        def eager(x, d=d):
            return off_reference(x, stride=d)

        compiled_ref = compiled(eager)
        providers = {"eager": eager, "compile": compiled_ref, "fgreid": ours}
        fwd = {name: (lambda f: lambda: f(x))(f) for name, f in providers.items()}
        # the least traffic: read x once, write the output
        out.append(Case("off", config, "fwd", nbytes(x) + out_bytes, fwd, note))

        xg = x.clone().requires_grad_()
        bwd = {name: forward_backward(f, (xg,)) for name, f in providers.items()}
        # forward, then read grad_out and write grad_x once
        out.append(Case("off", config, "fwd+bwd", 2 * (nbytes(x) + out_bytes), bwd, note))
    return out
