"""Fused localization: the 5 ResNet-50 levels of the FG video model (N·T = 16·10 = 160 frames of
224×224) with 7×7 and 14×14 attention masks, one mask per frame ([N, 1, h, w]) or per channel
([N, C, h, w]), pool False and True, bilinear: 40 shapes on CUDA.

CPU (2 shared cores here, and torch.compile recompiles per shape) runs a scaled-down subset: N
160 -> 2, levels 1, 3 and 5 (112², 28², 7²), masks [N, 1, 7, 7] and [N, C, 14, 14], pool False and
True. The quick smoke run is one small shape with pool=True."""

import torch
import torch._dynamo

import fgreid_ops
from fgreid_ops.reference import mask_upsample_mul_reference

from common import Case, compiled, forward_backward, nbytes

LEVELS = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]  # (C, H = W)
N_CUDA, N_CPU = 160, 2


def _configs(device, quick):
    """(N, C, H, mask channels or None for C, h, pools)."""
    if quick:
        return [(2, 64, 28, 1, 7, (True,))]
    if device == "cuda":
        return [(N_CUDA, c, s, cm, h, (False, True)) for c, s in LEVELS for cm in (1, None) for h in (7, 14)]
    return [(N_CPU, c, s, cm, h, (False, True)) for c, s in LEVELS[::2] for cm, h in ((1, 7), (None, 14))]


def _mb(elements, element_size):
    return elements * element_size / 1e6


def cases(device: str, quick: bool) -> list[Case]:
    # 20 shapes x pool: more than dynamo's default of 8 recompiles per function, after which the
    # "compile" provider would silently run eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    out = []
    for N, C, S, cm, h, pools in _configs(device, quick):
        feat = torch.rand(N, C, S, S, device=device)
        mask = torch.rand(N, cm or C, h, h, device=device)
        for pool in pools:
            out.extend(_cases_for(feat, mask, pool, device))
    return out


def _cases_for(feat, mask, pool, device):
    N, C, H, W = feat.shape
    Cm = mask.shape[1]
    es = feat.element_size()
    config = f"feat={list(feat.shape)} mask={list(mask.shape)} {'pool' if pool else 'map'}"
    note = "CPU: N scaled 160->2, levels 1/3/5 only. " if device == "cpu" and N != N_CUDA else ""
    if pool:
        note += (f"pool=True never writes the [N,C,H,W] product: {_mb(feat.numel(), es):.1f} MB of writes saved per "
                 f"call vs pool=False (the eager reference also writes and re-reads the product and the "
                 f"{_mb(N * Cm * H * W, es):.1f} MB upsampled mask)")
    ref = lambda f, m: mask_upsample_mul_reference(f, m, "bilinear", pool)  # noqa: E731
    ours = lambda f, m: fgreid_ops.mask_upsample_mul(f, m, "bilinear", pool)  # noqa: E731
    compiled_ref = compiled(ref)

    out_bytes = N * C * es if pool else nbytes(feat)
    fwd = {
        "eager": lambda: ref(feat, mask),
        "compile": lambda: compiled_ref(feat, mask),
        "fgreid": lambda: ours(feat, mask),
    }
    cases = [Case("mask_upsample_mul", config, "fwd", nbytes(feat, mask) + out_bytes, fwd, note)]

    fg, mg = feat.clone().requires_grad_(), mask.clone().requires_grad_()
    bwd = {name: forward_backward(fn, (fg, mg)) for name, fn in
           (("eager", ref), ("compile", compiled_ref), ("fgreid", ours))}
    # least traffic: the forward above, then read grad_out, feat and mask, write grad_feat and grad_mask
    grad_bytes = (N * C * es if pool else nbytes(feat)) + 2 * nbytes(feat) + 2 * nbytes(mask)
    cases.append(Case("mask_upsample_mul", config, "fwd+bwd", nbytes(feat, mask) + out_bytes + grad_bytes, bwd, note))
    return cases
