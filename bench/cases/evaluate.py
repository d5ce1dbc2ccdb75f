"""Rank evaluation: Market-1501 (3,368 x 15,913), MSMT17 (11,659 x 82,161) and, on GPU, a
1,000,000-item gallery. Ids follow the datasets' shape: Market has 750 test ids over 6 cameras
plus 1/6 distractors (pid 0); MSMT17 3,060 ids over 15 cameras. Distances and features are random.

"eager" is the plain-PyTorch reference (sorts the whole [Q, G] matrix; fgreid_ops.reference),
"compile" its torch.compile, "fgreid" fgreid_ops.evaluate / evaluate_features. On this repo's
2-core CI machine the reference takes ~45 s at Market size (torchreid's python evaluator ~340 s),
so the CPU cases with a baseline use a quarter of Market; full sizes run ours alone.

    python bench/cases/evaluate.py --memory   # peak RSS (CPU) of one streamed evaluation per size
"""

import argparse
import os
import resource
import subprocess
import sys
import time

import torch

import fgreid_ops
from fgreid_ops.reference import distance_reference, evaluate_reference

try:
    from common import Case, bound, compiled, nbytes, spec
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from common import Case, bound, compiled, nbytes, spec

MARKET = dict(Q=3368, G=15913, ids=750, cams=6)
MARKET_QUARTER = dict(Q=842, G=3978, ids=188, cams=6)
MSMT17 = dict(Q=11659, G=82161, ids=3060, cams=15)
MILLION = dict(Q=3368, G=1_000_000, ids=750, cams=6)
QUICK = dict(Q=40, G=300, ids=20, cams=3)


def make_ids(Q, G, ids, cams, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    distractors = G // 6
    g_pids = torch.cat([torch.randint(1, ids + 1, (G - distractors,), generator=g), torch.zeros(distractors, dtype=torch.int64)])
    g_pids = g_pids[torch.randperm(G, generator=g)]
    out = (torch.randint(1, ids + 1, (Q,), generator=g), g_pids,
           torch.randint(0, cams, (Q,), generator=g), torch.randint(0, cams, (G,), generator=g))
    return tuple(t.to(device) for t in out)


def _label(size, D=None):
    return f"Q={size['Q']} G={size['G']}" + (f" D={D}" if D else "")


def _ids_inputs(size):
    Q, G = size["Q"], size["G"]
    return {"q_pids": spec((Q,), torch.int64), "g_pids": spec((G,), torch.int64),
            "q_camids": spec((Q,), torch.int64), "g_camids": spec((G,), torch.int64)}


def _features_reference(q, g, q_pids, g_pids, q_camids, g_camids):
    return evaluate_reference(distance_reference(q, g), q_pids, g_pids, q_camids, g_camids)


def _ours_distmat(d, *ids):
    return fgreid_ops.evaluate(d, *ids)


def _ours_features(q, g, *ids):
    return fgreid_ops.evaluate_features(q, g, *ids)


def _setup(size, D, baselines):
    """D=None: the distance-matrix form, else features of size D."""
    def setup(device):
        torch.manual_seed(0)
        ids = make_ids(**size, device=device)
        if D is None:
            data = (torch.rand(size["Q"], size["G"], device=device),)
            ref, ours = evaluate_reference, _ours_distmat
        else:
            data = (torch.randn(size["Q"], D, device=device), torch.randn(size["G"], D, device=device))
            ref, ours = _features_reference, _ours_features
        fns = {"eager": ref, "compile": compiled(ref)} if baselines else {}
        fns["fgreid"] = ours
        return {name: bound(fn, *data, *ids) for name, fn in fns.items()}
    return setup


def _distmat_case(size, baselines, note=""):
    inputs = {"distmat": spec((size["Q"], size["G"])), **_ids_inputs(size)}
    return Case("evaluate", "distmat " + _label(size), "fwd", inputs, _setup(size, None, baselines),
                nbytes(inputs["distmat"]), note)


def _features_case(size, D, baselines, note=""):
    inputs = {"q_feats": spec((size["Q"], D)), "g_feats": spec((size["G"], D)), **_ids_inputs(size)}
    return Case("evaluate", "features " + _label(size, D), "fwd", inputs, _setup(size, D, baselines),
                nbytes(inputs["q_feats"], inputs["g_feats"]), note)


def cases(device: str, size: str) -> list[Case]:
    if size == "quick":
        return [_distmat_case(QUICK, True), _features_case(QUICK, 16, True)]
    if device == "cpu":
        streamed = "streamed in 256 MiB blocks; the reference would hold several Q x G tensors"
        return [
            _distmat_case(MARKET_QUARTER, True, "a quarter of Market so the reference runs in seconds"),
            _distmat_case(MARKET, False, "reference ~45 s here, torchreid's python loop ~340 s"),
            _features_case(MARKET_QUARTER, 256, True, "D=256: the GEMM at D=2048 runs ~18 GFLOP/s here"),
            _features_case(MSMT17, 32, False, "D=32 (GEMM-bound otherwise); " + streamed),
        ]
    return [_distmat_case(MARKET, True), _features_case(MARKET, 2048, True),
            *(_features_case(s, 2048, False, "the results hold the peak GPU memory") for s in (MSMT17, MILLION))]


def _measure(size_name, D):
    """Runs one streamed evaluation in this process; prints seconds and peak RSS."""
    size = {"market": MARKET, "msmt17": MSMT17, "million": MILLION}[size_name]
    ids = make_ids(**size)
    q, g = torch.randn(size["Q"], D), torch.randn(size["G"], D)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = fgreid_ops.evaluate_features(q, g, *ids)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{size_name} {_label(size, D)}: {seconds:.1f} s, peak RSS {peak / 2**20:.2f} GiB "
          f"(features {(q.numel() + g.numel()) * 4 / 2**30:.2f} GiB, before the call {before / 2**20:.2f} GiB), "
          f"threads {torch.get_num_threads()}, rank1 {result.rank(1):.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", action="store_true", help="time and peak RSS, one subprocess per size")
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=2048, help="feature size D (default 2048)")
    parser.add_argument("--sizes", nargs="+", default=["market", "msmt17"], choices=["market", "msmt17", "million"])
    args = parser.parse_args()
    if args.size:
        _measure(args.size, args.dim)
    elif args.memory:
        for name in args.sizes:
            subprocess.run([sys.executable, __file__, "--size", name, "--dim", str(args.dim)], check=True)
    else:
        parser.print_help()
