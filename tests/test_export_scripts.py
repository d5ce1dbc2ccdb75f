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
