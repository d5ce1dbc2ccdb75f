"""Fused localization: the 5 ResNet-50 levels of the FG video model (N·T = 16·10 = 160 frames of
224×224) with 7×7 and 14×14 attention masks, one mask per frame ([N, 1, h, w]) or per channel
([N, C, h, w]), pool False and True, bilinear: 40 shapes on CUDA with --full; the default run
takes the per-frame 7×7 mask unpooled and the per-channel 14×14 mask pooled at every level.

CPU (2 cores, and torch.compile compiles per shape) runs a scaled-down subset: N 160 -> 2, levels
1, 3 and 5 (112², 28², 7²); --full: masks [N, 1, 7, 7] and [N, C, 14, 14], pool False and True;
the default run: the per-frame mask unpooled and the per-channel mask pooled.

The fwd+bwd cases send all-ones output gradients, and at the first unpooled config also the
gradients the models send (GAP's and sum's expands, a dense random one; --quick: sum only)."""

import torch

import fgreid_ops
from fgreid_ops.reference import mask_upsample_mul_reference

from common import Case, bound, bound_backward, compiled, dense_grad, grad_bytes, grad_mode, nbytes, spec

LEVELS = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]  # (C, H = W)
N_CUDA, N_CPU = 160, 2
LAYOUTS = ("gap", "sum", "dense")
QUICK_LAYOUT = ((2, 64, 28, 1, 7, False), ("sum",))


def _configs(device, size):
    """(N, C, H, mask channels or None for C, h, pool)."""
    if size == "quick":
        return [(2, 64, 28, 1, 7, True)]
    if device == "cuda" and size == "full":
        return [(N_CUDA, c, s, cm, h, pool) for c, s in LEVELS for cm in (1, None) for h in (7, 14)
                for pool in (False, True)]
    if device == "cuda":
        return [(N_CUDA, c, s, cm, h, pool) for c, s in LEVELS for cm, h, pool in ((1, 7, False), (None, 14, True))]
    if size == "full":
        return [(N_CPU, c, s, cm, h, pool) for c, s in LEVELS[::2] for cm, h in ((1, 7), (None, 14))
                for pool in (False, True)]
    return [(N_CPU, c, s, cm, h, pool) for c, s in LEVELS[::2] for cm, h, pool in ((1, 7, False), (None, 14, True))]


def _mb(elements, element_size):
    return elements * element_size / 1e6


def _ref(feat, mask, pool):
    return mask_upsample_mul_reference(feat, mask, "bilinear", pool)


def _ours(feat, mask, pool):
    return fgreid_ops.mask_upsample_mul(feat, mask, "bilinear", pool)


def _setup(feat_shape, mask_shape, pool, backward, grad="ones"):
    def setup(device):
        torch.manual_seed(0)
        feat = torch.rand(feat_shape, device=device).requires_grad_(backward)
        mask = torch.rand(mask_shape, device=device).requires_grad_(backward)
        fns = {"eager": _ref, "compile": compiled(_ref), "fgreid": _ours}
        if not backward:
            return {name: bound(fn, feat, mask, pool) for name, fn in fns.items()}
        g = dense_grad(feat_shape, device) if grad == "dense" else grad
        return {name: bound_backward(fn, feat, mask, pool, grad=g) for name, fn in fns.items()}
    return setup


def _layout_cases(device, size):
    """fwd+bwd of an unpooled config with the gradients the models send."""
    if size == "quick":
        config, grads = QUICK_LAYOUT
    else:
        config, grads = next(c for c in _configs(device, size) if not c[5]), LAYOUTS
    N, C, H, cm, h, pool = config
    feat, mask = (N, C, H, H), (N, cm or C, h, h)
    inputs = {"feat": spec(feat), "mask": spec(mask)}
    out = []
    for grad in grads:
        case_inputs = {**inputs, "grad_out": spec(feat)} if grad == "dense" else inputs
        # read feat and mask, write out; then read the gradient, feat and mask, write both gradients
        moved = 4 * nbytes(inputs["feat"]) + 3 * nbytes(inputs["mask"]) + grad_bytes(grad, feat, 4)
        out.append(Case("mask_upsample_mul", f"feat={list(feat)} mask={list(mask)} map", grad_mode(grad), case_inputs,
                        _setup(feat, mask, pool, True, grad), moved))
    return out


def cases(device: str, size: str) -> list[Case]:
    out = []
    for N, C, H, cm, h, pool in _configs(device, size):
        feat, mask = (N, C, H, H), (N, cm or C, h, h)
        inputs = {"feat": spec(feat), "mask": spec(mask)}
        es = 4
        config = f"feat={list(feat)} mask={list(mask)} {'pool' if pool else 'map'}"
        note = "CPU: N scaled 160->2, levels 1/3/5 only. " if device == "cpu" and size != "quick" else ""
        if pool:
            note += (f"pool=True never writes the [N,C,H,W] product: {_mb(N * C * H * H, es):.1f} MB of writes saved "
                     f"per call vs pool=False (the eager reference also writes and re-reads the product and the "
                     f"{_mb(N * mask[1] * H * H, es):.1f} MB upsampled mask)")
        read = nbytes(inputs["feat"], inputs["mask"])
        out_bytes = N * C * es if pool else nbytes(inputs["feat"])
        out.append(Case("mask_upsample_mul", config, "fwd", inputs, _setup(feat, mask, pool, False),
                        read + out_bytes, note))
        # least traffic: the forward, then read grad_out, feat and mask, write grad_feat and grad_mask
        grad_bytes = out_bytes + 2 * nbytes(inputs["feat"]) + 2 * nbytes(inputs["mask"])
        out.append(Case("mask_upsample_mul", config, "fwd+bwd", inputs, _setup(feat, mask, pool, True),
                        read + out_bytes + grad_bytes, note))
    return out + _layout_cases(device, size)
