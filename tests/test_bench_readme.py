"""The README's benchmark tables are bench/render_readme.py's output for the committed results
JSON, never typed by hand."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import render_readme  # noqa: E402
import report  # noqa: E402


def test_readme_bench_sections_are_generated_from_the_committed_json():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert readme == render_readme.render(readme), "run: python bench/render_readme.py"
    assert "<!-- bench-cpu -->" in readme and "<!-- bench-gpu -->" in readme


def test_committed_cpu_results_say_where_and_how_they_were_taken():
    path = os.path.join(ROOT, "bench", "results", "cpu.json")
    with open(path) as f:
        data = json.load(f)
    meta = data["meta"]
    for key in ("device", "cpu", "cpu_count", "threads", "versions", "date", "machine_shared", "size", "command"):
        assert key in meta, key
    assert meta["device_type"] == "cpu" and meta["size"] in ("default", "full") and data["results"]
    assert {"torch", "python", "fgreid_ops"} <= set(meta["versions"])
    section = report.readme_section(data, "bench/results/cpu.json")
    assert ("provisional" in section) == bool(meta["machine_shared"])
    assert os.path.exists(path[:-5] + ".md") and os.path.exists(path[:-5] + ".png")
