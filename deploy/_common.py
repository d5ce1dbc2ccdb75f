"""What the deploy scripts share: the model registry (cuhs, fg_video, or a user's module by import
path), their example inputs, checkpoint loading and the TensorRT import guard."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# python_models (and fgreid_ops when it is not installed) live in ROOT. Appended, not prepended: an
# installed fgreid_ops (with its compiled extension) wins over the source tree.
if ROOT not in sys.path:
    sys.path.append(ROOT)

BUILTIN_MODELS = ("cuhs", "fg_video")
DEFAULT_SIZES = {"cuhs": (384, 128), "fg_video": (224, 224)}
DEFAULT_USER_SIZE = (256, 128)


@dataclasses.dataclass
class ModelSpec:
    """A model ready to export: `make_inputs(batch, device, dtype)` gives the tuple it is called with."""

    model: "torch.nn.Module"  # noqa: F821
    make_inputs: Callable
    input_names: list[str]


def parse_size(text: str) -> tuple[int, int]:
    """'384x128' -> (384, 128)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 384x128), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive H and W, got {text!r}")
    return h, w


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def model_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def model_name(text: str) -> str:
    if text in BUILTIN_MODELS or (":" in text and all(text.split(":", 1))):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(BUILTIN_MODELS)} or MODULE:ATTR, got {text!r}")


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", type=model_name, required=required,
                   help="cuhs, fg_video, or MODULE:ATTR (a user's nn.Module class or factory, e.g. mypkg.net:build)")
    g.add_argument("--checkpoint", help="state_dict file (torch.save); a dict with a 'state_dict' or 'model' "
                                        "entry also works, and a 'module.' prefix (DataParallel) is stripped")
    g.add_argument("--model-kwargs", type=model_kwargs, default={},
                   help='JSON keyword arguments of the model constructor, e.g. \'{"num_classes": 751, "topk": 45}\'')
    g.add_argument("--no-strict", action="store_true", help="load the checkpoint with strict=False")
    g.add_argument("--input-size", type=parse_size, default=None,
                   help="image HxW (default 384x128 for cuhs, 224x224 for fg_video, 256x128 for a user model)")
    g.add_argument("--frames", type=positive_int, default=10, help="fg_video: frames per segment T (default 10)")


def _import_attr(path: str):
    module_name, attr = path.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import module {module_name!r} of --model {path}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SystemExit(f"error: module {module_name!r} has no attribute {attr!r} (--model {path})")
        obj = getattr(obj, part)
    return obj


def load_checkpoint(model, path: str, strict: bool = True) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        print(f"checkpoint: {len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys")


def build_model(args) -> ModelSpec:
    """The model named by --model, in eval mode, with --checkpoint loaded, and its input builder."""
    import torch

    kwargs = dict(args.model_kwargs)
    size = args.input_size
    if args.model == "cuhs":
        from python_models.cuhs import CUHS

        kwargs.setdefault("num_classes", 751)
        model = CUHS(**kwargs)
        h, w = size or DEFAULT_SIZES["cuhs"]

        def make_inputs(batch, device="cpu", dtype=torch.float32):
            return (torch.randn(batch, 3, h, w, device=device, dtype=dtype),)

        names = ["images"]
    elif args.model == "fg_video":
        from python_models.fg_video import FGVideoNet

        kwargs.setdefault("num_classes", 625)
        model = FGVideoNet(**kwargs)
        h, w = size or DEFAULT_SIZES["fg_video"]
        t = args.frames
        joints = getattr(model, "joint_stream", True)

        def make_inputs(batch, device="cpu", dtype=torch.float32):
            frames = torch.randn(batch, t, 3, h, w, device=device, dtype=dtype)
            if not joints:
                return (frames,)
            # keypoints (x, y) normalized to [0, 1] of the frame, 16 per frame
            return frames, torch.rand(batch, t, 16, 2, device=device, dtype=dtype)

        names = ["frames", "keypoints"] if joints else ["frames"]
    else:
        factory = _import_attr(args.model)
        model = factory(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise SystemExit(f"error: --model {args.model} returned {type(model).__name__}, not an nn.Module")
        h, w = size or DEFAULT_USER_SIZE
        custom = getattr(model, "example_inputs", None)

        def make_inputs(batch, device="cpu", dtype=torch.float32):
            if callable(custom):  # a model that knows its inputs: example_inputs(batch) -> tuple
                out = custom(batch)
                out = out if isinstance(out, tuple) else (out,)
                return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in out)
            return (torch.randn(batch, 3, h, w, device=device, dtype=dtype),)

        names = None
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, strict=not args.no_strict)
    model.eval()
    spec = ModelSpec(model, make_inputs, names)
    if spec.input_names is None:
        spec.input_names = [f"input_{i}" for i in range(len(make_inputs(2)))]
    return spec


def output_names(out) -> list[str] | None:
    """Graph output names from an eager output: the keys of a dict of tensors, 'features' for one
    tensor, None (the exporter's names) otherwise."""
    import torch

    if isinstance(out, torch.Tensor):
        return ["features"]
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return [str(k) for k in out]
    return None


def import_tensorrt(prog: str):
    """`tensorrt`, or exit with one line saying it is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise SystemExit(
            f"{prog}: TensorRT is not installed ({exc}); install the tensorrt Python package on a machine "
            "with an NVIDIA GPU (pip install tensorrt) to build or run engines"
        ) from None
    return tensorrt
