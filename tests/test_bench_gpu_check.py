"""bench/gpu_check.py without a GPU: its commands, the sanitizer verdicts, the sanitizer driver's
cases on the CPU, the cuda-marker plugin, and the rendering of a CUDA results file (the whole
--dry-run runs in CI: .ci/run)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import gpu_check  # noqa: E402
import report  # noqa: E402
import sanitize_cases  # noqa: E402


def test_commands_target_the_local_arch_with_every_core_and_select_cuda_tests():
    cmds = gpu_check.commands("9.0", 16, 150)
    argv, env = cmds["build"]
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["MAX_JOBS"] == "16" and argv[1:] == [
        "setup.py", "-q", "build_ext", "--inplace"]
    argv, env = cmds["pytest"]
    assert argv[argv.index("tests") + 1:][:2] == ["-m", "cuda"] and "cuda_marker_check" in argv and BENCH in env["PYTHONPATH"]
    for tool in ("memcheck", "racecheck"):
        argv, env = cmds[tool]
        assert argv[argv.index("--tool") + 1] == tool and argv[-1].endswith("sanitize_cases.py")
        assert env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    argv, _ = cmds["rerank"]
    assert argv[1].endswith("rerank.py") and argv[argv.index("--device") + 1] == "cuda"
    assert "fgreid-stages" in argv[argv.index("--providers") + 1]
    argv, _ = cmds["bench"]
    assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--time-budget") + 1] == "150"


@pytest.mark.parametrize("tool,clean", [
    ("memcheck", "========= ERROR SUMMARY: 0 errors"),
    ("racecheck", "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"),
])
def test_sanitizer_verdict_fails_on_any_report(tool, clean):
    assert gpu_check.sanitizer_verdict(tool, 0, clean) is None
    assert gpu_check.sanitizer_verdict(tool, 1, clean) is not None
    assert gpu_check.sanitizer_verdict(tool, 0, clean.replace("0 errors", "3 errors")) is not None
    assert gpu_check.sanitizer_verdict(tool, 0, "") is not None
    if tool == "racecheck":
        assert gpu_check.sanitizer_verdict(tool, 0, clean.replace("0 warnings", "1 warnings")) is not None


@pytest.mark.parametrize("name,backend,build", sanitize_cases.CASES, ids=[f"{n}-{b}" for n, b, _ in sanitize_cases.CASES])
def test_sanitizer_cases_build_and_run_on_cpu(name, backend, build):
    assert sanitize_cases.run_case(build, backend, "cpu") is not None


def test_sanitizer_cases_cover_every_cuda_source():
    covered = {name.split()[0] for name, backend, _ in sanitize_cases.CASES if backend == "cuda"}
    sources = {f[:-3] for f in os.listdir(os.path.join(ROOT, "csrc", "cuda")) if f.endswith(".cu")}
    assert sources <= covered, sources - covered


def test_marker_plugin_rejects_an_unmarked_gpu_test(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.skipif(True, reason='needs a CUDA device')\ndef test_unmarked():\n    pass\n\n"
        "@pytest.mark.cuda\n@pytest.mark.skipif(True, reason='needs a CUDA device')\ndef test_marked():\n    pass\n\n"
        "@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.cuda)])\n"
        "def test_param(device):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: gpu\n")
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "cuda_marker_check", str(tmp_path)]
    proc = subprocess.run(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": BENCH}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "test_x.py::test_unmarked" in proc.stdout + proc.stderr
    assert "test_marked" not in proc.stderr
    (tmp_path / "test_x.py").write_text("import pytest\n\n@pytest.mark.cuda\ndef test_marked():\n    pass\n")
    proc = subprocess.run(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": BENCH}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "1 test collected" in proc.stdout, proc.stdout + proc.stderr


def test_cuda_results_render_with_a_roofline_panel(tmp_path):
    data = gpu_check.fake_cuda_results(None)
    path = tmp_path / "fake-gpu.json"
    path.write_text(json.dumps(data))
    assert "% BW" in report.markdown(data)
    lines = report.summary(data).splitlines()
    assert any(line.startswith("gem [fgreid]") and "% BW" in line and "× compile" in line for line in lines)
    png = report.plot(data, str(tmp_path / "fake-gpu.png"))
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[1] <= 2000


def test_main_runs_every_step_in_order_and_fails_on_one_failure(monkeypatch, capsys):
    import torch

    calls = []

    def fake_step(name, argv, env, timeout, echo=True):
        calls.append(name)
        return 1.0, ("2 errors" if name == "memcheck" else None), f"=== {name}\n"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "gpu_facts", lambda: dict(name="NVIDIA H200", arch="9.0"))
    monkeypatch.setattr(gpu_check, "run_step", fake_step)
    assert gpu_check.main([]) == 1
    assert calls[0] == "build" and calls[-2:] == ["rerank", "bench"]
    assert set(calls) == {"build", "pytest", "memcheck", "racecheck", "rerank", "bench"}
    out = capsys.readouterr().out
    assert "memcheck: 2 errors" in out and "seconds per step: build 1" in out

    calls.clear()
    monkeypatch.setattr(gpu_check, "run_step", lambda name, *a, **k: (calls.append(name), (1.0, "exit status 1", ""))[1])
    assert gpu_check.main([]) == 1
    assert calls == ["build"]  # nothing runs on a failed build
