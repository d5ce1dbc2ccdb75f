"""Hostile inputs against every public function and every torch.ops.fgreid op (the table is
tests/fuzz_cases.py): each must raise an error naming the caller's argument, or return the
reference's result — never crash, hang or hand back uninitialized memory.

A crash must not take pytest down, so the cases run in subprocesses, one per batch (an op and
its backward), two at a time; a case that kills its subprocess is reported as crashed and the
batch goes on in a fresh one. Cases that still fail are strict xfails with their reason
(fuzz_cases.KNOWN_FAILURES: a fix makes them XPASS, then drop the entry)."""

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fuzz_cases

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 120
WORKERS = 2


def _run_batch(env_pairs, names):
    """{name: (passed, detail)} for the names of one batch, restarting after a crash."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))
    env["TRITON_INTERPRET"] = "1"  # the cases use CPU tensors, on a GPU machine too
    env.update(dict(env_pairs))
    results, todo = {}, list(names)
    while todo:
        proc = subprocess.run([sys.executable, str(HERE / "fuzz_cases.py")], input="\n".join(todo) + "\n", env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["name"]] = (msg["passed"], msg["detail"])
                started = None
        if started is None:
            missing = [n for n in todo if n not in results]
            for n in missing:  # the subprocess died before reaching them, outside any case
                results[n] = (False, f"subprocess exited with {proc.returncode} before the case: {proc.stderr[-2000:]}")
            break
        rc = proc.returncode
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        results[started] = (False, f"crashed the process ({how}): {proc.stderr[-1500:]}")
        todo = todo[todo.index(started) + 1:]
    return results


@pytest.fixture(scope="session")
def fuzz_results(request):
    """Runs, once, every batch that holds a selected case."""
    wanted = {item.callspec.params["name"] for item in request.session.items
              if item.originalname == "test_fuzz" and hasattr(item, "callspec")}
    jobs = [(env, [n for n in names if n in wanted]) for env, names in fuzz_cases.batches().values()]
    jobs = sorted((j for j in jobs if j[1]), key=lambda j: -len(j[1]))
    results = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for part in pool.map(lambda job: _run_batch(*job), jobs):
            results.update(part)
    return results


def _params():
    for name in fuzz_cases.CASES:
        marks = ()
        if name in fuzz_cases.KNOWN_FAILURES:
            marks = pytest.mark.xfail(strict=True, reason=fuzz_cases.KNOWN_FAILURES[name])
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_fuzz(name, fuzz_results):
    passed, detail = fuzz_results[name]
    assert passed, detail


def test_every_target_has_30_cases():
    counts = {}
    for name in fuzz_cases.CASES:
        target = name.split("/")[0]
        counts[target] = counts.get(target, 0) + 1
    assert len(counts) >= 36 and min(counts.values()) >= 30, {t: n for t, n in counts.items() if n < 30}


def test_verdict_rejects_an_error_that_does_not_name_the_argument():
    case = fuzz_cases.Case("x/y", lambda: (_ for _ in ()).throw(ValueError("fgreid_ops.gem: bad input")), names=("p",))
    fuzz_cases.CASES["x/y"] = case
    try:
        passed, _ = fuzz_cases.run_case("x/y")
    finally:
        del fuzz_cases.CASES["x/y"]
    assert not passed
