"""The project documents itself: README.md and docs/*.md link only to what exists, every command
line they show uses options the command has, CI installs as the README does, and nothing refers
to files outside the repository."""

import contextlib
import importlib.util
import io
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", ".venv"}


def read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_links_resolve(doc):
    text = read(doc)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        rel = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        assert os.path.exists(os.path.join(ROOT, rel)), f"{doc}: link to missing {target}"
        if anchor and rel.endswith(".md"):
            assert anchor in anchors(read(rel)), f"{doc}: no heading #{anchor} in {rel}"


def test_ops_md_has_a_section_per_op():
    import fgreid_ops

    sections = anchors(read("docs/ops.md"))
    from fgreid_ops import _oplist

    for op in _oplist.OPS:
        assert op in sections and hasattr(fgreid_ops, op)


def test_nothing_refers_outside_the_project():
    outside = re.compile(r"\.\./shared|SPEC" + r"\.md|SPEC" + r" §")
    hits = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue  # binaries (the built extension, images)
            hits += [f"{os.path.relpath(path, ROOT)}:{i + 1}" for i, line in enumerate(text.splitlines())
                     if outside.search(line)]
    assert hits == []


def test_ci_installs_as_the_readme_does():
    first = re.search(r"```bash\n(python3 -m venv .+)\n```", read("README.md")).group(1)
    assert "pip install -v --no-build-isolation -e ." in first
    assert "pip install -q --no-build-isolation -e ." in read(".ci/run")


def _help(name: str) -> str:
    """--help of a documented command, in process."""
    if name in ("fgreid-train", "python_models.train"):
        from python_models import train

        call = lambda: train.parse_args(["--help"])  # noqa: E731
    elif name in ("fgreid-evaluate", "python_models.evaluate"):
        from python_models import evaluate

        call = lambda: evaluate.main(["--help"])  # noqa: E731
    elif name in ("fgreid-bench", "bench/run.py"):
        spec = importlib.util.spec_from_file_location("_bench_run", os.path.join(ROOT, "bench", "run.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        call = lambda: module.main(["--help"])  # noqa: E731
    else:
        from deploy import build_engine, export_onnx, run_engine

        script = {"fgreid-export": export_onnx}.get(name) or {
            "deploy/export_onnx.py": export_onnx, "deploy/build_engine.py": build_engine,
            "deploy/run_engine.py": run_engine}[name]
        call = lambda: script.main(["--help"])  # noqa: E731
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        call()
    return out.getvalue()


def documented_commands():
    """(doc, command name, argv) of every command line in the docs' bash blocks."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", read(doc), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                for part in line.split("&&"):
                    argv = shlex.split(part.replace("[", "").replace("]", ""))
                    if not argv:
                        continue
                    if argv[0].startswith("fgreid-"):
                        found.append((doc, argv[0], argv[1:]))
                    elif argv[:2] == ["python", "-m"] and argv[2].startswith("python_models."):
                        found.append((doc, argv[2], argv[3:]))
                    elif argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py"):
                        found.append((doc, argv[1], argv[2:]))
    return found


def test_documented_commands_use_real_options():
    commands = documented_commands()
    names = {name for _, name, _ in commands}
    assert {"fgreid-train", "fgreid-evaluate", "fgreid-bench"} <= names
    helps = {}
    for doc, name, argv in commands:
        text = helps.setdefault(name, _help(name))
        for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", text), f"{doc}: {name} has no option {flag}"
