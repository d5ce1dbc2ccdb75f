"""bench/run.py's contract without timing real ops: a failing provider fails the run after the
others finished (--keep-going opts out), --time-budget stops cleanly and says so, and the ONNX
cases leave no temporary folder behind."""

import glob
import json
import os
import sys
import tempfile
import time

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import common  # noqa: E402
import run  # noqa: E402


def _fake_cases(device, size, sleep=0.0):
    def setup(failing):
        def make(dev):
            x = torch.ones(8)

            def boom(t):
                raise RuntimeError("fgreid_ops.fake: expected nothing, got a test")

            def slow(t):
                time.sleep(sleep)
                return t + 1

            providers = {"eager": common.bound(slow, x), "fgreid": common.bound(torch.neg, x)}
            if failing:
                providers["fgreid-broken"] = common.bound(boom, x)
            return providers
        return make

    return [common.Case("fake", "x=[8]", "fwd", {"x": common.spec((8,))}, setup(failing=True), 32),
            common.Case("fake", "x=[8] second", "fwd", {"x": common.spec((8,))}, setup(failing=False), 32)]


@pytest.fixture
def fake_op(monkeypatch):
    monkeypatch.setattr(run, "available_ops", lambda: ["fake"])
    monkeypatch.setattr(run, "load_cases", lambda op, device, size: _fake_cases(device, size))
    monkeypatch.setattr(run.report, "plot", lambda data, path: None)


def test_a_failing_provider_fails_the_run_after_the_others(fake_op, tmp_path, capsys):
    assert run.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 provider(s) failed" in out and "fake x=[8] fwd [" in out and "fgreid-broken" in out
    assert "expected nothing, got a test" in out
    data = json.loads((tmp_path / "quick-cpu.json").read_text())
    ran = {(r["config"], r["provider"]) for r in data["results"]}
    assert ran == {("x=[8]", "eager"), ("x=[8]", "fgreid"), ("x=[8] second", "eager"), ("x=[8] second", "fgreid")}
    assert [f["provider"] for f in data["meta"]["failures"]] == ["fgreid-broken"]
    assert "failed" in (tmp_path / "quick-cpu.md").read_text()


def test_keep_going_exits_zero_but_still_records_the_failure(fake_op, tmp_path):
    assert run.main(["--quick", "--device", "cpu", "--keep-going", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quick-cpu.json").read_text())
    assert len(data["meta"]["failures"]) == 1


def test_a_failing_setup_fails_the_run(monkeypatch, tmp_path, capsys):
    def broken(device):
        raise ImportError("no module named onnxruntime")

    monkeypatch.setattr(run, "available_ops", lambda: ["fake"])
    monkeypatch.setattr(run, "load_cases", lambda op, device, size: [
        common.Case("fake", "x=[8]", "fwd", {"x": common.spec((8,))}, broken)])
    monkeypatch.setattr(run.report, "plot", lambda data, path: None)
    assert run.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert "setup: ImportError: no module named onnxruntime" in capsys.readouterr().out


def test_time_budget_stops_between_cases_and_records_what_ran(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run, "available_ops", lambda: ["fake"])
    monkeypatch.setattr(run, "load_cases", lambda op, device, size: _fake_cases(device, size, sleep=0.05) * 3)
    monkeypatch.setattr(run.report, "plot", lambda data, path: None)
    run.main(["--quick", "--device", "cpu", "--keep-going", "--time-budget", "0.01", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "quick-cpu.json").read_text())["meta"]
    assert meta["stopped_by_time_budget"] and meta["cases_planned"] == 6 and 1 <= meta["cases_run"] < 6
    assert "time budget of 0 s reached" in capsys.readouterr().out


def test_shared_machine_and_versions_are_recorded(fake_op, tmp_path):
    run.main(["--quick", "--device", "cpu", "--keep-going", "--shared-machine", "--threads", "1", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "quick-cpu.json").read_text())["meta"]
    assert meta["machine_shared"] is True and meta["threads"] == ["1"]
    assert meta["versions"]["torch"] == torch.__version__ and meta["cpu_count"] == os.cpu_count()
    assert meta["date"].endswith("+00:00") and meta["size"] == "quick"


def test_cpu_rows_give_percent_of_the_copy_bandwidth_of_their_thread_count(fake_op, monkeypatch, tmp_path):
    measured = {1: (4e9, 2e9), 2: (6e9, 3e9)}
    monkeypatch.setattr(run, "copy_bandwidth_cpu", lambda size: measured[torch.get_num_threads()])
    run.main(["--quick", "--device", "cpu", "--keep-going", "--threads", "1", "2", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "quick-cpu.json").read_text())
    assert data["meta"]["copy_bandwidth_gbps"] == {"1": 4.0, "2": 6.0}
    assert data["meta"]["fresh_copy_bandwidth_gbps"] == {"1": 2.0, "2": 3.0}
    for r in data["results"]:
        expected = 100 * 32 / (r["median_ms"] / 1e3) / measured[int(r["threads"])][0]
        assert r["pct_peak_bw"] == pytest.approx(expected)
    assert "% BW is that over the measured copy bandwidth" in (tmp_path / "quick-cpu.md").read_text()


def test_cpu_copy_bandwidth_is_measured():
    into_existing, into_fresh = common.copy_bandwidth_cpu("quick")
    assert 1e8 < into_existing < 1e13 and 1e8 < into_fresh < 1e13


def test_onnx_cases_leave_no_temporary_folder():
    pytest.importorskip("onnxruntime")
    import cases.onnx_models as onnx_models

    pattern = os.path.join(tempfile.gettempdir(), "fgreid-bench-onnx-*")
    before = set(glob.glob(pattern))
    case = onnx_models.cases("cpu", "quick")[0]
    providers = case.setup("cpu")
    assert set(glob.glob(pattern)) == before
    outputs = providers["fgreid-onnxruntime"]()  # the session still runs: it holds the model in memory
    assert outputs and all(torch.from_numpy(o).isfinite().all() for o in outputs)
