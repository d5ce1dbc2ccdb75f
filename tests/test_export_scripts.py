"""deploy/ scripts: --help, argument errors, the one-line message without TensorRT, and the export
script end to end (checkpoint loading, a user model by import path, the failure threshold)."""

import os
import subprocess
import sys

import pytest
import torch

import fgreid_ops
from onnx_helpers import ROOT, cache_torchlib_registry

from deploy import build_engine, export_onnx, run_engine

SCRIPTS = [os.path.join(ROOT, "deploy", f"{name}.py") for name in ("export_onnx", "build_engine", "run_engine")]


def _has_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def run_script(path, *args):
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_help(path):
    result = run_script(path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    for flag in {"export_onnx.py": ["--model", "--checkpoint", "--input-size", "--static-batch", "--opset",
                                    "--precision", "--output"],
                 "build_engine.py": ["--min-batch", "--opt-batch", "--max-batch", "--fp16", "--timing-cache",
                                     "--workspace-mib"],
                 "run_engine.py": ["--model", "--batch", "--iters"]}[os.path.basename(path)]:
        assert flag in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet", "-o", "x.onnx"], "expected one of cuhs, fg_video or MODULE:ATTR"),
    (["--model", "cuhs"], "the following arguments are required: --output"),
    (["--model", "cuhs", "-o", "x.onnx", "--input-size", "384"], "expected HxW"),
    (["--model", "cuhs", "-o", "x.onnx", "--model-kwargs", "[1]"], "expected a JSON object"),
    (["--model", "cuhs", "-o", "x.onnx", "--batch", "0"], "expected a positive integer"),
    (["--model", "cuhs", "-o", "x.onnx", "--precision", "int8"], "invalid choice"),
])
def test_export_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        export_onnx.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--opset", "17"], "--opset must be >= 18"),
    (["--batch", "1"], "needs --batch >= 2"),
    (["--check-batches", "1,x"], "--check-batches expects positive integers"),
    (["--static-batch", "--check-batches", "3"], "runs only batch 2"),
])
def test_export_checks_before_building_anything(argv, message):
    with pytest.raises(SystemExit, match=message):
        export_onnx.main(["--model", "cuhs", "-o", "never.onnx", *argv])
    assert not os.path.exists("never.onnx")


def test_user_module_that_cannot_be_imported():
    with pytest.raises(SystemExit, match="cannot import module 'no_such_pkg.nets'"):
        export_onnx.main(["--model", "no_such_pkg.nets:build", "-o", "never.onnx"])
    with pytest.raises(SystemExit, match="has no attribute 'Nope'"):
        export_onnx.main(["--model", "fgreid_ops.nn:Nope", "-o", "never.onnx"])


def test_engine_argument_errors(tmp_path, capsys):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    with pytest.raises(SystemExit, match="--min-batch <= --opt-batch <= --max-batch"):
        build_engine.main([str(onnx_file), "-o", "m.engine", "--min-batch", "8", "--max-batch", "4"])
    with pytest.raises(SystemExit, match="no such ONNX file"):
        build_engine.main([str(tmp_path / "missing.onnx"), "-o", "m.engine"])
    with pytest.raises(SystemExit, match="no such engine file"):
        run_engine.main([str(tmp_path / "missing.engine")])
    with pytest.raises(SystemExit) as exc:
        build_engine.main([str(onnx_file)])
    assert exc.value.code == 2 and "--output" in capsys.readouterr().err


@pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is installed here")
@pytest.mark.parametrize("script", ["build_engine", "run_engine"])
def test_missing_tensorrt_is_one_line(script, tmp_path):
    artifact = tmp_path / ("m.onnx" if script == "build_engine" else "m.engine")
    artifact.write_bytes(b"")
    args = [str(artifact)] + (["-o", str(tmp_path / "m.engine")] if script == "build_engine" else [])
    result = run_script(os.path.join(ROOT, "deploy", f"{script}.py"), *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}.py: TensorRT is not installed")
    assert result.stdout == ""


def test_missing_tensorrt_in_process(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"")
    with pytest.raises(SystemExit, match="run_engine.py: TensorRT is not installed"):
        run_engine.main([str(engine), "--batch", "4"])


# --- end to end -------------------------------------------------------------------------------

pytest.importorskip("onnxruntime")
cache_torchlib_registry()


def test_export_user_model_with_checkpoint(tmp_path, capsys):
    # a DataParallel-style checkpoint of GeM with p = 4: the export must use the loaded p
    ckpt = tmp_path / "gem.pth"
    torch.save({"state_dict": {"module.p": torch.tensor([4.0])}}, ckpt)
    out = tmp_path / "gem.onnx"
    code = export_onnx.main(["--model", "fgreid_ops.nn:GeM", "--checkpoint", str(ckpt), "--input-size", "6x4",
                             "-o", str(out), "--check-batches", "1,3", "--max-abs-error", "1e-5"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "onnx.checker: ok" in text and "batch 3 features [3, 3]: max abs error" in text
    x = torch.rand(5, 3, 6, 4)
    from fgreid_ops.onnx import run_onnxruntime

    (actual,) = run_onnxruntime(out, x)
    torch.testing.assert_close(actual, fgreid_ops.gem(x, torch.tensor([4.0])), rtol=1e-5, atol=1e-6)


def test_export_user_model_with_example_inputs_and_threshold(tmp_path, capsys):
    # onnx_helpers.TwoInputNet declares two inputs; a negative threshold must fail the run
    code = export_onnx.main(["--model", "onnx_helpers:TwoInputNet", "--model-kwargs", '{"channels": 5}',
                             "-o", str(tmp_path / "two.onnx"), "--max-abs-error", "-1"])
    text = capsys.readouterr().out
    assert code == 1
    assert "batch 1 features [1, 5]" in text and "FAIL: max abs error" in text


# --- build_engine against a stand-in of the tensorrt API --------------------------------------

class FakeTensorRT:
    """The slice of the tensorrt Python API that build_engine.py uses, recording the calls. The
    "network" is read from the ONNX file: one layer per node, named like TensorRT names them."""

    float32, float16, int64 = "float32", "float16", "int64"
    __version__ = "10.fake"

    class Logger:
        INFO, WARNING = "info", "warning"

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH = 0

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16, PREFER_PRECISION_CONSTRAINTS = "fp16", "prefer_precision_constraints"

    def __init__(self):
        self.calls = {"profile": [], "flags": [], "layers": {}, "cache_in": None}
        fake = self

        class Tensor:
            def __init__(self, name, shape, dtype):
                self.name, self.shape, self.dtype = name, shape, dtype

        class Layer:
            def __init__(self, name, dtype):
                self.name, self.num_outputs, self._out = name, 1, Tensor(name + "_out", [], dtype)
                self.precision = None

            def get_output(self, j):
                return self._out

            def set_output_type(self, j, dtype):
                fake.calls["layers"][self.name] = dtype

        class Network:
            inputs, layers = [], []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, i):
                return self.layers[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                import onnx

                graph = onnx.load(path).graph
                self.network.inputs = [
                    Tensor(v.name, [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim],
                           fake.float32) for v in graph.input]
                self.network.layers = [Layer(n.name, fake.int64 if n.op_type == "Shape" else fake.float32)
                                       for n in graph.node]
                return True

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls["profile"].append((name, tuple(lo), tuple(opt), tuple(hi)))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"cache:" + self.data

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls["workspace"] = size

            def add_optimization_profile(self, profile):
                pass

            def set_flag(self, flag):
                fake.calls["flags"].append(flag)

            def create_timing_cache(self, data):
                fake.calls["cache_in"] = data
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["x"], ["s"], name="node_Shape_0"),
             helper.make_node("Pow", ["x", "p"], ["y"], name="node_Pow_1"),
             helper.make_node("ReduceMean", ["y"], ["z"], name="node_ReduceMean_2", keepdims=0, axes=[2, 3]),
             helper.make_node("Relu", ["z"], ["out"], name="node_Relu_3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])],
                              initializer=[helper.make_tensor("p", TensorProto.FLOAT, [1], [3.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_build_engine_drives_the_tensorrt_api(monkeypatch, tmp_path, capsys):
    pytest.importorskip("onnx")
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_file, engine, cache = tmp_path / "m.onnx", tmp_path / "m.engine", tmp_path / "trt.cache"
    _tiny_onnx(onnx_file)
    argv = [str(onnx_file), "-o", str(engine), "--min-batch", "1", "--opt-batch", "4", "--max-batch", "8",
            "--fp16", "--workspace-mib", "64", "--timing-cache", str(cache)]
    assert build_engine.main(argv) == 0
    assert fake.calls["profile"] == [("x", (1, 3, 8, 4), (4, 3, 8, 4), (8, 3, 8, 4))]
    assert fake.calls["workspace"] == 64 << 20
    assert fake.calls["flags"] == ["fp16", "prefer_precision_constraints"]
    # GeM's Pow and ReduceMean stay float32; the integer Shape output and other layers are untouched
    assert fake.calls["layers"] == {"node_Pow_1": "float32", "node_ReduceMean_2": "float32"}
    assert engine.read_bytes() == b"engine"
    assert fake.calls["cache_in"] == b"" and cache.read_bytes() == b"cache:"
    assert "wrote" in capsys.readouterr().out
    # a second build starts from the saved timing cache; without --fp16 no flag is set
    fake.calls["flags"].clear()
    assert build_engine.main(argv[:-5] + ["--timing-cache", str(cache)]) == 0
    assert fake.calls["cache_in"] == b"cache:" and fake.calls["flags"] == []
