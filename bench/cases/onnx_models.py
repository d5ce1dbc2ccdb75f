"""Model inference exported to ONNX and run by onnxruntime (CPU), beside the same model in eager
PyTorch and under torch.compile (both with the fgreid_ops kernels). Providers: "eager", "compile",
"fgreid-onnxruntime". Each case exports its model (fgreid_ops.onnx.export_onnx, dynamic batch) into
a temporary folder that is removed once the session holds the bytes; the onnxruntime session uses as
many threads as torch does for the row.

CPU only (no CUDA execution provider is installed here; TensorRT is deploy/run_engine.py's job).
CPU shapes are scaled down from the papers' (CUHS batch 64, video N=16): see each case's note.
"compile" only with --full: compiling whole models takes minutes on a small CPU. onnxruntime and
python_models are required (a missing one is a failure of the run, not a silent skip)."""

import contextlib
import logging
import os
import sys
import tempfile
import warnings

import torch

from common import Case, bound, compiled, spec

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


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs every registry entry it skips and warns per traced call: not on screen."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_session(model, batch):
    """An onnxruntime session of the model (a deploy ModelSpec) exported to ONNX. The session
    holds the model in memory: its temporary folder is gone when this returns."""
    import onnxruntime as ort

    from fgreid_ops.onnx import export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="fgreid-bench-onnx-") as folder, _quiet_exporter():
        path = os.path.join(folder, "model.onnx")
        export_onnx(model.model, model.make_inputs(max(batch, 2)), path, input_names=model.input_names)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _call(model, *inputs):
    with torch.no_grad():
        return model(*inputs)


def _run_session(session, names, *inputs):
    return session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})


def _setup(name, kwargs, size, frames, batch, compile_too):
    def setup(device):
        import argparse

        from deploy import _common

        torch.manual_seed(0)
        args = argparse.Namespace(model=name, model_kwargs=dict(kwargs), input_size=size, frames=frames,
                                  checkpoint=None, no_strict=False)
        model = _common.build_model(args)
        session = _export_session(model, batch)
        torch.manual_seed(1)
        inputs = model.make_inputs(batch)
        providers = {"eager": bound(_call, model.model, *inputs)}
        if compile_too:
            providers["compile"] = bound(_call, compiled(model.model), *inputs)
        providers["fgreid-onnxruntime"] = bound(_run_session, session, model.input_names, *inputs)
        return providers
    return setup


def _inputs(name, kwargs, size, frames, batch):
    if name == "cuhs":
        return {"images": spec((batch, 3, *size))}
    inputs = {"frames": spec((batch, frames, 3, *size))}
    if kwargs.get("joint_stream", True):
        inputs["keypoints"] = spec((batch, frames, 16, 2))
    return inputs


def cases(device: str, size: str) -> list[Case]:
    if device != "cpu":
        return []
    out = []
    for name, kwargs, hw, frames, batch, note in QUICK_CONFIGS if size == "quick" else CONFIGS:
        inputs = _inputs(name, kwargs, hw, frames, batch)
        shape = "x".join(str(v) for v in next(iter(inputs.values()))[0])
        compile_too = size == "full"
        out.append(Case("onnx_models", f"{name} {shape}", "fwd", inputs,
                        _setup(name, kwargs, hw, frames, batch, compile_too),
                        note=note + ("" if compile_too or size == "quick" else "; torch.compile with --full"),
                        items=batch))
    return out
