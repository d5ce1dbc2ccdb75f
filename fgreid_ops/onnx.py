"""ONNX export of models that use fgreid_ops (SPEC §8).

Every op is lowered to standard ONNX operators (the default domain only: no custom nodes, no
TensorRT plugins) by an onnxscript function registered for ``torch.onnx.export(..., dynamo=True)``
through ``custom_translation_table``:

======================  ===========================================================================
op (and its variants)   lowering
======================  ===========================================================================
gem, gem_triton         Cast(float) → Max(x, eps) → Pow(p) → ReduceMean(H, W) → Pow(1/p) → CastLike
off                     two depthwise 3×3 Convs (Sobel Kx, Ky; group = C, pad 1) + Sub(b, a) + Concat
off_segment             Slice(x, t < T−d), Slice(x, t ≥ d), then the ``off`` lowering
mask_upsample_mul       Resize(mask → H×W) + Mul (+ ReduceMean over H, W when ``pool``)
topk_mask, …_triton     ReduceSum(C) → TopK(k) → ScatterElements(0 into ones) → Mul
======================  ===========================================================================

Only batch is dynamic: C, H and W are read from the traced shapes and baked in as constants
(Conv's group, TopK's K), which is what TensorRT wants (its TopK needs a constant K).

Numerics, where the lowering and the op may differ:

* Precision. GeM, the top-k channel sum and the pooled localization compute in float32 inside
  float16 graphs (a Cast pair, a no-op in float32 graphs), as the kernels do: ``x**3`` overflows
  half beyond x≈40. OFF and the unpooled localization product run in the graph's dtype.
* Resize. ``bilinear`` is ``mode=linear, coordinate_transformation_mode=half_pixel``, i.e.
  ``interpolate(align_corners=False)`` including the clamp at the borders, up- and downsampling.
  (Not ``pytorch_half_pixel``: it maps an output size of 1 to source index 0 where PyTorch samples
  the centre, 0.5·in − 0.5; the video model's 2×2 masks meet 1-pixel-wide maps.) ``nearest`` is
  ``asymmetric`` + ``floor``: PyTorch computes ``floor(dst * (in/out))`` in float32, ONNX runtimes
  ``floor(dst / (out/in))``; both are exact for integer scale factors, for other ratios a source
  index may differ by one at an exact multiple.
* TopK ties. The op zeroes the k largest ``A = Σ_c f1`` and breaks ties by the lower flat index
  h·W+w. ONNX TopK (opset ≥ 11, sorted=1) specifies the same rule ("the element with the lower
  index appears first"), and onnxruntime follows it, so exact ties select the same positions.
  TensorRT's TopK layer does not document its tie order: on an engine, tied positions may be
  picked differently. Separately, A is summed in a different order than the kernel's, so values
  that differ in the last ulp may rank differently in any runtime. The mask is in f2's dtype.

Usage::

    from fgreid_ops.onnx import export_onnx
    export_onnx(model, (images,), "model.onnx")           # dynamic batch, opset 18

or pass ``custom_translation_table=fgreid_ops.onnx.translation_table()`` to ``torch.onnx.export``
yourself. Needs the ``onnx`` and ``onnxscript`` packages (``onnxruntime`` to check the result).
"""

from __future__ import annotations

import contextlib
import copy
import keyword
import os

import torch

from .reference.off import SOBEL_X, SOBEL_Y

_FLOAT = 1  # onnx.TensorProto.FLOAT

MIN_OPSET = 18  # the lowerings use opset-18 signatures (ReduceMean/ReduceSum axes as inputs)


def _op():
    try:
        from onnxscript import opset18
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fgreid_ops.onnx: ONNX export needs onnxscript (pip install onnxscript onnx)") from exc
    return opset18


def _ints(op, values):
    return op.Constant(value_ints=list(values))


def _static_dim(value, axis: int):
    """The size of `axis` when the traced shape knows it as an integer, else None."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


# ------------------------------------------------------------------------------------------------
# Lowerings. Each is called by the exporter with onnxscript values for tensors and Python values
# for the schema's scalars, so Python branches on mode/pool/k pick the graph at export time.
# ------------------------------------------------------------------------------------------------


def gem_onnx(x, p, eps: float):
    """GeM: ``(ReduceMean_hw(Max(x, eps) ** p)) ** (1 / p)`` in float32, cast back to x's dtype.

    p of shape [1] or [C] is reshaped to [-1, 1, 1] so that it broadcasts over (C, H, W)."""
    op = _op()
    xf = op.Cast(x, to=_FLOAT)
    pf = op.Cast(p, to=_FLOAT)
    powered = op.Pow(op.Max(xf, op.Constant(value_float=float(eps))), op.Reshape(pf, _ints(op, [-1, 1, 1])))
    mean = op.ReduceMean(powered, _ints(op, [2, 3]), keepdims=0)
    # Div rather than Reciprocal: older TensorRT ONNX parsers lack Reciprocal.
    inv_p = op.Div(op.Constant(value_float=1.0), pf)
    return op.CastLike(op.Pow(mean, inv_p), x)


def _sobel_weight(op, kernel, channels: int, like):
    w = torch.tensor(kernel, dtype=torch.float32).expand(channels, 1, 3, 3).contiguous()
    from onnx import numpy_helper

    return op.CastLike(op.Constant(value=numpy_helper.from_array(w.numpy())), like)


def off_onnx(a, b):
    """OFF: ``Concat(Sx(a), Sy(a), b − a)`` on the channel axis of [..., C, H, W] inputs.

    Sx, Sy are depthwise Convs (group = C, pad 1) with the Sobel kernels of SPEC §2; the leading
    dims are folded into one batch dim for the Conv and restored after."""
    return _off(_op(), a, b, _static_channels(a))


def _static_channels(x) -> int:
    channels = _static_dim(x, -3)
    if channels is None:
        raise ValueError("fgreid_ops.onnx: off needs a static channel count C to build its depthwise Conv")
    return channels


def _off(op, a, b, channels: int):
    hw = op.Shape(a, start=-2)
    lead = op.Shape(a, end=-3)
    a4 = op.Reshape(a, op.Concat(_ints(op, [-1, channels]), hw, axis=0))
    b4 = op.Reshape(b, op.Concat(_ints(op, [-1, channels]), hw, axis=0))
    conv = dict(group=channels, pads=[1, 1, 1, 1], kernel_shape=[3, 3], strides=[1, 1])
    sx = op.Conv(a4, _sobel_weight(op, SOBEL_X, channels, a), **conv)
    sy = op.Conv(a4, _sobel_weight(op, SOBEL_Y, channels, a), **conv)
    out = op.Concat(sx, sy, op.Sub(b4, a4), axis=1)
    return op.Reshape(out, op.Concat(lead, _ints(op, [3 * channels]), hw, axis=0))


def off_segment_onnx(x, stride: int):
    """OFF over a segment x [N, T, C, H, W]: ``off(x[:, :-d], x[:, d:])`` with two Slices."""
    op = _op()
    stride = int(stride)
    a = op.Slice(x, _ints(op, [0]), _ints(op, [-stride]), _ints(op, [1]))
    b = op.Slice(x, _ints(op, [stride]), _ints(op, [torch.iinfo(torch.int64).max]), _ints(op, [1]))
    return _off(op, a, b, _static_channels(x))


def mask_upsample_mul_onnx(feat, mask, mode: str, pool: bool):
    """Localization: ``Resize(mask, (H, W)) ⊙ feat``, and ``ReduceMean`` over H×W when ``pool``.

    The mask is resized in float32 (it is small); the pooled product is accumulated in float32."""
    op = _op()
    if mode == "bilinear":
        resize = dict(mode="linear", coordinate_transformation_mode="half_pixel")
    elif mode == "nearest":
        resize = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        raise ValueError(f"fgreid_ops.onnx: mask_upsample_mul mode must be 'bilinear' or 'nearest', got {mode!r}")
    sizes = op.Concat(op.Shape(mask, end=2), op.Shape(feat, start=2, end=4), axis=0)
    up = op.Resize(op.Cast(mask, to=_FLOAT), None, None, sizes, **resize)
    if pool:
        prod = op.Mul(op.Cast(feat, to=_FLOAT), up)
        return op.CastLike(op.ReduceMean(prod, _ints(op, [2, 3]), keepdims=0), feat)
    return op.Mul(feat, op.CastLike(up, feat))


def topk_mask_onnx(f1, f2, k: int):
    """Top-k masking: ``A = ReduceSum_c f1`` (float32); mask = 1 except 0 at ``TopK(A, k)`` indices
    (ScatterElements of zeros into ones); ``out = f2 ⊙ mask``. Returns (out, mask [N, 1, H, W])
    with the mask in f2's dtype, like the op.

    k = 0 gives an all-ones mask (ONNX TopK wants K ≥ 1); k ≥ H·W is clamped to H·W (all zeros).
    K is a constant when H and W are static (TensorRT needs that)."""
    op = _op()
    k = int(k)
    flat = op.Reshape(op.ReduceSum(op.Cast(f1, to=_FLOAT), _ints(op, [1]), keepdims=0), _ints(op, [0, -1]))
    mask_shape = op.Concat(op.Shape(f1, end=1), _ints(op, [1]), op.Shape(f1, start=2, end=4), axis=0)
    ones = op.Expand(op.Constant(value_float=1.0), op.Shape(flat))
    if k == 0:
        keep = ones
    else:
        height, width = _static_dim(f1, 2), _static_dim(f1, 3)
        if height is not None and width is not None:
            kk = _ints(op, [min(k, height * width)])
        else:
            kk = op.Min(_ints(op, [k]), op.Shape(flat, start=1))
        _, idx = op.TopK(flat, kk, axis=1, largest=1, sorted=1)
        zeros = op.Expand(op.Constant(value_float=0.0), op.Shape(idx))
        keep = op.ScatterElements(ones, idx, zeros, axis=1)
    mask = op.CastLike(op.Reshape(keep, mask_shape), f2)
    return op.Mul(f2, mask), mask


def lowerings() -> dict:
    """``{op name in torch.ops.fgreid: lowering}`` from the op descriptions (OpDef.onnx names a
    lowering of this module); the C++ and Triton variants of an op share one. An inference op
    without one fails tests/test_onnx.py::test_translation_table_has_every_registered_inference_op."""
    from . import _registry, ops  # noqa: F401  (importing the ops registers their descriptions)

    return {name: globals()[op.onnx] for op in _registry.all_ops() if op.onnx for name in op.variants()}


def translation_table() -> dict:
    """``{torch.ops.fgreid.<op>.default: lowering}`` for every op with a lowering whose schema is
    registered in this build, ready for ``torch.onnx.export(custom_translation_table=...)``. A
    lowering whose schema is missing is an error (a stale or partial build), not a silent gap."""
    table = {}
    for name, fn in lowerings().items():
        if not hasattr(torch.ops.fgreid, name):
            raise RuntimeError(f"fgreid_ops.onnx: the op fgreid::{name} has a lowering but is not registered")
        table[getattr(torch.ops.fgreid, name).default] = fn
    return table


def _as_tuple(inputs):
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    return tuple(inputs)


def _keyword_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.state_dict(keep_vars=True).items()
            if any(keyword.iskeyword(part) for part in name.split("."))]


@contextlib.contextmanager
def _keyword_safe_fx_codegen(model: torch.nn.Module):
    """torch.export's unlifting generates ``self.classifiers.global.weight`` for a submodule named
    after a Python keyword (e.g. an ``nn.ModuleDict`` key "global"): a SyntaxError inside
    torch.onnx.export (pytorch/pytorch#188538, open for torch <= 2.13). While such a model is
    exported, emit ``getattr(x, "global")`` for keyword names instead; any other model exports
    with torch untouched."""
    import torch.fx.graph as fx_graph

    original = getattr(fx_graph, "_format_target", None)
    if original is None or not _keyword_names(model):
        yield
        return

    def format_target(base: str, target: str) -> str:
        out = base
        for part in target.split("."):
            plain = part.isidentifier() and not keyword.iskeyword(part)
            out = f"{out}.{part}" if plain else f"getattr({out}, {part!r})"
        return out

    fx_graph._format_target = format_target
    try:
        yield
    finally:
        fx_graph._format_target = original


def export_onnx(model: torch.nn.Module, example_inputs, path: str | os.PathLike, dynamic_batch: bool = True,
                opset: int = MIN_OPSET, fp16: bool = False, input_names=None, output_names=None,
                optimize: bool = True) -> str:
    """Export `model` (called as ``model(*example_inputs)``) to the ONNX file `path`; returns the path.

    Args:
        example_inputs: a tensor or a tuple of tensors; dim 0 of every tensor is the batch.
        dynamic_batch: export dim 0 as one symbolic "batch" dim shared by all inputs (the example
            batch must then be ≥ 2: torch.export specializes sizes 0 and 1).
        opset: ONNX opset, ≥ 18.
        fp16: export a float16 graph (a float16 copy of the model with float16 floating inputs);
            the model passed in is not modified. For TensorRT, an float32 graph built with the
            FP16 flag (deploy/build_engine.py --fp16) is the usual alternative.
        input_names / output_names: names of the graph's inputs and outputs (default: the
            exporter's names from the forward signature).
        optimize: run the onnxscript graph optimizer (constant folding, dead-code removal; about a
            third of the export time of a large model). Off, the graph computes the same values
            with ~4× more nodes.

    The model is exported in eval mode (its training flag is restored afterwards). Raises
    ValueError for an opset below 18 or a batch < 2 with dynamic_batch.
    """
    if int(opset) < MIN_OPSET:
        raise ValueError(f"fgreid_ops.onnx: expected opset >= {MIN_OPSET} (the dynamo exporter's minimum), got {opset}")
    inputs = _as_tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("fgreid_ops.onnx: expected example_inputs to be a tensor or a non-empty tuple of tensors")
    if dynamic_batch and any(t.dim() == 0 or t.shape[0] < 2 for t in inputs):
        raise ValueError(
            "fgreid_ops.onnx: with dynamic_batch, every example input needs a batch dim of size >= 2, got "
            f"{[list(t.shape) for t in inputs]}"
        )
    if fp16:
        model = copy.deepcopy(model).half()
        inputs = tuple(t.half() if t.is_floating_point() else t for t in inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    was_training = model.training
    model.eval()
    try:
        with _keyword_safe_fx_codegen(model):
            program = torch.onnx.export(
                model, inputs, dynamo=True, custom_translation_table=translation_table(),
                dynamic_shapes=dynamic_shapes, opset_version=int(opset), optimize=optimize,
                input_names=input_names, output_names=output_names, verbose=False,
            )
    finally:
        model.train(was_training)
    path = os.fspath(path)
    program.save(path)
    return path


def custom_domain_nodes(model) -> list[str]:
    """``"domain::op_type"`` of every node (subgraphs and functions included) outside the default
    ONNX domain; empty for a graph that runtimes and TensorRT can run without plugins."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    found = []

    def visit(graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                found.append(f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    for fn in model.functions:
        found.append(f"{fn.domain}::{fn.name} (function)")
    return found


def run_onnxruntime(path: str | os.PathLike, inputs, providers=None) -> list:
    """Run the ONNX file on `inputs` (tensors, in the graph's input order) with onnxruntime (CPU by
    default); returns the outputs as torch tensors."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=providers or ["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    inputs = _as_tuple(inputs)
    if len(names) != len(inputs):
        raise ValueError(f"fgreid_ops.onnx: the graph has inputs {names}, got {len(inputs)} tensors")
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def flatten_outputs(out) -> list:
    """The tensors of a model output (tensor, tuple/list, dict in insertion order), in the order the
    ONNX exporter flattens them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def max_errors(expected, actual) -> list[tuple[float, float]]:
    """(max abs error, max rel error) per output pair; rel = |a − e| / max(|e|, 1e-6)."""
    errs = []
    for e, a in zip(expected, actual):
        e = e.detach().cpu().double()
        a = a.detach().cpu().double()
        if e.shape != a.shape:
            raise ValueError(f"fgreid_ops.onnx: output shapes differ: {list(e.shape)} vs {list(a.shape)}")
        diff = (a - e).abs()
        if diff.numel() == 0:
            errs.append((0.0, 0.0))
            continue
        errs.append((diff.max().item(), (diff / e.abs().clamp(min=1e-6)).max().item()))
    return errs
