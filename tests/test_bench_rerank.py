"""bench/rerank.py at a tiny scale: every provider runs in its own process, the streamed and the
matrix re-ranking agree, the stage provider times the three stages within its total, and rows of
an earlier run keep their own time and note."""

import json
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import rerank  # noqa: E402


def test_providers_and_stages(tmp_path):
    out = tmp_path / "rerank_cpu.json"
    out.write_text(json.dumps({"time": "2026-01-01T00:00:00Z", "note": "an older run", "rows": [
        {"size": "market1501", "provider": "fgreid-evaluate", "Q": 1, "G": 2, "D": 3, "status": "ok"}]}))
    assert rerank.main(["--scale", "0.005", "--dim", "16", "--sizes", "market1501", "--out", str(out),
                        "--providers", "fgreid-evaluate,fgreid-rerank,fgreid-stages,dense-torch"]) == 0
    rows = json.loads(out.read_text())["rows"]
    old, *fresh = rows
    assert old["note"] == "an older run" and old["time"] == "2026-01-01T00:00:00Z"
    by = {r["provider"]: r for r in fresh}
    assert set(by) == {"fgreid-evaluate", "fgreid-rerank", "fgreid-stages", "dense-torch"}
    assert all(r["status"] == "ok" and r["Q"] == 17 and r["G"] == 80 for r in fresh)
    assert by["fgreid-evaluate"]["metrics"] == by["fgreid-rerank"]["metrics"]
    stages = by["fgreid-stages"]["stages"]
    assert set(stages) == {"knn", "sparse", "blend"} and all(v > 0 for v in stages.values())
    assert sum(stages.values()) <= by["fgreid-stages"]["seconds"]
    assert "metrics" not in by["fgreid-stages"]
