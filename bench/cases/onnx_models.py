"""Model inference exported to ONNX and run by onnxruntime (CPU), beside the same model in eager
PyTorch and under torch.compile (both with the fgreid_ops kernels). Providers: "eager", "compile",
"fgreid-onnxruntime". Each model is exported once per process (fgreid_ops.onnx.export_onnx, dynamic
batch); the onnxruntime session uses as many threads as torch does for the row.

CPU only (no CUDA execution provider is installed here; TensorRT is deploy/run_engine.py's job).
CPU shapes are scaled down from the papers' (CUHS batch 64, video N=16): see each case's note.
--quick (tiny models) has no "compile" provider: compiling whole models takes minutes on CI's cores."""

import os
import sys
import tempfile

import torch

from common import Case, compiled

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.append(ROOT)

# (model, kwargs, (H, W), frames, batch, note)
CONFIGS = [
    ("cuhs", {"num_classes": 751}, (384, 128), 10, 4, "ResNet-50 CUHS, c=1536, k=5; batch 4 on CPU (paper bench: 64)"),
    ("fg_video", {"num_classes": 625, "part_size": 112}, (224, 224), 10, 1,
     "ResNet-50 video net, 10 frames, Δt=5; N=1 on CPU (paper bench: 16), part crops 112×112"),
]
QUICK_CONFIGS = [
    ("cuhs", {"num_classes": 3, "feat_dim": 8, "width": 4, "layers": [1, 1, 2, 1], "topk": 3}, (64, 32), 10, 2,
     "tiny CUHS (width 4)"),
    ("fg_video", {"num_classes": 3, "width": 4, "layers": [1, 1, 1, 1], "delta_t": 2, "mask_size": [2, 2],
                  "mask_channels": 4, "lstm_hidden": 8, "joint_stream": False}, (64, 32), 3, 2,
     "tiny video net (width 4, 3 frames, no joint stream)"),
]

_prepared = {}  # config key -> (spec, onnx path, compiled model): built once, timed under several thread counts


def _prepare(name, kwargs, size, frames, batch, quick):
    import argparse

    from deploy import _common
    from fgreid_ops.onnx import export_onnx

    key = (name, repr(sorted(kwargs.items())), size, frames)
    if key not in _prepared:
        torch.manual_seed(0)
        args = argparse.Namespace(model=name, model_kwargs=dict(kwargs), input_size=size, frames=frames,
                                  checkpoint=None, no_strict=False)
        spec = _common.build_model(args)
        path = os.path.join(tempfile.mkdtemp(prefix="fgreid-bench-onnx-"), f"{name}.onnx")
        export_onnx(spec.model, spec.make_inputs(max(batch, 2)), path, input_names=spec.input_names)
        # --quick (the CI smoke) skips torch.compile of whole models: minutes on 2 cores
        _prepared[key] = (spec, path, None if quick else compiled(spec.model))
    return _prepared[key]


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def cases(device: str, quick: bool) -> list[Case]:
    if device != "cpu":
        return []
    try:
        import onnxruntime  # noqa: F401

        import python_models  # noqa: F401
    except ImportError as exc:
        print(f"  [onnx_models] skipped: {exc}")
        return []
    out = []
    for name, kwargs, size, frames, batch, note in QUICK_CONFIGS if quick else CONFIGS:
        spec, path, compiled_model = _prepare(name, kwargs, size, frames, batch, quick)
        torch.manual_seed(1)
        inputs = spec.make_inputs(batch)
        session = _session(path)
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        model = spec.model

        def eager(model=model, inputs=inputs):
            with torch.no_grad():
                return model(*inputs)

        def compile_(fn=compiled_model, inputs=inputs):
            with torch.no_grad():
                return fn(*inputs)

        providers = {"eager": eager}
        if compiled_model is not None:
            providers["compile"] = compile_
        providers["fgreid-onnxruntime"] = lambda s=session, f=feeds: s.run(None, f)
        shape = "x".join(str(v) for v in inputs[0].shape)
        out.append(Case("onnx_models", f"{name} {shape}", "fwd", 0, providers, note))
    return out
