"""Evaluate a checkpoint: ``python -m python_models.evaluate --dataset market1501 --root DIR
--checkpoint runs/cuhs/last.pt``.

Protocols (all through ``fgreid_ops.evaluate``):
- Market-1501 / DukeMTMC-reID / MSMT17: single query; gallery items with the query's pid and
  camera removed; CMC, mAP, mINP on Euclidean distances of the inference features (CUHS: the
  concatenation of its four features).
- MARS: the same on tracklets; a tracklet's feature is the mean over its segments.
- FGPR (Yin et al. 2020): per group, gallery = camera A tracklets and probes = camera B, then the
  cameras swapped, the two averaged; "all" pools every group's camera A (resp. B) tracklets,
  each group is also reported on its own (single-group setting). The video model's distance
  is eq. 4 (sum of the streams' Euclidean distances).

Under torchrun (``torchrun --nproc_per_node=N -m python_models.evaluate ...``, docs/distributed.md)
the image protocols are sharded: each rank extracts the features of its slice of the queries and
of the gallery, the query features are all-gathered, and
``fgreid_ops.distributed.evaluate_features`` ranks every query against the sharded gallery (the
same metrics as one process; memory per rank O(gallery / N)). MARS and FGPR (the video model's
eq. 4 distance matrix) run whole on every rank. Only rank 0 prints and writes ``--json``.

``--rerank`` re-ranks the Euclidean distances with k-reciprocal encoding (Zhong et al. 2017,
``fgreid_ops.evaluate_features(..., rerank=...)``: streamed, never the Q×G matrix; under torchrun
every rank gathers the gallery, since each row's neighbours depend on all of it). It needs single
features: the video model's per-stream eq. 4 distance is not re-ranked.
"""

import argparse
import json
import sys

import torch
from torch.utils.data import DataLoader

import fgreid_ops
from fgreid_ops.checks.rerank import rerank_params

from . import launch as launcher
from .config import build_model
from .datasets import ImageDataset, SegmentDataset, load_dataset
from .fg_video import FGVideoNet, fg_distance
from .transforms import ImageTransform, SegmentTransform

EXAMPLES = """example:
  fgreid-evaluate --checkpoint runs/cuhs-market/last.pt --json metrics.json --visualize-ranks runs/cuhs-market/ranks
  (the same as: python -m python_models.evaluate --checkpoint ...)"""

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a nicety
    def tqdm(iterable, **_):
        return iterable


def metrics_dict(result) -> dict:
    """fgreid_ops.evaluate's result as {"cmc": [...], "mAP": float, "mINP": float}."""
    if isinstance(result, dict):
        cmc, mean_ap, minp = result["cmc"], result["mAP"], result.get("mINP")
    elif hasattr(result, "cmc"):
        cmc, mean_ap, minp = result.cmc, result.mAP, getattr(result, "mINP", None)
    else:
        cmc, mean_ap, minp = (tuple(result) + (None,))[:3]
    cmc = torch.as_tensor(cmc, dtype=torch.float64).flatten().tolist()
    out = {"cmc": cmc, "mAP": float(mean_ap)}
    if minp is not None:
        out["mINP"] = float(minp)
    if getattr(result, "num_skipped", None) is not None:
        out["num_skipped"] = int(result.num_skipped)
    return out


def summary(m: dict) -> str:
    ranks = ", ".join(f"R{r}={100 * m['cmc'][r - 1]:.1f}" for r in (1, 5, 10) if r <= len(m["cmc"]))
    extra = f", mINP={100 * m['mINP']:.1f}" if "mINP" in m else ""
    return f"mAP={100 * m['mAP']:.1f}, {ranks}{extra}"


def _to_device(x, device):
    return x.to(device, non_blocking=True)


@torch.no_grad()
def image_features(model, samples, cfg, device, batch_size=128, workers=4):
    """Inference features [N, D] (float32, on CPU) of the images in `samples`."""
    ds = ImageDataset(samples, ImageTransform(cfg["height"], cfg["width"], train=False))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    model.eval()
    bar = tqdm(loader, desc="features", leave=False, disable=fgreid_ops.distributed.rank() != 0)
    feats = [model(_to_device(x, device)).float().cpu() for x, *_ in bar]
    return torch.cat(feats) if feats else torch.zeros(0, 0)


@torch.no_grad()
def tracklet_features(model, tracklets, cfg, device, batch_size=8, workers=4):
    """Per-tracklet features: the mean over the tracklet's segments; a dict of [N, D] per stream
    for the video model, a [N, D] tensor for an image model (frames averaged)."""
    ds = SegmentDataset(tracklets, SegmentTransform(cfg["height"], cfg["width"]), cfg["seq_len"], mode="all")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    model.eval()
    segments, owner = {}, []
    for x, kp, _, _, index in tqdm(loader, desc="features", leave=False):
        x = _to_device(x, device)
        if isinstance(model, FGVideoNet):
            out = model(x, _to_device(kp, device) if model.joint_stream else None)
        else:
            out = {"feat": model(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1).mean(1)}
        for k, v in out.items():
            segments.setdefault(k, []).append(v.float().cpu())
        owner.append(index)
    owner = torch.cat(owner)
    feats = {k: fgreid_ops.tracklet_features(torch.cat(v), owner, len(tracklets)) for k, v in segments.items()}
    return feats if isinstance(model, FGVideoNet) else feats["feat"]


def distance(query, gallery) -> torch.Tensor:
    if isinstance(query, dict):
        return fg_distance(query, gallery)
    return torch.cdist(query, gallery)


def _ids(items):
    return torch.tensor([s.pid for s in items]), torch.tensor([s.camid for s in items])


def market_protocol(q_feats, g_feats, query, gallery, max_rank=50, rerank=None) -> dict:
    """Single features: the streamed ``evaluate_features`` (Euclidean; never the whole Q×G
    matrix, which MSMT17-size galleries need), re-ranked with `rerank` ({"k1", "k2",
    "lambda_value"}) unless None; the video model's per-stream features: the eq. 4 distance
    matrix, then ``evaluate``."""
    q_pids, q_cams = _ids(query)
    g_pids, g_cams = _ids(gallery)
    max_rank = min(max_rank, len(gallery))
    if isinstance(q_feats, dict):
        if rerank is not None:
            raise ValueError("python_models.evaluate: --rerank needs single features; the video model's "
                             "per-stream features are ranked by the eq. 4 distance, which is not re-ranked")
        result = fgreid_ops.evaluate(distance(q_feats, g_feats), q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    else:
        result = fgreid_ops.evaluate_features(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                                              rerank=rerank)
    return metrics_dict(result)


def _take(feats, idx):
    idx = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[idx] for k, v in feats.items()} if isinstance(feats, dict) else feats[idx]


def fgpr_protocol(feats, tracklets, rerank=None) -> dict:
    """{"all": metrics, <group>: metrics}; each the mean of (A gallery, B probes) and the swap."""
    groups = sorted({t.group for t in tracklets})
    cams = {g: sorted({t.camid for t in tracklets if t.group == g}) for g in groups}

    def one_way(gallery_side, group_list):
        q = [i for i, t in enumerate(tracklets) if t.group in group_list and t.camid == cams[t.group][1 - gallery_side]]
        g = [i for i, t in enumerate(tracklets) if t.group in group_list and t.camid == cams[t.group][gallery_side]]
        return market_protocol(_take(feats, q), _take(feats, g), [tracklets[i] for i in q],
                               [tracklets[i] for i in g], max_rank=5, rerank=rerank)

    def both_ways(group_list):
        a, b = one_way(0, group_list), one_way(1, group_list)
        n = min(len(a["cmc"]), len(b["cmc"]))
        out = {"cmc": [(x + y) / 2 for x, y in zip(a["cmc"][:n], b["cmc"][:n])], "mAP": (a["mAP"] + b["mAP"]) / 2}
        if "mINP" in a and "mINP" in b:
            out["mINP"] = (a["mINP"] + b["mINP"]) / 2
        return out

    return {"all": both_ways(groups), **{g: both_ways([g]) for g in groups}}


def _my_slice(items):
    """This rank's contiguous slice of `items` (rank 0 the first)."""
    rank, world = fgreid_ops.distributed.rank(), fgreid_ops.distributed.world_size()
    return items[len(items) * rank // world: len(items) * (rank + 1) // world]


def sharded_market_protocol(model, data, cfg, device, batch_size, workers, max_rank=50, rerank=None) -> dict:
    """market_protocol over the ranks: features of this rank's slice of the queries and of the
    gallery; the query features all-gathered; fgreid_ops.distributed.evaluate_features on the
    sharded gallery. Tensors live on `device` (CUDA under NCCL, CPU under gloo)."""
    query, gallery = _my_slice(data.query), _my_slice(data.gallery)
    q_local = image_features(model, query, cfg, device, batch_size, workers)
    g_feats = image_features(model, gallery, cfg, device, batch_size, workers)
    # a rank with an empty slice learns the feature width from the others
    width = torch.tensor([max([f.shape[1] for f in (q_local, g_feats) if f.shape[0]], default=0)], device=device)
    torch.distributed.all_reduce(width, op=torch.distributed.ReduceOp.MAX)
    q_local, g_feats = (f if f.shape[0] else f.new_zeros(0, int(width)) for f in (q_local, g_feats))
    q_feats = fgreid_ops.distributed.all_gather_rows(q_local.to(device))
    q_pids, q_cams = _ids(data.query)
    g_pids, g_cams = _ids(gallery) if gallery else (torch.zeros(0, dtype=torch.int64),) * 2
    result = fgreid_ops.distributed.evaluate_features(
        q_feats, g_feats.to(device), q_pids.to(device), g_pids.to(device), q_cams.to(device), g_cams.to(device),
        max_rank=min(max_rank, len(data.gallery)), rerank=rerank)
    return metrics_dict(result)


def evaluate_model(model, data, cfg, device, batch_size=None, workers=4, on_features=None, rerank=None) -> dict:
    """Metrics of `model` on `data` with the dataset's protocol ({"all": …} per FGPR group);
    sharded over the ranks under torch.distributed for the image datasets; re-ranked with
    `rerank` (a dict of k1, k2, lambda_value) unless None.
    `on_features(q_feats, g_feats)`, when given, also gets the features (FGPR: all tracklets twice;
    one process only)."""
    if data.name in ("mars", "fgpr"):
        bs = batch_size or 8
        feats = tracklet_features(model, data.query if data.name == "fgpr" else data.query + data.gallery,
                                  cfg, device, bs, workers)
        if data.name == "fgpr":
            if on_features is not None:
                on_features(feats, feats)
            return fgpr_protocol(feats, data.query, rerank)
        nq = len(data.query)
        q = _take(feats, range(nq))
        g = _take(feats, range(nq, nq + len(data.gallery)))
        if on_features is not None:
            on_features(q, g)
        return market_protocol(q, g, data.query, data.gallery, rerank=rerank)
    bs = batch_size or 128
    if fgreid_ops.distributed.world_size() > 1:
        return sharded_market_protocol(model, data, cfg, device, bs, workers, rerank=rerank)
    q = image_features(model, data.query, cfg, device, bs, workers)
    g = image_features(model, data.gallery, cfg, device, bs, workers)
    if on_features is not None:
        on_features(q, g)
    return market_protocol(q, g, data.query, data.gallery, rerank=rerank)


def format_metrics(metrics: dict) -> str:
    if "cmc" in metrics:
        return summary(metrics)
    return "\n".join(f"  {name}: {summary(m)}" for name, m in metrics.items())


def load_checkpoint(path, device="cpu"):
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = build_model(ckpt["config"], ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=EXAMPLES)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by python_models.train")
    parser.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    parser.add_argument("--root", default=None, help="default: the checkpoint's dataset root")
    parser.add_argument("--split", type=int, default=None, help="FGPR split seed (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference", action="store_true", help="run every op through its plain-PyTorch reference")
    parser.add_argument("--json", default=None, help="also write the metrics to this file")
    parser.add_argument("--visualize-ranks", metavar="DIR", default=None,
                        help="write per query a PNG of its top-10 gallery items (green: match, red: not) into DIR "
                             "(one process: not under torchrun)")
    parser.add_argument("--num-queries", type=int, default=None, metavar="N",
                        help="with --visualize-ranks: only the first N queries (default: all)")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking of the distances (streamed; single features only)")
    parser.add_argument("--k1", type=int, default=20, help="with --rerank: k of the k-reciprocal sets (default 20)")
    parser.add_argument("--k2", type=int, default=6, help="with --rerank: neighbours of the query expansion (default 6)")
    parser.add_argument("--lambda-value", type=float, default=0.3,
                        help="with --rerank: weight of the original distance (default 0.3)")
    args = parser.parse_args(argv)
    rerank = None
    if args.rerank:
        rerank = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value}
        try:  # a bad value fails here, before the features are extracted
            rerank_params("evaluate_features", rerank)
        except (TypeError, ValueError) as e:
            parser.error(f"--rerank: {e}")
    launch = launcher.start(args.device)
    args.device = launch.device

    model, ckpt = load_checkpoint(args.checkpoint, args.device)
    if rerank is not None and isinstance(model, FGVideoNet):
        raise SystemExit("python_models.evaluate: --rerank needs single features; the video model ranks by its "
                         "per-stream eq. 4 distance, which is not re-ranked")
    cfg = ckpt["config"]
    name, root = args.dataset or cfg["dataset"], args.root or cfg["root"]
    split = args.split if args.split is not None else cfg.get("split", 0)
    data = load_dataset(name, root, split=split)
    launch.log(data.summary())
    if args.visualize_ranks and launch.distributed and data.name not in ("mars", "fgpr"):
        # the sharded evaluation never holds the whole gallery's features on one rank
        raise SystemExit("python_models.evaluate: --visualize-ranks needs one process (the gallery is sharded "
                         "under torchrun); run it without torchrun")
    on_features = None
    if args.visualize_ranks and launch.main:
        from .visualize import rank_visualizer

        on_features = rank_visualizer(data, args.visualize_ranks, args.num_queries, rerank=rerank)
    with fgreid_ops.use_reference(args.reference):
        metrics = evaluate_model(model, data, cfg, args.device, args.batch_size, args.workers, on_features, rerank)
    launcher.finish(launch)
    if not launch.main:
        return metrics
    print(f"{name}: " + format_metrics(metrics))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=1)
    return metrics


if __name__ == "__main__":
    main()
