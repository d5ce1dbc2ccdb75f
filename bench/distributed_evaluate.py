"""MSMT17-size rank evaluation from features: one process vs the gallery sharded over N ranks
(fgreid_ops.distributed.evaluate_features, gloo, CPU) on one machine. Seconds and peak RSS per
process, written to bench/results/distributed_evaluate.json.

    python bench/distributed_evaluate.py                 # full size: 11,659 × 82,161, D = 2048
    python bench/distributed_evaluate.py --scale 0.02    # a quick check of the script

Every run is a fresh process (so its peak RSS is its own): the one-process run holds all the
features; each rank generates only the queries and its shard of the gallery (row blocks from
fixed seeds, so the ranks' shards together are exactly the one-process gallery). Features are
identity centres plus noise (matches rank near the top, as with a trained model). Threads: the
one process gets --threads, each rank --threads / N. The run fails (exit 1) when a run fails or
the sharded metrics differ from the one-process metrics by more than rounding can explain."""

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import sys
import time

import torch
import torch.multiprocessing as mp

try:
    import fgreid_ops
except ImportError:  # run from a source checkout: its fgreid_ops (the spawned ranks inherit sys.path)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fgreid_ops

MSMT17 = dict(queries=11659, gallery=82161, dim=2048, ids=3060, cams=15)
BLOCK = 4096  # rows generated per seed


def _rows(kind, lo, hi, dim, ids, cams, seed):
    """Rows [lo, hi) of the query ("q") or gallery ("g") set: features, pids, camids, filled in
    place block by block (no second copy of the features at any time)."""
    centres = torch.randn(ids, dim, generator=torch.Generator().manual_seed(seed))
    feats = torch.empty(hi - lo, dim)
    pids = torch.empty(hi - lo, dtype=torch.int64)
    camids = torch.empty(hi - lo, dtype=torch.int64)
    for b in range(lo // BLOCK, -(-hi // BLOCK)):
        g = torch.Generator().manual_seed(seed * 7919 + (1 if kind == "q" else 2) * 1_000_003 + b)
        block_pids = torch.randint(0, ids, (BLOCK,), generator=g)
        block_cams = torch.randint(0, cams, (BLOCK,), generator=g)
        noise = torch.randn(BLOCK, dim, generator=g)
        start = b * BLOCK
        a, z = max(lo, start), min(hi, start + BLOCK)
        if a >= z:
            continue
        keep = slice(a - start, z - start)
        feats[a - lo:z - lo] = centres[block_pids[keep]] + 4.0 * noise[keep]
        pids[a - lo:z - lo], camids[a - lo:z - lo] = block_pids[keep], block_cams[keep]
    return feats, pids, camids


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _summary(result):
    return {"mAP": float(result.mAP), "mINP": float(result.mINP), "rank1": float(result.cmc[0]),
            "rank5": float(result.cmc[4]), "num_skipped": int(result.num_skipped)}


def _run(rank, world, port, sizes, cfg, out_dir):
    torch.set_num_threads(cfg["threads_per_process"])
    rss_start = _peak_rss_mb()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=3600))
    shape = (cfg["dim"], cfg["ids"], cfg["cams"], cfg["seed"])
    q, q_pids, q_cams = _rows("q", 0, cfg["queries"], *shape)
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    g, g_pids, g_cams = _rows("g", lo, hi, *shape)
    features_mb = (q.numel() + g.numel()) * 4 / 2**20
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    if world > 1:
        result = fgreid_ops.distributed.evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams)
    else:
        result = fgreid_ops.evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams)
    seconds = time.perf_counter() - start
    row = {"rank": rank, "gallery_rows": hi - lo, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
           "rss_after_import_mb": rss_start, "features_mb": features_mb, "metrics": _summary(result)}
    with open(os.path.join(out_dir, f"world{world}_rank{rank}.json"), "w") as f:
        json.dump(row, f)
    if world > 1:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world, sizes, cfg, out_dir):
    cfg = dict(cfg, threads_per_process=max(1, cfg["threads"] // world))
    mp.start_processes(_run, args=(world, _free_port(), sizes, cfg, out_dir), nprocs=world, join=True,
                       start_method="spawn")
    return [json.load(open(os.path.join(out_dir, f"world{world}_rank{r}.json"))) for r in range(world)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the MSMT17 query and gallery sizes")
    parser.add_argument("--dim", type=int, default=MSMT17["dim"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads in all (split over the ranks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                         "distributed_evaluate.json"))
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1 or args.ranks < 2:
        parser.error("expected 0 < --scale <= 1 and --ranks >= 2")
    cfg = dict(queries=max(1, round(MSMT17["queries"] * args.scale)), gallery=max(args.ranks,
               round(MSMT17["gallery"] * args.scale)), dim=args.dim, ids=max(2, round(MSMT17["ids"] * args.scale)),
               cams=MSMT17["cams"], seed=args.seed, threads=args.threads)
    G, N = cfg["gallery"], args.ranks
    shards = [G * (r + 1) // N - G * r // N for r in range(N)]
    tmp = os.path.join(os.path.dirname(args.output), ".distributed_evaluate_tmp")
    os.makedirs(tmp, exist_ok=True)
    print(f"{cfg['queries']} queries × {G} gallery, D = {cfg['dim']}: one process, then {N} ranks", file=sys.stderr)
    one = _launch(1, [G], cfg, tmp)[0]
    ranks = _launch(N, shards, cfg, tmp)
    for name in os.listdir(tmp):
        os.remove(os.path.join(tmp, name))
    os.rmdir(tmp)

    want = one["metrics"]
    gaps = {k: max(abs(r["metrics"][k] - want[k]) for r in ranks) for k in want}
    same_on_every_rank = all(r["metrics"] == ranks[0]["metrics"] for r in ranks)
    # a GEMM of another shape may round a distance in its last bit and swap two items whose
    # distances differ by that much: a few such swaps move mAP by ~1/(queries × matches); a bug more
    agree = same_on_every_rank and gaps["num_skipped"] == 0 and max(gaps.values()) <= 1e-4
    out = {
        "config": {**cfg, "scale": args.scale, "ranks": N, "shards": shards, "backend": "gloo", "device": "cpu",
                   "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   "note": args.note},
        "one_process": one,
        "sharded": {"seconds": max(r["seconds"] for r in ranks), "peak_rss_mb_max": max(r["peak_rss_mb"] for r in ranks),
                    "ranks": ranks},
        "metrics_gap": gaps,
        "metrics_agree": agree,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    print(f"one process: {one['seconds']:.2f} s, peak RSS {one['peak_rss_mb']:.0f} MB; "
          f"{N} ranks: {out['sharded']['seconds']:.2f} s, peak RSS per rank "
          + ", ".join(f"{r['peak_rss_mb']:.0f} MB" for r in ranks) + f"; metrics gap {max(gaps.values()):.2e}",
          file=sys.stderr)
    if not agree:
        print(f"sharded metrics differ from one process: {gaps}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
