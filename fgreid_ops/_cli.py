"""The console commands pip installs (pyproject.toml [project.scripts]). Each runs the same code as
its `python ...` form from the repository root:

    fgreid-train     python -m python_models.train
    fgreid-evaluate  python -m python_models.evaluate
    fgreid-export    python deploy/export_onnx.py
    fgreid-bench     python bench/run.py

Nothing in fgreid_ops imports this module: the library does not depend on the models or the bench."""

import importlib.util
import os
import runpy
import sys


def train() -> int:
    from python_models import train as command

    command.main()
    return 0


def evaluate() -> int:
    from python_models import evaluate as command

    command.main()
    return 0


def export() -> int:
    from deploy import export_onnx

    return export_onnx.main()


def _bench_script() -> str:
    """bench/run.py: the source tree's, else the copy installed as fgreid_ops._bench."""
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "run.py")
    if os.path.isfile(source):
        return source
    spec = importlib.util.find_spec("fgreid_ops._bench.run")
    if spec is None or spec.origin is None:
        raise SystemExit("fgreid-bench: bench/run.py is not installed with this copy of fgreid_ops; "
                         "install from the source tree with `pip install --no-build-isolation -e .`")
    return spec.origin


def bench() -> int:
    script = _bench_script()
    argv = sys.argv[1:]
    in_source_tree = os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(script)), "setup.py"))
    if not in_source_tree and not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", os.path.join(os.getcwd(), "bench-results")]  # not into site-packages
    sys.argv = ["fgreid-bench", *argv]
    runpy.run_path(script, run_name="__main__")
    return 0
