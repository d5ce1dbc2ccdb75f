"""The commands a user types, run from the repository root in a subprocess as the README shows them:
each CLI's --help (with an example), a tiny real run of each, and the one message of a source
tree without a built _C.

The console scripts (fgreid-train, ...) are run when pip installed the project into this
environment (CI, the README's install); in a development environment without an install, their
entry-point functions are run the way the scripts call them, with the repository root on
PYTHONPATH (what the editable install's path hook provides)."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import fgreid_ops
from python_models import visualize
from reid_fixtures import make_market

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = {"fgreid-train": "fgreid_ops._cli:train", "fgreid-evaluate": "fgreid_ops._cli:evaluate",
                "fgreid-export": "fgreid_ops._cli:export", "fgreid-bench": "fgreid_ops._cli:bench"}
PYTHON_FORMS = {"fgreid-train": ["-m", "python_models.train"], "fgreid-evaluate": ["-m", "python_models.evaluate"],
                "fgreid-export": ["deploy/export_onnx.py"], "fgreid-bench": ["bench/run.py"]}
TIMEOUT = 600


def _installed() -> bool:
    try:
        importlib.metadata.distribution("fgreid_ops")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def console(name: str) -> list[str]:
    """The installed console script, or (no install) its entry point called as the script does."""
    script = shutil.which(name, path=os.path.dirname(sys.executable))
    if script is not None:
        return [script]
    if _installed():
        pytest.fail(f"fgreid_ops is installed but its console script {name} is not")
    module, func = ENTRY_POINTS[name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def run_unchecked(cmd: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not _installed():  # what the editable install's path hook does for `python bench/run.py`
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = run_unchecked(cmd)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "compiled extension" not in result.stderr, result.stderr  # the kernels loaded
    return result


def test_entry_points_are_declared():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"] == ENTRY_POINTS


@pytest.mark.parametrize("form", ["console", "python"])
@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_has_an_example(name, form):
    cmd = console(name) if form == "console" else [sys.executable, *PYTHON_FORMS[name]]
    out = run([*cmd, "--help"]).stdout
    assert out.startswith("usage: ")
    # an indented example command line with arguments
    assert re.search(r"^\s+(fgreid-\w+|python\s+\S+)\s+(--|\S+\.py\b)", out, re.M), out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch CUHS run (2 steps each, evaluated after each epoch) on a tiny Market-1501 layout."""
    tmp = tmp_path_factory.mktemp("cli")
    root = make_market(str(tmp / "market"))
    out = str(tmp / "run")
    run([*console("fgreid-train"), "--dataset", "market1501", "--root", root, "--output", out, "--height", "64",
         "--width", "32", "--feat-dim", "16", "--p", "4", "--k", "2", "--epochs", "2", "--hsl-epochs", "1",
         "--max-steps", "2", "--eval-every", "1", "--save-every", "0", "--backbone-width", "8",
         "--backbone-layers", "1", "1", "2", "1", "--workers", "0", "--device", "cpu"])
    return tmp, out


def test_train_writes_result_and_curves(trained):
    _, out = trained
    result = json.load(open(os.path.join(out, "result.json")))
    assert len(result["history"]["hsl"]) == 2 and len(result["history"]["main"]) == 4
    assert [set(t) for t in result["loss_terms"]["main"]] == [{"ce", "triplet"}] * 4
    assert [e["epoch"] for e in result["evaluations"]] == [1, 2]
    assert result["evaluations"][-1]["metrics"] == result["metrics"]
    curves = Image.open(os.path.join(out, "curves.png"))
    assert curves.size == (1200, 450)


def _pid(path: str) -> int:
    return int(os.path.basename(path).split("_")[0])


def test_evaluate_writes_ranked_strips(trained):
    tmp, out = trained
    ranks = str(tmp / "ranks")
    stdout = run([*console("fgreid-evaluate"), "--checkpoint", os.path.join(out, "last.pt"), "--workers", "0",
                  "--device", "cpu", "--json", str(tmp / "m.json"), "--visualize-ranks", ranks,
                  "--num-queries", "3"]).stdout
    assert "market1501: mAP=" in stdout
    index = json.load(open(os.path.join(ranks, "ranks.json")))
    assert len(index) == 3 and sorted(os.listdir(ranks)) == sorted([e["strip"] for e in index] + ["ranks.json"])
    for e in index:
        assert len(e["gallery"]) == 10 and e["distance"] == sorted(e["distance"])
        assert e["match"] == [_pid(g) == e["pid"] for g in e["gallery"]]
        strip = np.asarray(Image.open(os.path.join(ranks, e["strip"])).convert("RGB"))
        assert strip.shape == (256, visualize.strip_width(10, 128), 3)
        assert tuple(strip[1, 1]) == visualize.QUERY
        colours = [tuple(strip[1, visualize.cell_left(r, 128) + 1]) for r in range(10)]
        assert colours == [visualize.MATCH if m else visualize.NON_MATCH for m in e["match"]]


def test_evaluate_reranks(trained):
    """--rerank: the metrics of the re-ranked streamed evaluation (not the plain one), and strips in
    the re-ranked order; a bad value is a usage error before any feature is extracted."""
    from python_models import evaluate
    from python_models.datasets import load_dataset

    tmp, out = trained
    ranks = str(tmp / "ranks-rerank")
    run([*console("fgreid-evaluate"), "--checkpoint", os.path.join(out, "last.pt"), "--workers", "0",
         "--device", "cpu", "--rerank", "--k1", "5", "--k2", "3", "--lambda-value", "0.2",
         "--json", str(tmp / "reranked.json"), "--visualize-ranks", ranks, "--num-queries", "3"])
    model, ckpt = evaluate.load_checkpoint(os.path.join(out, "last.pt"))
    data = load_dataset(ckpt["config"]["dataset"], ckpt["config"]["root"])
    params = {"k1": 5, "k2": 3, "lambda_value": 0.2}
    feats = {}
    want = evaluate.evaluate_model(model, data, ckpt["config"], "cpu", workers=0, rerank=params,
                                   on_features=lambda q, g: feats.update(q=q, g=g))
    plain = evaluate.evaluate_model(model, data, ckpt["config"], "cpu", workers=0)
    assert json.load(open(tmp / "reranked.json")) == json.loads(json.dumps(want)) != json.loads(json.dumps(plain))
    distmat = fgreid_ops.rerank(feats["q"], feats["g"], **params)
    for e, row in zip(json.load(open(os.path.join(ranks, "ranks.json"))), distmat):
        assert e["distance"] == pytest.approx(row.sort().values[:10].tolist())
    bad = run_unchecked([*console("fgreid-evaluate"), "--checkpoint", os.path.join(out, "last.pt"), "--rerank",
                         "--k1", "0"])
    assert bad.returncode == 2 and "--rerank: fgreid_ops.evaluate_features: expected k1" in bad.stderr, bad.stderr


def test_export_runs(tmp_path):
    stdout = run([*console("fgreid-export"), "--model", "fgreid_ops.nn:GeM", "--input-size", "6x4",
                  "-o", str(tmp_path / "gem.onnx"), "--max-abs-error", "1e-5"]).stdout
    assert "onnx.checker: ok" in stdout and os.path.isfile(tmp_path / "gem.onnx")


def test_bench_runs(tmp_path):
    run([*console("fgreid-bench"), "--quick", "--ops", "evaluate", "--device", "cpu", "--out", str(tmp_path)])
    (result,) = tmp_path.glob("*.json")  # the name says the size and the ops (bench/run.py --name)
    rows = json.load(open(result))["results"]
    assert {r["op"] for r in rows} == {"evaluate"} and any(r["provider"].startswith("fgreid") for r in rows)


# ---------------------------------------------------------------------------- no compiled _C

CHECK_MISSING = textwrap.dedent("""
    import sys
    import warnings
    # an editable install's path hook would map fgreid_ops._C to the installed tree's library
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fgreid_ops
    import torch
    print("WARNINGS", len(caught))
    print("WARNING", caught[0].message)
    try:
        fgreid_ops.gem(torch.rand(1, 2, 3, 3), 3.0)
    except RuntimeError as exc:
        print("ERROR", exc)
    print("REFERENCE", tuple(fgreid_ops.gem(torch.rand(1, 2, 3, 3), 3.0, backend="reference").shape))
""")


@pytest.mark.parametrize("layout", ["source tree", "bare package"])
def test_missing_extension_is_one_message(tmp_path, layout):
    shutil.copytree(os.path.join(ROOT, "fgreid_ops"), tmp_path / "fgreid_ops",
                    ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    if layout == "source tree":
        (tmp_path / "setup.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", CHECK_MISSING], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["WARNINGS"] == "1"
    warning, error = lines["WARNING"], lines["ERROR"]
    assert "circular import" not in warning + error
    assert "pip install --no-build-isolation -e ." in warning
    if layout == "source tree":
        assert f"the compiled extension is not built: {tmp_path / 'fgreid_ops'} is the source tree" in warning
        assert f"run in {tmp_path}" in warning
    else:
        assert f"fgreid_ops._C is missing from {tmp_path / 'fgreid_ops'}" in warning
    reason = warning.removeprefix("fgreid_ops: ").split(". Until then")[0]
    assert error.startswith(f"fgreid_ops.gem: {reason}, or select the reference backend")
    assert lines["REFERENCE"] == "(1, 2)"
