"""Whole-model inference throughput (img/s): CUHS on a batch of 384×128 images (64 in the paper
setting) and the FG video model on [N, 10, 3, 224, 224] segments, each with its ops routed to the
plain-PyTorch references ("eager", "compile") or to the fgreid_ops kernels ("fgreid",
"fgreid-compile"), eager and torch.compile. The speedup is that of the whole model, where
the convolutions dominate, so it is much smaller than an op's own speedup.

CPU runs are scaled down (said in each case's note): N = 1 at half resolution (CUHS 192×64, the
video model 1×10 frames at 112×112); --quick uses narrow models (width 8) on small inputs and skips torch.compile (its
Inductor compilation of a whole model takes minutes on a small CPU)."""

import os
import sys

import torch

import fgreid_ops

from common import Case

try:
    import python_models  # noqa: F401
except ImportError:  # running from a source checkout: python_models sits beside bench/
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from python_models.cuhs import CUHS  # noqa: E402
from python_models.fg_video import FGVideoNet  # noqa: E402


def _keypoints(n, t, device):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, t, 16, 2, generator=g) * 0.8 + 0.1).to(device)


def _providers(model, inputs, compile_too):
    """eager/compile under use_reference(); fgreid/fgreid-compile with the kernels."""
    def run(fn, reference):
        def call():
            with torch.no_grad(), fgreid_ops.use_reference(reference):
                return fn(*inputs)
        return call

    providers = {"eager": run(model, True), "fgreid": run(model, False)}
    if compile_too:
        providers["compile"] = run(torch.compile(model, dynamic=False), True)
        providers["fgreid-compile"] = run(torch.compile(model, dynamic=False), False)
    return providers


def cases(device: str, quick: bool) -> list[Case]:
    torch.manual_seed(0)
    gpu = device == "cuda"
    if quick:
        cuhs_cfg, n_img, size = dict(width=8, layers=(1, 1, 2, 1), feat_dim=32, topk=2), 4, (64, 32)
        vid_cfg, n_seg, frame, part = dict(width=8, layers=(1, 1, 1, 1), mask_size=(2, 2),
                                           part_channels=(4, 4, 8, 8, 8), js_dim=16, lstm_hidden=16), 1, 64, 16
        note = "quick: narrow models on small inputs, no torch.compile"
    elif gpu:
        cuhs_cfg, n_img, size = dict(topk=45), 64, (384, 128)
        vid_cfg, n_seg, frame, part = {}, 16, 224, 224
        note = ""
    else:  # a full-size forward takes seconds per image on a small CPU
        cuhs_cfg, n_img, size = dict(topk=11), 1, (192, 64)
        vid_cfg, n_seg, frame, part = {}, 1, 112, 112
        note = "CPU: scaled down to N=1 at half resolution"
    out = []

    cuhs = CUHS(751, **cuhs_cfg).to(device).eval()
    x = torch.randn(n_img, 3, *size, device=device)
    k_note = f"top-k {cuhs.topk}" + (" (45 scaled to the 4x smaller map)" if cuhs.topk == 11 else "")
    out.append(Case("models", f"CUHS N={n_img} {size[0]}x{size[1]}", "fwd", 0, _providers(cuhs, (x,), not quick),
                    note=f"{note}; {k_note}" if note else k_note, items=n_img))

    video = FGVideoNet(625, part_size=part, **vid_cfg).to(device).eval()
    seg = torch.randn(n_seg, 10, 3, frame, frame, device=device)
    kp = _keypoints(n_seg, 10, device)
    out.append(Case("models", f"FG video N={n_seg}x10 {frame}x{frame}", "fwd", 0, _providers(video, (seg, kp), not quick),
                    note=(note + "; " if note else "") + "img/s counts frames", items=n_seg * 10))
    return out
