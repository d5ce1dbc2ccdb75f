"""Video protocols over the rank-evaluation core (docs/ops.md#evaluate): MARS and FGPR (Yin et al., IJCV 2020).

Both rank tracklets: a tracklet's feature is the mean of its frames' features
(`tracklet_features`), then the Market-1501 protocol of `fgreid_ops.evaluate_features` applies.
"""

import dataclasses

import torch

from . import _checks as checks
from .ops.evaluate import EvaluationResult, evaluate_features


def tracklet_features(frame_feats: torch.Tensor, tracklet_ids: torch.Tensor, num_tracklets: int | None = None) -> torch.Tensor:
    """[T, D] mean of the frame features of each tracklet (torchreid's "avg" pooling).

    frame_feats: [F, D] float; tracklet_ids: [F] integer in [0, T), any order. T defaults to
    max(tracklet_ids) + 1. Accumulates in float32 (float64 for float64) and returns that dtype.
    Every tracklet needs at least one frame."""
    op = "tracklet_features"
    checks.check_tensor(op, "frame_feats", frame_feats)
    checks.check_dim(op, "frame_feats", frame_feats, 2, "(num_frames, D)")
    checks.check_float_dtype(op, "frame_feats", frame_feats)
    checks.check_tensor(op, "tracklet_ids", tracklet_ids)
    if tracklet_ids.dtype.is_floating_point or tracklet_ids.dtype == torch.bool:
        raise TypeError(f"fgreid_ops.{op}: expected tracklet_ids to be an integer tensor, got {tracklet_ids.dtype}")
    if tracklet_ids.dim() != 1 or tracklet_ids.shape[0] != frame_feats.shape[0]:
        raise ValueError(f"fgreid_ops.{op}: expected tracklet_ids of shape [F]=[{frame_feats.shape[0]}], "
                         f"got {list(tracklet_ids.shape)}")
    checks.check_same_device(op, "tracklet_ids", tracklet_ids, "frame_feats", frame_feats)
    checks.check_nonempty_batch(op, "frame_feats", frame_feats)
    ids = tracklet_ids.to(torch.int64)
    if int(ids.min()) < 0 or (num_tracklets is not None and int(ids.max()) >= num_tracklets):
        raise ValueError(f"fgreid_ops.{op}: expected tracklet_ids in [0, num_tracklets), "
                         f"got values in [{int(ids.min())}, {int(ids.max())}]")
    T = int(ids.max()) + 1 if num_tracklets is None else num_tracklets
    acc = torch.float64 if frame_feats.dtype == torch.float64 else torch.float32
    sums = torch.zeros(T, frame_feats.shape[1], dtype=acc, device=frame_feats.device)
    sums.index_add_(0, ids, frame_feats.to(acc))
    frames = torch.bincount(ids, minlength=T)
    if bool((frames == 0).any()):
        empty = torch.nonzero(frames == 0)[:5, 0].tolist()
        raise ValueError(f"fgreid_ops.{op}: expected every tracklet to have at least one frame; tracklets {empty} have none")
    return sums / frames[:, None].to(acc)


def evaluate_mars(q_frame_feats, q_tracklet_ids, g_frame_feats, g_tracklet_ids, q_pids, g_pids, q_camids,
                  g_camids, max_rank: int = 50, **kwargs) -> EvaluationResult:
    """MARS: tracklet features are the mean of their frames (`tracklet_features`, with
    T = len(q_pids) query and len(g_pids) gallery tracklets), then the image protocol of
    `evaluate_features` (same-pid-same-camera removal, skipped queries, ties to the lower index).
    MARS labels junk tracklets pid -1 and distractors pid 0, as Market-1501: pass junk_pid=-1 to
    ignore junk. kwargs go to `evaluate_features` (metric, memory_budget, progress, ...)."""
    q_feats = tracklet_features(q_frame_feats, q_tracklet_ids, len(q_pids))
    g_feats = tracklet_features(g_frame_feats, g_tracklet_ids, len(g_pids))
    return evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank, **kwargs)


@dataclasses.dataclass
class FGPRResult:
    """FGPR scores as fractions (x100 for the paper's %): ``all_group`` and each of
    ``single_group[group]`` is {"rank1", "rank5", "mAP"}, the mean of the two cases (gallery from
    the group's first camera, probes from its second; then swapped). ``cases`` keeps the
    EvaluationResult of each case, keyed ("all" or a group, gallery camera set index 0/1)."""

    all_group: dict
    single_group: dict
    cases: dict = dataclasses.field(repr=False, default_factory=dict)


def _group_cameras(camids, groups):
    """{group: (first camera, second camera)} — each group must have exactly two cameras."""
    cameras = {}
    for group in torch.unique(groups).tolist():
        cams = torch.unique(camids[groups == group]).tolist()
        if len(cams) != 2:
            raise ValueError(f"fgreid_ops.evaluate_fgpr: expected every group to have exactly two cameras, "
                             f"group {group} has {cams}")
        cameras[group] = tuple(cams)
    return cameras


def evaluate_fgpr(feats, pids, camids, groups, **kwargs) -> FGPRResult:
    """The FGPR protocol of Yin et al. (IJCV 2020, §4.1) on tracklet features.

    FGPR has three groups of people dressed alike (blue: cameras 1-2, white: 2-3, green: 4-5),
    one sequence per identity and camera. For a group, case 1 takes the sequences of its first
    camera (the lower camid) as the gallery and those of the second as probes; case 2 swaps them;
    the score is the mean of the two cases' rank-1, rank-5 and mAP.
    - single-group setting: each group alone;
    - all-group setting: the two cases over all groups at once — the gallery is the union of every
      group's first-camera (then second-camera) sequences, the probes the rest — so probes also
      meet look-alikes of the other groups. (The paper's text leaves open whether "all-group"
      pools the groups or averages the per-group scores; pooling is the reading that makes it a
      harder, distinct setting, and the one used here.)
    The paper averages 10 train/test splits: call this once per split.

    Args:
        feats: [N, D] tracklet features (e.g. `tracklet_features` of frame features).
        pids, camids, groups: [N] integer tensors; groups holds the group id of each tracklet.
        kwargs: passed to `evaluate_features` (metric, memory_budget, backend, ...).
    """
    op = "evaluate_fgpr"
    checks.check_tensor(op, "feats", feats)
    checks.check_dim(op, "feats", feats, 2, "(N, D)")
    for arg, t in (("pids", pids), ("camids", camids), ("groups", groups)):
        checks.check_tensor(op, arg, t)
        if t.dim() != 1 or t.shape[0] != feats.shape[0]:
            raise ValueError(f"fgreid_ops.{op}: expected {arg} of shape [N]=[{feats.shape[0]}], got {list(t.shape)}")
        checks.check_same_device(op, arg, t, "feats", feats)
    checks.check_nonempty_batch(op, "feats", feats)
    cameras = _group_cameras(camids, groups)
    side = torch.zeros_like(groups, dtype=torch.bool)  # True: the group's second camera
    for group, (_, second) in cameras.items():
        side |= (groups == group) & (camids == second)

    cases = {}

    def run(key, members):
        scores = []
        for gallery_side in (False, True):
            g = members & (side == gallery_side)
            q = members & (side != gallery_side)
            result = evaluate_features(feats[q], feats[g], pids[q], pids[g], camids[q], camids[g],
                                       max_rank=5, **kwargs)
            cases[(key, int(gallery_side))] = result
            scores.append(result)
        return {"rank1": sum(r.rank(1) for r in scores) / 2, "rank5": sum(r.rank(5) for r in scores) / 2,
                "mAP": sum(float(r.mAP) for r in scores) / 2}

    everyone = torch.ones_like(side)
    all_group = run("all", everyone)
    single_group = {group: run(group, groups == group) for group in cameras}
    return FGPRResult(all_group, single_group, cases)


__all__ = ["tracklet_features", "evaluate_mars", "evaluate_fgpr", "FGPRResult"]
