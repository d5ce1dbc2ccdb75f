"""k-reciprocal re-ranking bench on CPU: fgreid_ops against a dense PyTorch transcription of the
common `re_ranking` (N x N distance and V matrices), at Market-1501 and MSMT17 sizes.

Every (size, provider) runs in its own process, so each peak RSS is that provider's own (the
features included). Providers:
- fgreid-evaluate: evaluate_features(q, g, ..., rerank={...}), the re-ranked distances streamed
  into the ranking, never stored;
- fgreid-rerank: rerank(q, g) -> the [Q, G] matrix, then evaluate (not timed);
- dense-torch: the dense transcription, then evaluate (not timed); run only when its N x N
  arrays fit in --dense-memory (default: half of MemAvailable), otherwise recorded as not run
  (CPU only);
- fgreid-stages: the seconds of each stage (kNN, sparse, blend over every tile once), the
  device synchronized around each: on CUDA the kNN is Triton, the sparse stage C++ on CPU copies
  of the O(N (k1 + k2)) lists and the blend plain PyTorch on the GPU, so one CPU and one CUDA run
  compare the two homes of each stage.

--device cuda runs every provider's tensors on the GPU (peak GPU memory recorded beside the
process's RSS) and writes bench/results/rerank_cuda.json.

The bench fails (exit status 1) when a provider fails, when fgreid-evaluate and fgreid-rerank
disagree on any metric (they must be equal), or when fgreid and dense-torch differ by more than
1e-3 in mAP. Results go to bench/results/rerank_cpu.json (device, threads and versions included;
rows of sizes and providers not re-run are kept, so the sizes can be run one at a time).

    python bench/rerank.py --scale 0.02                 # a quick check, seconds
    python bench/rerank.py --sizes market1501           # full Market-1501 size
    python bench/rerank.py --sizes msmt17 --providers fgreid-evaluate
    python bench/rerank.py --device cuda --sizes market1501 --providers fgreid-evaluate,fgreid-stages
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"market1501": (3368, 15913), "msmt17": (11659, 82161)}
PROVIDERS = ("fgreid-evaluate", "fgreid-rerank", "dense-torch", "fgreid-stages")
PARAMS = {"k1": 20, "k2": 6, "lambda_value": 0.3}


def make_data(num_query, num_gallery, dim, seed):
    """Clustered features (one random centre per identity, noise around it) and Market-style ids:
    ~4.7 gallery images per identity (Market-1501's ratio), 6 cameras. The noise makes the task
    hard enough that re-ranking matters (at 200 x 950, D=2048: mAP 0.33 plain, 0.50 re-ranked)."""
    gen = torch.Generator().manual_seed(seed)
    n = num_query + num_gallery
    num_ids = max(2, num_gallery * 10 // 47)
    pids = torch.randint(0, num_ids, (n,), generator=gen)
    camids = torch.randint(0, 6, (n,), generator=gen)
    centres = torch.randn(num_ids, dim, generator=gen)
    x = torch.empty(n, dim)
    for lo in range(0, n, 8192):
        hi = min(n, lo + 8192)
        x[lo:hi] = centres[pids[lo:hi]] + 4.0 * torch.randn(hi - lo, dim, generator=gen)
    q, g = x[:num_query].clone(), x[num_query:].clone()
    return q, g, (pids[:num_query], pids[num_query:], camids[:num_query], camids[num_query:])


def dense_rerank(q, g, k1, k2, lambda_value):
    """The common re_ranking in PyTorch, dense: [N, N] d and V (and a second [N, N] for the
    query expansion), the k nearest by topk (the common code argsorts whole rows), the sets
    per row in a Python loop, the Jaccard term per query over the non-zero columns of V[i]."""
    x = torch.cat([q, g]).float()
    num_query, n = q.shape[0], x.shape[0]
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :]).addmm_(x, x.T, alpha=-2)
    d /= d.amax(1, keepdim=True)
    rank = torch.topk(d, min(n, max(k1 + 1, k2)), dim=1, largest=False).indices

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return forward[(rank[forward, :k + 1] == i).any(1)]

    h = round(k1 / 2)
    V = torch.zeros(n, n)
    for i in range(n):
        r = reciprocal(i, k1)
        members = set(r.tolist())
        expansion = [r]
        for c in r.tolist():
            rc = reciprocal(c, h)
            if 3 * len(members.intersection(rc.tolist())) > 2 * len(rc):
                expansion.append(rc)
        s = torch.unique(torch.cat(expansion))
        w = torch.exp(-d[i, s])
        V[i, s] = w / w.sum()
    d_qg = d[:num_query, num_query:].clone()
    del d
    if k2 != 1:
        V_qe = torch.zeros(n, n)
        for lo in range(0, n, 1024):
            hi = min(n, lo + 1024)
            for a in range(min(k2, n)):
                V_qe[lo:hi] += V[rank[lo:hi, a]]
        V = V_qe.div_(min(k2, n))
    out = torch.empty(num_query, n - num_query)
    for i in range(num_query):
        nz = V[i].nonzero().squeeze(1)
        m = torch.minimum(V[i, nz][None, :], V[num_query:, nz]).sum(1)
        out[i] = 1 - m / (2 - m)
    return (1 - lambda_value) * out + lambda_value * d_qg


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args):
    sys.path.insert(0, ROOT)
    import fgreid_ops

    from fgreid_ops import _backend
    from fgreid_ops.ops.rerank import DEFAULT_MEMORY_BUDGET, KNN, Reranker

    device = torch.device(args.device)
    num_query, num_gallery = scaled(args.size, args.scale)

    def on_device(q, g, ids):
        return q.to(device), g.to(device), tuple(t.to(device) for t in ids)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # first calls pay one-off costs (custom-op machinery, thread pools, Triton compiles): warm up
    warm_q, warm_g, warm_ids = on_device(*make_data(8, 40, 16, args.seed))
    fgreid_ops.evaluate_features(warm_q, warm_g, *warm_ids, rerank=PARAMS)
    fgreid_ops.evaluate(fgreid_ops.rerank(warm_q, warm_g, **PARAMS), *warm_ids)
    q, g, ids = on_device(*make_data(num_query, num_gallery, args.dim, args.seed))
    rss_data = peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    out = {}
    if args.provider == "fgreid-evaluate":
        result = fgreid_ops.evaluate_features(q, g, *ids, rerank=PARAMS)
        sync()
        seconds = time.perf_counter() - start
    elif args.provider == "fgreid-stages":
        stages = {}
        reranker = Reranker(q, g, PARAMS["k1"], PARAMS["k2"], PARAMS["lambda_value"],
                            _backend.resolve(KNN, device.type, None), timings=stages)
        for _ in reranker.tiles(DEFAULT_MEMORY_BUDGET):
            pass
        sync()
        seconds, result = time.perf_counter() - start, None
        out["stages"] = stages
    else:
        distmat = (fgreid_ops.rerank(q, g, **PARAMS) if args.provider == "fgreid-rerank"
                   else dense_rerank(q, g, **PARAMS))
        sync()
        seconds = time.perf_counter() - start
        result = fgreid_ops.evaluate(distmat, *ids)
    out.update(seconds=seconds, peak_rss_bytes=peak_rss_bytes(), peak_rss_after_data_bytes=rss_data)
    if device.type == "cuda":
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    if result is not None:
        out["metrics"] = result.summary()
    print(json.dumps(out))


def scaled(size, scale):
    num_query, num_gallery = SIZES[size]
    return max(1, round(num_query * scale)), max(1, round(num_gallery * scale))


def dense_bytes(num_query, num_gallery):
    n = num_query + num_gallery
    return 3 * n * n * 4 + 2 * num_query * num_gallery * 4


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("bench/rerank.py: no MemAvailable in /proc/meminfo")


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def run_provider(args, size, provider):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--size", size, "--provider", provider,
           "--scale", str(args.scale), "--dim", str(args.dim), "--seed", str(args.seed), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"status": "failed", "returncode": proc.returncode, "stderr": proc.stderr[-4000:]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies Q and G (default 1: the real sizes)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated among {list(SIZES)}")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated among {list(PROVIDERS)}")
    parser.add_argument("--dense-memory", type=float, default=None,
                        help="GB the dense transcription may use (default: half of MemAvailable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per provider run")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=None, help="default: bench/results/rerank_<device>.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    args.out = args.out or os.path.join(ROOT, "bench", "results", f"rerank_{args.device}.json")

    sizes, providers = args.sizes.split(","), args.providers.split(",")
    for name, allowed, what in ((sizes, SIZES, "size"), (providers, PROVIDERS, "provider")):
        unknown = [s for s in name if s not in allowed]
        if unknown:
            parser.error(f"unknown {what} {unknown}; choose among {list(allowed)}")
    dense_limit = args.dense_memory * 1e9 if args.dense_memory is not None else mem_available() / 2
    rows, failures = [], []
    for size in sizes:
        num_query, num_gallery = scaled(size, args.scale)
        by_provider = {}
        for provider in providers:
            row = {"size": size, "Q": num_query, "G": num_gallery, "D": args.dim, "provider": provider,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": args.note}
            if provider == "dense-torch" and args.device != "cpu":
                row.update(status="not run", reason="the dense transcription runs on CPU only")
            elif provider == "dense-torch" and dense_bytes(num_query, num_gallery) > dense_limit:
                row.update(status="not run", reason=f"needs ~{dense_bytes(num_query, num_gallery) / 1e9:.0f} GB "
                                                    f"(limit {dense_limit / 1e9:.0f} GB)")
            else:
                row.update(run_provider(args, size, provider))
            print(json.dumps(row), flush=True)
            rows.append(row)
            if row["status"] == "failed":
                failures.append(f"{size}/{provider} failed: {row['stderr'][-500:]}")
            elif row["status"] == "ok" and "metrics" in row:
                by_provider[provider] = row["metrics"]
        streamed, matrix = by_provider.get("fgreid-evaluate"), by_provider.get("fgreid-rerank")
        if streamed is not None and matrix is not None and streamed != matrix:
            failures.append(f"{size}: evaluate_features(rerank=...) {streamed} != evaluate(rerank(...)) {matrix}")
        ours = streamed or matrix
        dense = by_provider.get("dense-torch")
        if ours is not None and dense is not None and abs(ours["mAP"] - dense["mAP"]) > 1e-3:
            failures.append(f"{size}: fgreid mAP {ours['mAP']} vs dense {dense['mAP']}")

    # rows of other (size, provider, Q, G, D) already in the file are kept: sizes can be run apart
    key = lambda r: (r["size"], r["provider"], r["Q"], r["G"], r["D"])  # noqa: E731
    fresh = {key(r) for r in rows}
    kept = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        # a file of the older format had one run's time and note at the top: they stay with its rows
        inherited = {k: previous[k] for k in ("time", "note") if k in previous}
        kept = [{**inherited, **r} for r in previous.get("rows", []) if key(r) not in fresh]
    results = {
        "bench": "rerank", "device": cpu_name() if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(), "params": PARAMS,
        "rows": kept + rows, "failures": failures,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
