"""Validates every GPU kernel on a bare GPU machine, in one command (< 9 min on one H100/H200 with
16 cores; nothing is downloaded):

    python bench/gpu_check.py              # on the GPU machine, from the repository root
    python bench/gpu_check.py --dry-run    # on a CPU machine (CI): every step that needs no GPU

Steps (each one's seconds are printed; the exit status is 1 if any failed; pytest, memcheck and
racecheck run at the same time, the bench alone after them):
  build      the CUDA extension in place for this GPU's arch only (TORCH_CUDA_ARCH_LIST from
             torch.cuda.get_device_capability()), MAX_JOBS = every core
  pytest     pytest -m cuda: every CUDA and Triton-on-GPU test, opcheck and torch.compile included
             (a test that needs a GPU but lacks the mark fails the collection: bench/cuda_marker_check.py)
  memcheck   compute-sanitizer memcheck over bench/sanitize_cases.py (one small forward+backward
  racecheck  per GPU kernel), caching allocator off; any reported error or hazard fails the step
             (memcheck reports kernel memory errors; API return codes that torch and Triton probe
             on purpose are not reported)
  rerank     bench/rerank.py --device cuda at Market-1501 size: the streamed re-ranked evaluation and
             the seconds of each stage (Triton kNN, C++ sparse stage on CPU copies, PyTorch blend on
             the GPU), writing bench/results/rerank_cuda.json (its CPU counterpart: rerank_cpu.json)
  bench      bench/run.py --device cuda under its own time budget (what is left of the 9 minutes),
             writing bench/results/<gpu>.{json,md,png}
  summary    one line per op: % of copy bandwidth, × torch.compile, × eager, fwd and fwd+bwd

--dry-run: argument parsing, every command line as it would run, the cuda-marker check and the
selection of `pytest -m cuda`, the sanitizer driver's cases built and run on the CPU, the CUDA case
lists built on the meta device and their binding checked, and the results rendering (md, png,
summary, README section) from a fake CUDA results file."""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

TOTAL_SECONDS = 9 * 60
STEP_TIMEOUTS = {"build": 300, "pytest": 300, "memcheck": 150, "racecheck": 150, "rerank": 150}
BENCH_BUDGET = (60, 240)  # the bench step's budget: what is left, within these bounds


def gpu_facts():
    import torch

    major, minor = torch.cuda.get_device_capability()
    return dict(name=torch.cuda.get_device_name(), arch=f"{major}.{minor}")


def sanitizer_path():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = os.path.join(cuda_home, "bin", "compute-sanitizer")
    return candidate if os.path.exists(candidate) else (shutil.which("compute-sanitizer") or candidate)


def commands(arch, jobs, bench_budget, python=sys.executable):
    """{step: (argv, extra environment)} in run order."""
    build_env = {"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(jobs), "FORCE_CUDA": "1"}
    sanitize_env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    sanitizer = sanitizer_path()
    driver = [python, os.path.join("bench", "sanitize_cases.py")]
    return {
        "build": ([python, "setup.py", "-q", "build_ext", "--inplace"], build_env),
        "pytest": ([python, "-m", "pytest", "tests", "-m", "cuda", "-q", "-p", "cuda_marker_check",
                    "-p", "no:cacheprovider"], {"PYTHONPATH": os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)}),
        "memcheck": ([sanitizer, "--tool", "memcheck", "--leak-check", "no", "--report-api-errors", "no", "--error-exitcode", "1",
                      "--print-limit", "20", *driver], sanitize_env),
        "racecheck": ([sanitizer, "--tool", "racecheck", "--racecheck-report", "all", "--error-exitcode", "1",
                       "--print-limit", "20", *driver], sanitize_env),
        "rerank": ([python, os.path.join("bench", "rerank.py"), "--device", "cuda", "--sizes", "market1501",
                    "--providers", "fgreid-evaluate,fgreid-stages", "--timeout", "120", "--note", "bench/gpu_check.py"], {}),
        "bench": ([python, os.path.join("bench", "run.py"), "--device", "cuda", "--time-budget", str(int(bench_budget)),
                   "--out", os.path.join("bench", "results")], {}),
    }


SANITIZER_CLEAN = {"memcheck": re.compile(r"ERROR SUMMARY: 0 errors"),
                   "racecheck": re.compile(r"RACECHECK SUMMARY: 0 hazards displayed \(0 errors, 0 warnings\)")}


def sanitizer_verdict(step, returncode, output):
    """None if compute-sanitizer reported nothing, else why the step fails."""
    if returncode != 0:
        return f"exit status {returncode}"
    if not SANITIZER_CLEAN[step].search(output):
        return f"no clean {step} summary in the output"
    return None


def run_step(name, argv, env, timeout, echo=True):
    """Runs one step; returns (seconds, problem or None, printable log)."""
    log = f"\n=== {name}: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(argv)}\n"
    if echo:
        print(log, end="", flush=True)
    start = time.time()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, timeout=timeout, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        output, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        code = f"timeout after {timeout} s"
    except OSError as exc:
        output, code = str(exc), f"could not start: {exc.strerror}"
    tail = output[-6000:]
    log += tail + ("" if tail.endswith("\n") else "\n")
    if echo:
        print(tail, end="" if tail.endswith("\n") else "\n", flush=True)
    seconds = time.time() - start
    if not isinstance(code, int):
        problem = code
    elif name in SANITIZER_CLEAN:
        problem = sanitizer_verdict(name, code, output)
    elif name == "pytest" and code == 5:
        problem = "pytest -m cuda selected no test"
    else:
        problem = None if code == 0 else f"exit status {code}"
    return seconds, problem, log


def run_together(steps):
    """Runs {name: (argv, env, timeout)} at once (the tests and the sanitizers use the GPU lightly
    and the 16 cores well); prints each log whole, in order. {name: (seconds, problem)}."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = {name: pool.submit(run_step, name, *spec, echo=False) for name, spec in steps.items()}
        out = {}
        for name, future in futures.items():
            seconds, problem, log = future.result()
            print(log, end="", flush=True)
            out[name] = (seconds, problem)
    return out


def print_summary(path):
    import report

    with open(path) as f:
        data = json.load(f)
    print(report.summary(data))
    ran = {r["op"] for r in data["results"]}
    missing = sorted(set(data["meta"]["ops"]) - ran)
    if missing:
        print(f"not run (time budget or failure): {', '.join(missing)}")
    return data


def fake_cuda_results(cpu_json=None):
    """A CUDA-shaped results file for --dry-run: the committed CPU results relabelled (or a
    two-row stand-in), with a made-up copy bandwidth, so every rendering path runs."""
    if cpu_json and os.path.exists(cpu_json):
        with open(cpu_json) as f:
            data = json.load(f)
    else:
        row = dict(op="gem", config="x=[4, 64, 24, 8] p=[1]", device="cpu", threads="2", p20_ms=0.9, median_ms=1.0,
                   p80_ms=1.1, gbps=1.0, vs_eager=2.0, vs_compile=1.5, note="")
        data = dict(meta=dict(device_type="cpu", device="cpu", threads=["2"], versions={"torch": "?", "python": "?",
                                                                                         "fgreid_ops": "?"},
                              date="1970-01-01T00:00:00+00:00", size="default", seconds=1.0, cpu_count=2,
                              command="python bench/run.py", ops=["gem"], failures=[]),
                    results=[dict(row, mode="fwd", provider="fgreid"), dict(row, mode="fwd+bwd", provider="fgreid")])
    import render_readme

    meta = dict(data["meta"], device_type="cuda", device="FAKE GPU (dry run)", threads=["gpu"], machine_shared=False,
                peak_bandwidth_gbps=4300.0, ops=render_readme.all_ops())
    meta["versions"] = dict(meta["versions"], cuda="13.0")
    results = []
    for r in data["results"]:
        r = dict(r, device="cuda", threads="gpu")
        if r.get("gbps"):
            r["pct_peak_bw"] = 100 * r["gbps"] / 4300.0
        results.append(r)
    return dict(meta=meta, results=results)


def dry_run(args):
    import binding
    import render_readme
    import report
    import sanitize_cases

    failures = []
    timings = {}

    def step(name, fn):
        start = time.time()
        print(f"\n=== {name} (dry run)", flush=True)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (reported; the dry run fails at the end)
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAILED: {failures[-1]}")
        timings[name] = time.time() - start

    def show_commands():
        cmds = commands("9.0", os.cpu_count(), BENCH_BUDGET[1])
        for name, (argv, env) in cmds.items():
            print(f"{name}: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(argv)}")
        for script in ("setup.py", "bench/sanitize_cases.py", "bench/rerank.py", "bench/run.py"):
            if not os.path.exists(os.path.join(ROOT, script)):
                raise FileNotFoundError(script)

    def pytest_selection():
        argv, env = commands("9.0", 1, 1)["pytest"]
        proc = subprocess.run([*argv, "--collect-only"], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=600)
        print(proc.stdout[-1500:] + proc.stderr[-3000:])
        if proc.returncode != 0:
            raise RuntimeError(f"pytest -m cuda --collect-only: exit status {proc.returncode}")
        match = re.search(r"(\d+)/(\d+) tests collected", proc.stdout)
        if not match or int(match.group(1)) == 0:
            raise RuntimeError("pytest -m cuda selects no test")
        print(f"pytest -m cuda selects {match.group(1)} of {match.group(2)} tests")

    def sanitizer_driver():
        for name, backend, build in sanitize_cases.CASES:
            sanitize_cases.run_case(build, backend, "cpu")
            print(f"{name} [{backend}]: inputs built and run on the CPU")
        clean = {"memcheck": "========= ERROR SUMMARY: 0 errors\n",
                 "racecheck": "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"}
        for tool, text in clean.items():
            assert sanitizer_verdict(tool, 0, text) is None
            assert sanitizer_verdict(tool, 0, text.replace("0 errors", "2 errors")) is not None

    def cuda_lists():
        counts, problems = binding.check_all(devices=("cuda",), sizes=("default",))
        if problems:
            raise RuntimeError("\n".join(problems))
        print(f"{sum(counts.values())} CUDA default cases built on meta; every provider bound to its stated inputs")

    def rendering():
        data = fake_cuda_results(os.path.join(HERE, "results", "cpu.json"))
        with tempfile.TemporaryDirectory(prefix="fgreid-gpu-check-") as folder:
            path = os.path.join(folder, "fake-gpu.json")
            with open(path, "w") as f:
                json.dump(data, f)
            with open(os.path.join(folder, "fake-gpu.md"), "w") as f:
                f.write(report.markdown(data))
            if report.plot(data, os.path.join(folder, "fake-gpu.png")) is None:
                raise RuntimeError("no plot written")
            print_summary(path)
            assert render_readme.gpu_results(folder), "the fake GPU file is not picked up for the README"
            report.readme_section(data, "bench/results/fake-gpu.json")

    step("commands", show_commands)
    step("pytest -m cuda selection", pytest_selection)
    step("sanitizer driver on CPU", sanitizer_driver)
    step("CUDA case lists", cuda_lists)
    step("results rendering", rendering)
    print("\nseconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if failures:
        print("gpu_check --dry-run FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("gpu_check --dry-run: ok")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step that needs no GPU, on any machine")
    parser.add_argument("--skip", nargs="+", default=[], choices=["build", "pytest", "memcheck", "racecheck", "rerank", "bench"],
                        help="steps to leave out (e.g. build when the extension is already built for this GPU)")
    parser.add_argument("--total-seconds", type=float, default=TOTAL_SECONDS,
                        help=f"the whole check's budget; the bench gets what is left (default {TOTAL_SECONDS})")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(args)

    import torch

    if not torch.cuda.is_available():
        parser.error("no CUDA device (use --dry-run on a CPU machine)")
    start = time.time()
    gpu = gpu_facts()
    jobs = os.cpu_count() or 1
    print(f"gpu_check: {gpu['name']} (sm {gpu['arch']}), {jobs} cores, torch {torch.__version__}, CUDA {torch.version.cuda}")
    if shutil.which("ninja") is None:
        print("gpu_check: ninja not found: the extension builds one file at a time")
    timings, problems = {}, []

    def record(name, seconds, problem):
        timings[name] = seconds
        if problem:
            problems.append(f"{name}: {problem}")
            print(f"gpu_check: {name} FAILED ({problem})", flush=True)

    def command(name):
        left = args.total_seconds - (time.time() - start)
        budget = max(BENCH_BUDGET[0], min(BENCH_BUDGET[1], left - 45))
        argv, env = commands(gpu["arch"], jobs, budget)[name]
        return argv, env, STEP_TIMEOUTS.get(name, int(budget) + 180)

    if "build" not in args.skip:
        seconds, problem, _ = run_step("build", *command("build"))
        record("build", seconds, problem)
    if not any(p.startswith("build:") for p in problems):
        together = {name: command(name) for name in ("pytest", "memcheck", "racecheck") if name not in args.skip}
        for name, (seconds, problem) in run_together(together).items() if together else ():
            record(name, seconds, problem)
        for name in ("rerank", "bench"):
            if name not in args.skip:
                seconds, problem, _ = run_step(name, *command(name))
                record(name, seconds, problem)
    import run

    results = os.path.join(ROOT, "bench", "results", run.slug(gpu["name"]) + ".json")
    if "bench" in timings and os.path.exists(results):
        print(f"\n=== summary ({os.path.relpath(results, ROOT)})")
        print_summary(results)
    total = time.time() - start
    print("\nseconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; total {total:.0f}")
    if total > args.total_seconds:
        problems.append(f"took {total:.0f} s, over the {args.total_seconds:.0f} s budget")
    if problems:
        print("gpu_check FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("gpu_check: every step passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
