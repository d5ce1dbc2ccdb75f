"""Throughput of every fgreid_ops op against eager PyTorch and torch.compile, in one run.

    python bench/run.py                 # all ops, CPU (1 thread and all threads) and CUDA if present
    python bench/run.py --ops gem --quick

Prints a table and writes bench/results/<device>.json, .md and .png (matplotlib, optional).
Speedups are ratios of medians measured in the same process; GB/s uses the bytes an ideal
kernel moves, and on CUDA also the percentage of the measured device-copy bandwidth."""

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import fgreid_ops  # noqa: E402
from common import peak_bandwidth_cuda, time_cpu, time_cuda  # noqa: E402

BASELINES = ("eager", "compile")


def available_ops():
    return sorted(m.name for m in pkgutil.iter_modules([os.path.join(HERE, "cases")]))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_label(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_cases(op, device, quick, threads_label, rows, peak):
    module = importlib.import_module(f"cases.{op}")
    timer = time_cuda if device == "cuda" else time_cpu
    for case in module.cases(device, quick):
        results, peaks = {}, {}
        for name, fn in case.providers.items():
            try:
                fn()  # warm-up (and compilation for the "compile" provider)
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    fn()
                    torch.cuda.synchronize()
                    peaks[name] = torch.cuda.max_memory_allocated() / 2**20
                results[name] = timer(fn, quick)
            except Exception as exc:  # a provider that cannot run is reported, not fatal
                results[name] = None
                print(f"  [{op} {case.config} {case.mode}] {name} failed: {type(exc).__name__}: {exc}".splitlines()[0])
        eager = results.get("eager")
        comp = results.get("compile")
        for name, t in results.items():
            if t is None:
                continue
            p20, p50, p80 = t
            row = dict(op=op, config=case.config, mode=case.mode, device=device, threads=threads_label,
                       provider=name, p20_ms=p20 * 1e3, median_ms=p50 * 1e3, p80_ms=p80 * 1e3,
                       gbps=case.bytes_moved / p50 / 1e9 if case.bytes_moved else None,
                       vs_eager=eager[1] / p50 if eager else None, vs_compile=comp[1] / p50 if comp else None,
                       note=case.note)
            if case.items:
                row["items_per_s"] = case.items / p50
                row["peak_mib"] = peaks.get(name)
            if peak:
                row["pct_peak_bw"] = 100 * case.bytes_moved / p50 / peak
            rows.append(row)


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(rows, device):
    header = "| op | config | mode | threads | provider | median ms | p20–p80 ms | GB/s | vs eager | vs compile |"
    if device == "cuda":
        header += " % peak BW |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        line = (f"| {r['op']} | {r['config']} | {r['mode']} | {r['threads']} | {r['provider']} | {r['median_ms']:.3f} | "
                f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f} | {fmt(r['gbps'], '.1f')} | {fmt(r['vs_eager'], '.2f')}× | "
                f"{fmt(r['vs_compile'], '.2f')}× |")
        if device == "cuda":
            line += f" {fmt(r.get('pct_peak_bw'), '.0f')} |"
        lines.append(line)
    return "\n".join(lines)


def model_table(rows):
    """Whole-model cases: images per second and, on CUDA, peak memory of one call."""
    rows = [r for r in rows if r.get("items_per_s")]
    if not rows:
        return ""
    lines = ["", "", "| model | config | mode | threads | provider | img/s | peak MiB | vs eager | vs compile | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['config']} | {r['mode']} | {r['threads']} | {r['provider']} | "
                     f"{r['items_per_s']:.1f} | {fmt(r.get('peak_mib'), '.0f')} | {fmt(r['vs_eager'], '.2f')}× | "
                     f"{fmt(r['vs_compile'], '.2f')}× | {r['note']} |")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart written")
        return
    ours = [r for r in rows if r["provider"].startswith("fgreid") and r["vs_eager"]]
    if not ours:
        return
    labels = [f"{r['op']} {r['mode']}\n{r['config']} [{r['threads']}] {r['provider']}" for r in ours]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(ours) + 1.5))
    y = range(len(ours))
    ax.barh([i + 0.2 for i in y], [r["vs_eager"] for r in ours], height=0.4, label="vs eager")
    ax.barh([i - 0.2 for i in y], [r["vs_compile"] or 0 for r in ours], height=0.4, label="vs torch.compile")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(list(y), labels, fontsize=6)
    ax.set_xlabel("speedup of fgreid_ops (×, higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=None, help=f"ops to run (default: all of {available_ops()})")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and short timing: a seconds-long smoke run")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the results files")
    args = parser.parse_args(argv)

    ops = args.ops or available_ops()
    unknown = sorted(set(ops) - set(available_ops()))
    if unknown:
        parser.error(f"unknown op(s) {unknown}; available: {available_ops()}")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    os.makedirs(args.out, exist_ok=True)

    for device in devices:
        rows = []
        start = time.time()
        peak = None
        if device == "cuda":
            peak = peak_bandwidth_cuda()
            print(f"measured device-copy bandwidth: {peak / 1e9:.0f} GB/s")
            run_all(ops, device, args.quick, "gpu", rows, peak)
        else:
            all_threads = torch.get_num_threads()
            for threads in sorted({1, all_threads}):
                torch.set_num_threads(threads)
                run_all(ops, device, args.quick, str(threads), rows, None)
            torch.set_num_threads(all_threads)
        label = device_label(device)
        meta = dict(device=label, torch=torch.__version__, fgreid_ops=fgreid_ops.__version__,
                    python=platform.python_version(), date=datetime.date.today().isoformat(), quick=args.quick,
                    peak_bandwidth_gbps=peak / 1e9 if peak else None, seconds=round(time.time() - start, 1))
        md = table(rows, device) + model_table(rows)
        print(f"\n## {label} — torch {torch.__version__}\n\n{md}\n")
        name = ("quick-" if args.quick else "") + ("cpu" if device == "cpu" else slug(label))
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=1)
        with open(os.path.join(args.out, name + ".md"), "w") as f:
            f.write(f"# fgreid_ops benchmark — {label}\n\n")
            f.write("".join(f"- {k}: {v}\n" for k, v in meta.items()))
            f.write(f"\nSpeedups are ratios of medians in the same run (higher is better).\n\n{md}\n")
        plot(rows, os.path.join(args.out, name + ".png"))
        print(f"wrote {os.path.join(args.out, name)}.json/.md/.png")


def run_all(ops, device, quick, threads_label, rows, peak):
    for op in ops:
        run_cases(op, device, quick, threads_label, rows, peak)


if __name__ == "__main__":
    main()
