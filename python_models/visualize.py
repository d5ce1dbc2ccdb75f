"""Pictures of what a model does: ranked-list strips (as torchreid's ``visualize_ranked_results``)
and training curves. Pillow and matplotlib only.

- ``rank_visualizer`` / ``write_ranked_results``: per query one PNG, the query (grey border) then
  its top-k gallery items by ascending distance (ties: lower gallery index), a green border for the
  same identity, red for another; gallery items of the query's identity *and* camera are left out,
  as the evaluation protocol does. Also ``ranks.json``: per query, the files, distances and matches.
- ``write_curves``: ``curves.png`` with the loss terms per step (left) and the metrics of each
  evaluation (right), from the ``result.json`` that ``python -m python_models.train`` writes.
"""

import json
import os

import numpy as np
import torch
from PIL import Image

import fgreid_ops

MATCH = (0, 200, 0)
NON_MATCH = (220, 0, 0)
QUERY = (128, 128, 128)
BORDER = 5  # pixels, inside each cell
GAP = 10  # between gallery cells
QUERY_GAP = 60  # between the query and the first gallery cell


def _image_path(item) -> str:
    """A Sample's image, or the middle frame of a Tracklet."""
    frames = getattr(item, "frames", None)
    return frames[len(frames) // 2] if frames else item.path


def _cell(path: str, size: tuple[int, int], colour) -> Image.Image:
    h, w = size
    img = Image.open(path).convert("RGB").resize((w - 2 * BORDER, h - 2 * BORDER), Image.BILINEAR)
    cell = Image.new("RGB", (w, h), colour)
    cell.paste(img, (BORDER, BORDER))
    return cell


def strip_width(topk: int, width: int) -> int:
    return (topk + 1) * width + QUERY_GAP + (topk - 1) * GAP


def cell_left(rank: int, width: int) -> int:
    """x of the left edge of gallery cell `rank` (0-based) in a strip."""
    return width + QUERY_GAP + rank * (width + GAP)


def ranked_lists(distmat: torch.Tensor, q_pids, g_pids, q_camids, g_camids, topk: int = 10):
    """Per query row of `distmat` [Q, G]: (gallery indices, distances, matches) of its top-k, by
    ascending distance with ties to the lower gallery index, without the gallery items of the
    query's own pid and camera."""
    q_pids, g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
    q_camids, g_camids = torch.as_tensor(q_camids), torch.as_tensor(g_camids)
    out = []
    for i in range(distmat.shape[0]):
        order = torch.sort(distmat[i], stable=True).indices
        same = g_pids[order] == q_pids[i]
        kept = order[~(same & (g_camids[order] == q_camids[i]))][:topk]
        out.append((kept.tolist(), distmat[i, kept].tolist(), (g_pids[kept] == q_pids[i]).tolist()))
    return out


def write_ranked_results(distmat, query, gallery, out_dir: str, topk: int = 10, size=(256, 128),
                         first: int = 0) -> list[dict]:
    """One strip per row of `distmat` [Q, G] (query[i] against `gallery`, items with .pid, .camid and
    .path or .frames) into `out_dir`, numbered from `first`; returns what each strip shows."""
    os.makedirs(out_dir, exist_ok=True)
    h, w = size
    lists = ranked_lists(distmat, [q.pid for q in query], [g.pid for g in gallery],
                         [q.camid for q in query], [g.camid for g in gallery], topk)
    index = []
    for i, (q, (ranked, dists, matches)) in enumerate(zip(query, lists), start=first):
        strip = Image.new("RGB", (strip_width(topk, w), h), (255, 255, 255))
        strip.paste(_cell(_image_path(q), size, QUERY), (0, 0))
        for r, (g, match) in enumerate(zip(ranked, matches)):
            strip.paste(_cell(_image_path(gallery[g]), size, MATCH if match else NON_MATCH), (cell_left(r, w), 0))
        name = f"{i:05d}_{os.path.splitext(os.path.basename(_image_path(q)))[0]}.png"
        strip.save(os.path.join(out_dir, name))
        index.append({"strip": name, "query": _image_path(q), "pid": q.pid, "camid": q.camid,
                      "gallery": [_image_path(gallery[g]) for g in ranked], "distance": dists, "match": matches})
    return index


def _take(feats, idx):
    idx = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[idx] for k, v in feats.items()} if isinstance(feats, dict) else feats[idx]


def rank_visualizer(data, out_dir: str, num_queries: int | None = None, topk: int = 10, chunk: int = 256,
                    rerank: dict | None = None):
    """A callback for ``evaluate_model(..., on_features=...)``: from the query and gallery features
    (the video model's: a dict per stream, distance eq. 4), writes the strips of the first
    `num_queries` queries (all by default) and ``ranks.json`` into `out_dir`. With `rerank`
    (k1, k2, lambda_value) the lists follow the re-ranked distances, as the metrics do; those
    come from fgreid_ops.rerank over all queries, a [Q, G] matrix."""
    from .fg_video import fg_distance

    def on_features(q_feats, g_feats):
        query, gallery = data.query, data.gallery
        q_idx, g_idx = list(range(len(query))), list(range(len(gallery)))
        if data.name == "fgpr":  # one list of tracklets, split by camera
            (q_idx, g_idx), gallery = fgpr_split(data.query), data.query
        g = _take(g_feats, g_idx)
        reranked = None
        if rerank is not None:  # every query shapes the re-ranked distances, so all of them go in
            reranked = fgreid_ops.rerank(_take(q_feats, q_idx).float(), g.float(), **rerank)
        q_idx = q_idx[:num_queries]
        index = []
        for start in range(0, len(q_idx), chunk):  # never the whole query x gallery matrix
            rows = q_idx[start:start + chunk]
            q = _take(q_feats, rows)
            if reranked is not None:
                distmat = reranked[start:start + len(rows)]
            else:
                distmat = fg_distance(q, g) if isinstance(q, dict) else torch.cdist(q.float(), g.float())
            index += write_ranked_results(distmat, [query[i] for i in rows], [gallery[j] for j in g_idx],
                                          out_dir, topk, first=start)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "ranks.json"), "w") as f:
            json.dump(index, f, indent=1)
        print(f"wrote {len(index)} ranked-list strips to {out_dir}")

    return on_features


def fgpr_split(tracklets) -> tuple[list[int], list[int]]:
    """FGPR's all-group setting, first direction: probes from each group's second camera, gallery
    from its first (python_models.evaluate.fgpr_protocol also runs the swap)."""
    cams = {}
    for t in tracklets:
        cams.setdefault(t.group, set()).add(t.camid)
    cams = {g: sorted(c) for g, c in cams.items()}
    probes = [i for i, t in enumerate(tracklets) if len(cams[t.group]) > 1 and t.camid == cams[t.group][1]]
    gallery = [i for i, t in enumerate(tracklets) if t.camid == cams[t.group][0]]
    return probes, gallery


# ---------------------------------------------------------------------------------------- curves

def _headline(metrics: dict) -> dict:
    """mAP, rank-1 (and mINP) in percent from one evaluation (FGPR: its "all" setting)."""
    m = metrics.get("all", metrics) if "cmc" not in metrics else metrics
    out = {"mAP": 100 * m["mAP"], "rank-1": 100 * m["cmc"][0]}
    if "mINP" in m:
        out["mINP"] = 100 * m["mINP"]
    return out


def write_curves(result: dict, path: str) -> str:
    """curves.png from a training result: {"history": {stage: [loss per step]}, "loss_terms": {stage:
    [{term: value} per step]}, "evaluations": [{"epoch": e, "metrics": {...}}]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    start = 0
    for stage, losses in result["history"].items():
        if not losses:
            continue
        steps = np.arange(start, start + len(losses))
        ax_loss.plot(steps, losses, lw=1.2, label=f"{stage}: total")
        terms = result.get("loss_terms", {}).get(stage, [])
        for term in sorted({k for t in terms for k in t}):
            ax_loss.plot(steps[:len(terms)], [t.get(term, np.nan) for t in terms], lw=0.8, label=f"{stage}: {term}")
        if start:
            ax_loss.axvline(start, color="k", lw=0.6, ls=":")
        start += len(losses)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    if start:
        ax_loss.legend(fontsize=7)
    evaluations = result.get("evaluations") or []
    if evaluations:
        epochs = [e["epoch"] for e in evaluations]
        heads = [_headline(e["metrics"]) for e in evaluations]
        for key in heads[0]:
            ax_eval.plot(epochs, [h.get(key, np.nan) for h in heads], marker="o", label=key)
        ax_eval.legend(fontsize=7)
    else:
        ax_eval.text(0.5, 0.5, "no evaluation in this run", ha="center", va="center", transform=ax_eval.transAxes)
    ax_eval.set_xlabel("epoch")
    ax_eval.set_ylabel("%")
    ax_eval.set_title("evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
