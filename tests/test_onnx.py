"""ONNX export (SPEC §8): every op's lowering against the op itself in onnxruntime, at batch sizes
other than the export batch; only standard-domain nodes; float16 graphs; both models."""

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import fgreid_ops  # noqa: E402
import python_models.cuhs  # noqa: E402,F401  (the models the export parity cases build)
import python_models.fg_video  # noqa: E402,F401
from fgreid_ops import _backend, _registry  # noqa: E402
from fgreid_ops import onnx as fonnx  # noqa: E402

from onnx_helpers import (  # noqa: E402
    TINY_CUHS, TINY_CUHS_SIZE, TINY_FG_VIDEO, TINY_FG_VIDEO_FRAMES, TINY_FG_VIDEO_SIZE, cache_torchlib_registry,
)

cache_torchlib_registry()

EXPORT_BATCH = 2
CHECK_BATCHES = (1, 3, 5)
TRITON = _backend.triton_available("cpu")
# Ops with no inference use (their description has no lowering): training and evaluation.
TRAINING_OR_EVAL_ONLY = tuple(op.name for op in _registry.all_ops() if op.onnx is None)
STANDARD_OPS = {
    "Cast", "CastLike", "Concat", "Constant", "Conv", "Div", "Expand", "Identity", "Max", "Min", "Mul", "Pow",
    "ReduceMean", "ReduceSum", "Reshape", "Resize", "ScatterElements", "Shape", "Slice", "Sub", "TopK",
}
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
FP16_TOL = dict(rtol=4e-3, atol=4e-3)


class AllOps(nn.Module):
    """Every op and variant once, through the public functions the models call. Inputs:
    x [N, 6, 8, 4], seg [N, 5, 3, 6, 5] (a segment of T=5 frames), mask [N, 1, 4, 2],
    mask_c [N, 6, 3, 3] (per-channel, non-integer scale), f1 [N, 6, 8, 4]."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.tensor([3.0]))
        self.p_c = nn.Parameter(torch.linspace(1.5, 4.0, 6))

    def forward(self, x, seg, mask, mask_c, f1):
        out = {"gem": fgreid_ops.gem(x, self.p), "gem_per_channel": fgreid_ops.gem(x, self.p_c)}
        if TRITON:
            out["gem_triton"] = fgreid_ops.gem(x, self.p, backend="triton")
        out["off"] = fgreid_ops.off(x[:, :3], x[:, 3:])  # channel-sliced views
        out["off_segment"] = fgreid_ops.off(seg, stride=2)
        mum = fgreid_ops.mask_upsample_mul
        out["mum_bilinear"] = mum(x, mask, mode="bilinear")
        out["mum_nearest"] = mum(x, mask, mode="nearest")
        out["mum_bilinear_pool"] = mum(x, mask, mode="bilinear", pool=True)
        out["mum_nearest_pool"] = mum(x, mask, mode="nearest", pool=True)
        out["mum_per_channel"] = mum(x, mask_c, mode="bilinear")
        # downsampling to 1 row (4 -> 1) while upsampling columns (2 -> 3)
        out["mum_down"] = mum(x[:, :, :1, :3], mask, mode="bilinear")
        out["mum_down_pool"] = mum(x[:, :, :1, :3], mask, mode="bilinear", pool=True)
        out["mum_down_nearest"] = mum(x[:, :, :1, :3], mask, mode="nearest")
        for k in (0, 5, 100):  # identity, the FG-reID default, more than H*W = 32
            out[f"topk{k}"], out[f"topk{k}_mask"] = fgreid_ops.topk_mask(f1, x, k)
        if TRITON:
            out["topk_triton"], out["topk_triton_mask"] = fgreid_ops.topk_mask(f1, x, 5, backend="triton")
        return out


def all_ops_inputs(batch, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed * 100 + batch)
    x = torch.rand(batch, 6, 8, 4, generator=g) * 2
    seg = torch.randn(batch, 5, 3, 6, 5, generator=g)
    mask = torch.rand(batch, 1, 4, 2, generator=g)
    mask_c = torch.rand(batch, 6, 3, 3, generator=g)
    f1 = torch.randn(batch, 6, 8, 4, generator=g)
    return tuple(t.to(dtype) for t in (x, seg, mask, mask_c, f1))


def output_groups():
    names = ["gem", "gem_per_channel"] + (["gem_triton"] if TRITON else [])
    names += ["off", "off_segment"]
    names += ["mum_bilinear", "mum_nearest", "mum_bilinear_pool", "mum_nearest_pool", "mum_per_channel",
              "mum_down", "mum_down_pool", "mum_down_nearest"]
    names += [f"topk{k}{s}" for k in (0, 5, 100) for s in ("", "_mask")]
    names += ["topk_triton", "topk_triton_mask"] if TRITON else []
    return names


def exported(tmp_path_factory, dtype):
    model = AllOps().to(dtype)
    names = output_groups()
    path = tmp_path_factory.mktemp("onnx") / f"all_ops_{str(dtype)[6:]}.onnx"
    fonnx.export_onnx(AllOps(), all_ops_inputs(EXPORT_BATCH), path, fp16=dtype == torch.float16,
                      output_names=names)
    results = {}
    for batch in CHECK_BATCHES:
        inputs = all_ops_inputs(batch, dtype)
        with torch.no_grad():
            expected = model(*inputs)
        actual = dict(zip(names, fonnx.run_onnxruntime(path, inputs)))
        results[batch] = (expected, actual)
    return path, results


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    return exported(tmp_path_factory, torch.float32)


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    return exported(tmp_path_factory, torch.float16)


# --- the table --------------------------------------------------------------------------------

def _fgreid_schemas():
    return {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fgreid::")}


def test_translation_table_has_every_registered_inference_op():
    schemas = _fgreid_schemas()
    table = {op.name().split("::", 1)[1].split(".")[0] for op in fonnx.translation_table()}
    assert "gem" in table and "gem_triton" in table
    forward_ops = {s for s in schemas if not s.endswith("_backward") and not s.startswith(TRAINING_OR_EVAL_ONLY)}
    missing = forward_ops - table
    assert not missing, f"fgreid ops without an ONNX lowering: {sorted(missing)}"
    assert table <= schemas
    assert {"batch_hard_triplet_mine", "evaluate", "evaluate_count"} <= set(TRAINING_OR_EVAL_ONLY)


def test_translation_table_raises_for_a_lowering_without_its_schema(monkeypatch):
    # a stale or partial build must not export silently without the lowering
    monkeypatch.setattr(fonnx, "lowerings", lambda: {"gem": fonnx.gem_onnx, "no_such_op": fonnx.gem_onnx})
    with pytest.raises(RuntimeError, match="fgreid::no_such_op has a lowering but is not registered"):
        fonnx.translation_table()


# --- per-op parity in onnxruntime -------------------------------------------------------------

@pytest.mark.parametrize("name", output_groups())
def test_op_parity_fp32(fp32_export, name):
    _, results = fp32_export
    for batch, (expected, actual) in results.items():
        assert actual[name].shape == expected[name].shape, (batch, name)
        torch.testing.assert_close(actual[name], expected[name], **FP32_TOL,
                                   msg=lambda m: f"{name} at batch {batch}: {m}")


@pytest.mark.parametrize("name", output_groups())
def test_op_parity_fp16(fp16_export, name):
    _, results = fp16_export
    for batch, (expected, actual) in results.items():
        assert actual[name].dtype == torch.float16
        torch.testing.assert_close(actual[name], expected[name], **FP16_TOL,
                                   msg=lambda m: f"{name} at batch {batch}: {m}")


def test_graph_is_standard_onnx_with_dynamic_batch(fp32_export):
    path, _ = fp32_export
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert fonnx.custom_domain_nodes(model) == []
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert {n.op_type for n in model.graph.node} <= STANDARD_OPS
    for value in model.graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param, f"input {value.name} has a static batch"
    types = {n.op_type for n in model.graph.node}
    assert {"TopK", "ScatterElements", "ReduceSum"} <= types
    assert "Conv" in types
    assert "Resize" in types


def test_custom_domain_nodes_are_found():
    node = onnx.helper.make_node("Gem", ["x"], ["y"], domain="fgreid")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    assert fonnx.custom_domain_nodes(onnx.helper.make_model(graph)) == ["fgreid::Gem"]


def test_topk_ties_pick_the_lower_index_in_onnxruntime(fp32_export):
    # A = Σ_c f1 is constant: every position ties, the op and ONNX TopK both take the first k.
    path, _ = fp32_export
    inputs = list(all_ops_inputs(3))
    inputs[4] = torch.ones(3, 6, 8, 4)
    actual = dict(zip(output_groups(), fonnx.run_onnxruntime(path, inputs)))
    _, expected_mask = fgreid_ops.topk_mask(inputs[4], inputs[0], 5)
    want = torch.ones(3, 1, 8 * 4)
    want[:, :, :5] = 0
    torch.testing.assert_close(expected_mask, want.reshape(3, 1, 8, 4))
    torch.testing.assert_close(actual["topk5_mask"], expected_mask)


# --- export_onnx arguments --------------------------------------------------------------------

def test_export_onnx_rejects_bad_arguments(tmp_path):
    model, x = fgreid_ops.nn.GeM(), torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="opset >= 18"):
        fonnx.export_onnx(model, (x,), tmp_path / "a.onnx", opset=17)
    with pytest.raises(ValueError, match="batch dim of size >= 2"):
        fonnx.export_onnx(model, (x[:1],), tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="tensor or a non-empty tuple"):
        fonnx.export_onnx(model, (3.0,), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_export_onnx_static_batch_and_training_flag_restored(tmp_path):
    model = fgreid_ops.nn.GeM(p=2.5, num_channels=3).train()
    x = torch.rand(1, 3, 5, 4)
    path = fonnx.export_onnx(model, x, tmp_path / "gem.onnx", dynamic_batch=False)
    assert model.training
    graph_input = onnx.load(path).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_value == 1
    (actual,) = fonnx.run_onnxruntime(path, x)
    torch.testing.assert_close(actual, model(x).detach(), **FP32_TOL)


# --- models -----------------------------------------------------------------------------------

def _model_parity(spec, path, batches=(1, 3)):
    # optimize=False: the same values, a third less export time (CI has 2 cores)
    with torch.no_grad():
        names = None
        example = spec.make_inputs(EXPORT_BATCH)
        out = spec.model(*example)
        if isinstance(out, dict):
            names = list(out)
    fonnx.export_onnx(spec.model, example, path, input_names=spec.input_names, output_names=names, optimize=False)
    assert fonnx.custom_domain_nodes(path) == []
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == spec.input_names
    if names:
        assert [o.name for o in graph.output] == names
    for batch in batches:
        torch.manual_seed(batch)
        inputs = spec.make_inputs(batch)
        with torch.no_grad():
            expected = fonnx.flatten_outputs(spec.model(*inputs))
        actual = fonnx.run_onnxruntime(path, inputs)
        assert len(actual) == len(expected)
        for e, a in zip(expected, actual):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"batch {batch}: {m}")


def _spec(name, kwargs, size, frames=10):
    import argparse

    from deploy import _common

    args = argparse.Namespace(model=name, model_kwargs=dict(kwargs), input_size=size, frames=frames,
                              checkpoint=None, no_strict=False)
    return _common.build_model(args)


def test_cuhs_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    _model_parity(_spec("cuhs", TINY_CUHS, TINY_CUHS_SIZE), tmp_path / "cuhs.onnx")


def test_fg_video_exports_with_parity(tmp_path):
    # all four streams: frames [N, T, 3, H, W] and keypoints [N, T, 16, 2] in, four features out
    torch.manual_seed(0)
    spec = _spec("fg_video", TINY_FG_VIDEO, TINY_FG_VIDEO_SIZE, TINY_FG_VIDEO_FRAMES)
    assert spec.input_names == ["frames", "keypoints"]
    _model_parity(spec, tmp_path / "fg_video.onnx")
