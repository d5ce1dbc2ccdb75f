"""Throughput of every fgreid_ops op against eager PyTorch and torch.compile, in one run.

    python bench/run.py                      # every op, the models' shapes, CPU (+ CUDA if present)
    python bench/run.py --quick              # CI smoke: tiny shapes, seconds per op
    python bench/run.py --full               # every shape; CPU with 1 thread and all threads
    python bench/run.py --ops gem off --device cuda --time-budget 120

Writes bench/results/<name>.json, .md and .png, where <name> is "cpu" or the GPU's name (prefixed
"quick-" for --quick, suffixed with the ops for an --ops subset). Speedups are ratios of medians
measured in the same process; GB/s uses the bytes an ideal kernel moves, and % BW that over the
measured copy bandwidth (CUDA: device to device; CPU: per thread count, into an existing buffer,
with the copy into fresh memory beside it). A provider that fails is reported and the run
goes on; the exit status is then 1 (unless --keep-going). The README's tables come from the JSON
(python bench/render_readme.py); a run of every op (default or --full size) into bench/results/
regenerates them itself.

Adding an op: bench/cases/<op>.py with ``cases(device, size) -> list[Case]``; the Case API and its
rules are in bench/common.py's docstring, and tests/test_bench_binding.py checks every case of
every module (so a new module is checked without registering it)."""

import argparse
import contextlib
import datetime
import gc
import importlib
import json
import os
import pkgutil
import platform
import re
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.append(ROOT)  # a source checkout: an installed fgreid_ops comes first

import torch  # noqa: E402
import torch._dynamo  # noqa: E402

import fgreid_ops  # noqa: E402
import report  # noqa: E402
from common import copy_bandwidth_cpu, peak_bandwidth_cuda, time_cpu, time_cuda  # noqa: E402


def available_ops():
    return sorted(m.name for m in pkgutil.iter_modules([os.path.join(HERE, "cases")]))


def load_cases(op, device, size):
    return importlib.import_module(f"cases.{op}").cases(device, size)


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


def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__, "fgreid_ops": fgreid_ops.__version__}
    for name in ("triton", "numpy", "onnxruntime"):
        with contextlib.suppress(Exception):
            out[name] = importlib.import_module(name).__version__
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def result_name(device, args, ops):
    if args.name:
        return args.name
    name = "cpu" if device == "cpu" else slug(device_label(device))
    if args.size == "quick":
        name = "quick-" + name
    if sorted(ops) != available_ops():
        name += "-" + "-".join(ops)
    return name


def _is_published(args, device):
    """A run whose results the README quotes: every op, default or full size, written to
    bench/results/ under the standard name."""
    return (os.path.abspath(args.out) == os.path.join(HERE, "results") and args.size != "quick" and not args.name
            and sorted(args.ops) == available_ops() and args.device in (device, "all"))


def run_case(case, device, size, threads, peak, failures, rows):
    """Times every provider of one case; appends a row per provider that ran, a failure per one
    that raised."""
    timer = time_cuda if device == "cuda" else time_cpu
    torch._dynamo.reset()  # each case compiles its own graphs: no recompile limit, no stale cache
    where = f"{case.op} {case.config} {case.mode} [{threads}]"
    try:
        providers = case.setup(device)
    except Exception as exc:  # noqa: BLE001  (reported, counted, and the run goes on)
        failures.append(dict(device=device, op=case.op, config=case.config, mode=case.mode, threads=threads,
                             provider="setup",
                             error=f"{type(exc).__name__}: {exc}".splitlines()[0]))
        report.echo(f"FAILED {where} setup: {failures[-1]['error']}")
        return
    results, peaks = {}, {}
    for name, fn in providers.items():
        try:
            fn()  # warm-up (and compilation for the compile providers)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            results[name] = timer(fn, size)
        except Exception as exc:  # noqa: BLE001  (reported, counted, and the run goes on)
            failures.append(dict(device=device, op=case.op, config=case.config, mode=case.mode, threads=threads,
                                 provider=name,
                                 error=f"{type(exc).__name__}: {exc}".splitlines()[0]))
            report.echo(f"FAILED {where} {name}: {failures[-1]['error']}")
    del providers
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    eager, comp = results.get("eager"), results.get("compile")
    for name, (p20, p50, p80) in results.items():
        row = dict(op=case.op, config=case.config, mode=case.mode, device=device, threads=threads, provider=name,
                   p20_ms=p20 * 1e3, median_ms=p50 * 1e3, p80_ms=p80 * 1e3,
                   gbps=case.bytes_moved / p50 / 1e9 if case.bytes_moved else None,
                   vs_eager=eager[1] / p50 if eager else None, vs_compile=comp[1] / p50 if comp else None,
                   note=case.note)
        if case.items:
            row["items_per_s"] = case.items / p50
        if name in peaks:
            row["peak_mib"] = peaks[name]
        if peak and case.bytes_moved:
            row["pct_peak_bw"] = 100 * case.bytes_moved / p50 / peak
        rows.append(row)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=None, help=f"ops to run (default: all of {available_ops()})")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", dest="size", action="store_const", const="quick",
                       help="tiny shapes and short timing: the CI smoke run (< 3 min on 2 cores)")
    sizes.add_argument("--full", dest="size", action="store_const", const="full",
                       help="every shape, CPU with 1 thread and all threads, longer timing")
    parser.set_defaults(size="default")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: CPU, and CUDA when a GPU is present (default)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="CPU thread counts to run (default: all threads; --full: 1 and all)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="stop starting cases after this many seconds; the results say what ran")
    parser.add_argument("--keep-going", action="store_true", help="exit 0 even if a provider failed")
    parser.add_argument("--shared-machine", action="store_true",
                        help="record that other jobs shared the machine (the README then calls the numbers provisional)")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the results files")
    parser.add_argument("--name", default=None, help="results file name (default: cpu / the GPU's name)")
    args = parser.parse_args(argv)
    args.ops = args.ops or available_ops()
    unknown = sorted(set(args.ops) - set(available_ops()))
    if unknown:
        parser.error(f"unknown op(s) {unknown}; available: {available_ops()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.threads and min(args.threads) < 1:
        parser.error(f"--threads: expected counts >= 1, got {args.threads}")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget: expected seconds > 0, got {args.time_budget}")
    return args


def _interleaved(per_op):
    """The ops' cases taken in turn, one config (its fwd and fwd+bwd cases) at a time, so that a
    run cut short by --time-budget has measured every op."""
    chunks = []
    for cases in per_op:
        groups = []
        for case in cases:
            if groups and groups[-1][-1].config == case.config:
                groups[-1].append(case)
            else:
                groups.append([case])
        chunks.append(groups)
    out = []
    for i in range(max((len(g) for g in chunks), default=0)):
        for groups in chunks:
            if i < len(groups):
                out.extend(groups[i])
    return out


def plan(args):
    """[(device, threads label, thread count or None, case)] in run order."""
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    work = []
    for device in devices:
        if device == "cuda":
            thread_counts = [None]
        else:
            all_threads = torch.get_num_threads()
            thread_counts = args.threads or (sorted({1, all_threads}) if args.size == "full" else [all_threads])
        per_op = [load_cases(op, device, args.size) for op in args.ops]
        for n in thread_counts:
            work.extend((device, "gpu" if n is None else str(n), n, case) for case in _interleaved(per_op))
    return work


def _table_order(work):
    """Rows sort key: by op, then in each op's own case order (the run interleaves the ops)."""
    ops = list(dict.fromkeys(case.op for *_, case in work))
    position = {}
    for *_, case in sorted(work, key=lambda w: ops.index(w[3].op)):
        position.setdefault((case.op, case.config, case.mode), len(position))
    return lambda r: (len(r["threads"]), r["threads"], position.get((r["op"], r["config"], r["mode"]), 0))


def main(argv=None):
    args = parse_args(argv)
    work = plan(args)
    if args.list:
        for device, label, _, case in work:
            print(f"{device} [{label}] {case.op} | {case.config} | {case.mode} | inputs {case.inputs}")
        return 0
    os.makedirs(args.out, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*TF32.*")
    commit = git_commit()  # the code that runs, before anyone commits during the run
    start = time.time()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows, failures, done = {}, [], {}
    peak, cpu_copy = {}, {}
    all_threads = torch.get_num_threads()
    stopped = False
    with report.progress(total=len(work)) as bar:
        for device, label, n, case in work:
            if args.time_budget is not None and time.time() - start > args.time_budget:
                stopped = True
                break
            if device == "cuda" and device not in peak:
                peak[device] = peak_bandwidth_cuda()
                report.echo(f"measured device-copy bandwidth: {peak[device] / 1e9:.0f} GB/s")
            torch.set_num_threads(n or all_threads)
            if device == "cpu" and label not in cpu_copy:  # per thread count: one thread does not saturate memory
                cpu_copy[label] = copy_bandwidth_cpu(args.size)
                report.echo(f"measured CPU copy bandwidth [{label} threads]: {cpu_copy[label][0] / 1e9:.1f} GB/s, "
                            f"into fresh memory {cpu_copy[label][1] / 1e9:.1f} GB/s")
            bar.set_postfix_str(f"{case.op} {case.mode} [{label}]", refresh=False)
            bandwidth = peak.get(device) if device == "cuda" else cpu_copy[label][0]
            run_case(case, device, args.size, label, bandwidth, failures, rows.setdefault(device, []))
            done[device] = done.get(device, 0) + 1
            bar.update()
    torch.set_num_threads(all_threads)
    seconds = round(time.time() - start, 1)
    for device in dict.fromkeys(d for d, *_ in work):
        planned = sum(1 for d, *_ in work if d == device)
        meta = dict(
            device_type=device, device=device_label(device), machine=platform.platform(), cpu=cpu_name(),
            cpu_count=os.cpu_count(),
            threads=sorted({r["threads"] for r in rows.get(device, [])}, key=lambda t: (len(t), t)),
            versions=versions(), commit=commit,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            size=args.size, ops=args.ops, command="python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            machine_shared=args.shared_machine,
            loadavg_1min=dict(start=load_start, end=os.getloadavg()[0] if hasattr(os, "getloadavg") else None),
            peak_bandwidth_gbps=peak[device] / 1e9 if device in peak else None,
            **(dict(copy_bandwidth_gbps={t: b[0] / 1e9 for t, b in cpu_copy.items()},
                    fresh_copy_bandwidth_gbps={t: b[1] / 1e9 for t, b in cpu_copy.items()}) if device == "cpu" else {}),
            seconds=seconds, time_budget=args.time_budget, cases_planned=planned, cases_run=done.get(device, 0),
            stopped_by_time_budget=stopped and done.get(device, 0) < planned,
            failures=[f for f in failures if f["device"] == device],
        )
        data = dict(meta=meta, results=sorted(rows.get(device, []), key=_table_order(work)))
        base = os.path.join(args.out, result_name(device, args, args.ops))
        with open(base + ".json", "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        with open(base + ".md", "w") as f:
            f.write(report.markdown(data))
        report.plot(data, base + ".png")
        print(f"\n{report.summary(data)}\nwrote {base}.json/.md/.png ({seconds:.0f} s)")
        if _is_published(args, device):
            import render_readme

            render_readme.main([])
    if stopped:
        print(f"time budget of {args.time_budget:.0f} s reached: {sum(done.values())} of {len(work)} cases ran")
    if failures:
        print(f"\n{len(failures)} provider(s) failed:")
        for f in failures:
            print(f"  {f['op']} {f['config']} {f['mode']} [{f['threads']}] {f['provider']}: {f['error']}")
        if not args.keep_going:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
