"""Writes the README's benchmark tables from the committed results JSON, between the markers
<!-- bench-cpu --> ... <!-- /bench-cpu --> (bench/results/cpu.json) and <!-- bench-gpu --> ...
<!-- /bench-gpu --> (every GPU results file, bench/results/<gpu>.json, written by
bench/gpu_check.py or bench/run.py --device cuda) and <!-- bench-rerank --> ... <!-- /bench-rerank -->
(bench/results/rerank_cpu.json, written by bench/rerank.py). The tables are never typed by hand:

    python bench/render_readme.py           # rewrite README.md
    python bench/render_readme.py --check   # exit 1 if README.md differs (tests/test_bench_readme.py)
"""

import argparse
import glob
import json
import os
import pkgutil
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import report  # noqa: E402

README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(HERE, "results")


def all_ops():
    return sorted(m.name for m in pkgutil.iter_modules([os.path.join(HERE, "cases")]))


def gpu_results(results_dir=RESULTS):
    """The GPU results files: runs of every op on CUDA, default or full size."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        name = os.path.basename(path)[:-5]
        if name == "cpu" or name.startswith("quick-"):
            continue
        with open(path) as f:
            data = json.load(f)
        meta = data.get("meta")  # other benches' files (rerank_cpu, distributed_evaluate) have none
        if meta is not None and meta.get("device_type") == "cuda" and meta["size"] != "quick" and sorted(meta["ops"]) == all_ops():
            out.append((path, data))
    return out


def _relative(path):
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def sections(results_dir=RESULTS):
    """{marker: generated text} for the README."""
    cpu_path = os.path.join(results_dir, "cpu.json")
    if os.path.exists(cpu_path):
        with open(cpu_path) as f:
            cpu = report.readme_section(json.load(f), _relative(cpu_path))
        cpu += f"\n\nDetails: `{_relative(cpu_path[:-5])}.md`, plot `{_relative(cpu_path[:-5])}.png`."
    else:
        cpu = "No CPU results committed yet: `python bench/run.py --device cpu` writes `bench/results/cpu.json`."
    gpus = gpu_results(results_dir)
    if gpus:
        gpu = "\n\n".join(report.readme_section(data, _relative(path)) +
                          f"\n\nDetails: `{_relative(path[:-5])}.md`, plot `{_relative(path[:-5])}.png`."
                          for path, data in gpus)
    else:
        gpu = ("No GPU results committed yet: `python bench/gpu_check.py` on a GPU machine validates every GPU "
               "kernel and writes `bench/results/<gpu>.json`.")
    return {"bench-cpu": cpu, "bench-gpu": gpu, "bench-rerank": rerank_section(results_dir)}


def rerank_section(results_dir=RESULTS):
    """The re-ranking bench: seconds and peak RSS per size and provider (bench/rerank.py)."""
    path = os.path.join(results_dir, "rerank_cpu.json")
    if not os.path.exists(path):
        return "No re-ranking results committed yet: `python bench/rerank.py` writes `bench/results/rerank_cpu.json`."
    with open(path) as f:
        data = json.load(f)
    params = ", ".join(f"{k}={v}" for k, v in data["params"].items())
    lines = [f"`{_relative(path)}`: {data['device']} ({data['cpu_count']} cores), threads {data['threads']}, "
             f"torch {data['torch']}, {params}.", "",
             "| size | Q × G, D | provider | seconds | peak RSS | mAP | taken |",
             "|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        shape = f"{row['Q']:,} × {row['G']:,}, {row['D']}"
        if row["status"] == "ok":
            seconds = f"{row['seconds']:.1f}"
            if "stages" in row:  # fgreid-stages: kNN, sparse and one blend walk, no evaluation
                seconds += " (" + ", ".join(f"{k} {v:.1f}" for k, v in row["stages"].items()) + ")"
            mAP = f"{row['metrics']['mAP']:.4f}" if "metrics" in row else "—"
            cells = [seconds, f"{row['peak_rss_bytes'] / 1e9:.2f} GB", mAP]
        else:
            cells = [f"{row['status']}: {row.get('reason', '')}", "—", "—"]
        taken = "; ".join(x for x in (row.get("time", "")[:16].replace("T", " "), row.get("note", "")) if x)
        lines.append(f"| {row['size']} | {shape} | {row['provider']} | " + " | ".join(cells) + f" | {taken} |")
    return "\n".join(lines)


def render(readme_text, results_dir=RESULTS):
    """The README text with every marker pair's content regenerated. A marker pair missing from
    the README is an error, not silently skipped."""
    for marker, body in sections(results_dir).items():
        pattern = re.compile(rf"(<!-- {marker} -->\n)(.*?)(<!-- /{marker} -->)", re.S)
        if not pattern.search(readme_text):
            raise SystemExit(f"render_readme: README.md has no <!-- {marker} --> ... <!-- /{marker} --> pair")
        readme_text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), readme_text, count=1)
    return readme_text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not what this script writes")
    parser.add_argument("--readme", default=README)
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        current = f.read()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"render_readme: {args.readme} differs from the committed results; run python bench/render_readme.py")
            return 1
        return 0
    if wanted != current:
        with open(args.readme, "w") as f:
            f.write(wanted)
        print(f"render_readme: updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
