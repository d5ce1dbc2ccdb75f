"""Whole-model inference throughput (img/s): CUHS on a batch of 384×128 images (64 in the paper
setting) and the FG video model on [N, 10, 3, 224, 224] segments, each with its ops routed to the
plain-PyTorch references ("eager", "compile") or to the fgreid_ops kernels ("fgreid",
"fgreid-compile"), eager and torch.compile. The speedup is that of the whole model, where
the convolutions dominate, so it is much smaller than an op's own speedup.

CPU runs are scaled down (said in each case's note): N = 1 at half resolution (CUHS 192×64, the
video model 1×10 frames at 112×112). torch.compile of the whole models only with --full (Inductor
compiles a whole model for minutes); --quick uses narrow models (width 8) on small inputs and
skips torch.compile."""

import os
import sys

import torch

import fgreid_ops

from common import Case, bound, compiled, spec

try:
    import python_models  # noqa: F401
except ImportError:  # running from a source checkout: python_models sits beside bench/
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from python_models.cuhs import CUHS  # noqa: E402
from python_models.fg_video import FGVideoNet  # noqa: E402


def _call(model, reference, *inputs):
    with torch.no_grad(), fgreid_ops.use_reference(reference):
        return model(*inputs)


def _providers(model, inputs, compile_too):
    """eager/compile under use_reference(); fgreid/fgreid-compile with the kernels."""
    providers = {"eager": bound(_call, model, True, *inputs), "fgreid": bound(_call, model, False, *inputs)}
    if compile_too:
        providers["compile"] = bound(_call, compiled(model), True, *inputs)
        providers["fgreid-compile"] = bound(_call, compiled(model), False, *inputs)
    return providers


def _cuhs_setup(cfg, x_shape, compile_too):
    def setup(device):
        torch.manual_seed(0)
        with torch.device(device):
            model = CUHS(751, **cfg).eval()
        x = torch.randn(x_shape, device=device)
        return _providers(model, (x,), compile_too)
    return setup


def _video_setup(cfg, part, seg_shape, compile_too):
    def setup(device):
        torch.manual_seed(0)
        with torch.device(device):
            model = FGVideoNet(625, part_size=part, **cfg).eval()
        seg = torch.randn(seg_shape, device=device)
        kp = torch.rand(*seg_shape[:2], 16, 2, device=device) * 0.8 + 0.1
        return _providers(model, (seg, kp), compile_too)
    return setup


def cases(device: str, size: str) -> list[Case]:
    gpu = device == "cuda"
    if size == "quick":
        cuhs_cfg, n_img, hw = dict(width=8, layers=(1, 1, 2, 1), feat_dim=32, topk=2), 4, (64, 32)
        vid_cfg, n_seg, frame, part = dict(width=8, layers=(1, 1, 1, 1), mask_size=(2, 2),
                                           part_channels=(4, 4, 8, 8, 8), js_dim=16, lstm_hidden=16), 1, 64, 16
        note = "quick: narrow models on small inputs, no torch.compile"
    elif gpu:
        cuhs_cfg, n_img, hw = dict(topk=45), 64, (384, 128)
        vid_cfg, n_seg, frame, part = {}, 16, 224, 224
        note = "torch.compile with --full"
    else:  # a full-size forward takes seconds per image on a small CPU
        cuhs_cfg, n_img, hw = dict(topk=11), 1, (192, 64)
        vid_cfg, n_seg, frame, part = {}, 1, 112, 112
        note = "CPU: scaled down to N=1 at half resolution" + ("" if size == "full" else "; torch.compile with --full")
    compile_too = size == "full"  # Inductor compiles a whole model for minutes
    x_shape = (n_img, 3, *hw)
    k_note = f"top-k {cuhs_cfg['topk']}" + (" (45 scaled to the 4x smaller map)" if cuhs_cfg["topk"] == 11 else "")
    seg_shape = (n_seg, 10, 3, frame, frame)
    return [
        Case("models", f"CUHS N={n_img} {hw[0]}x{hw[1]}", "fwd", {"x": spec(x_shape)},
             _cuhs_setup(cuhs_cfg, x_shape, compile_too), note=f"{note}; {k_note}" if note else k_note, items=n_img),
        Case("models", f"FG video N={n_seg}x10 {frame}x{frame}", "fwd",
             {"segments": spec(seg_shape), "keypoints": spec((n_seg, 10, 16, 2))},
             _video_setup(vid_cfg, part, seg_shape, compile_too),
             note=(note + "; " if note else "") + "img/s counts frames", items=n_seg * 10),
    ]
