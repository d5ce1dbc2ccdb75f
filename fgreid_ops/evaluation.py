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
    return _tracklet_features(frame_feats, tracklet_ids, num_tracklets)


def _tracklet_features(frame_feats, tracklet_ids, num_tracklets, op="tracklet_features", feats_arg="frame_feats",
                       ids_arg="tracklet_ids", count_arg="num_tracklets"):
    """tracklet_features, its errors naming the caller's arguments (feats_arg, ids_arg, count_arg)."""
    checks.check_tensor(op, feats_arg, frame_feats)
    checks.check_dim(op, feats_arg, frame_feats, 2, "(num_frames, D)")
    checks.check_float_dtype(op, feats_arg, frame_feats)
    checks.check_tensor(op, ids_arg, tracklet_ids)
    if tracklet_ids.dtype.is_floating_point or tracklet_ids.dtype.is_complex or tracklet_ids.dtype == torch.bool:
        raise TypeError(f"fgreid_ops.{op}: expected {ids_arg} to be an integer tensor, got {tracklet_ids.dtype}")
    F = frame_feats.shape[0]
    if tracklet_ids.dim() != 1 or tracklet_ids.shape[0] != F:
        raise ValueError(f"fgreid_ops.{op}: expected {ids_arg} of shape [F]=[{F}] (one per row of {feats_arg}), "
                         f"got {list(tracklet_ids.shape)}")
    checks.check_same_device(op, ids_arg, tracklet_ids, feats_arg, frame_feats)
    checks.check_nonempty_batch(op, feats_arg, frame_feats)
    if num_tracklets is not None:
        if isinstance(num_tracklets, bool) or not isinstance(num_tracklets, int):
            raise TypeError(f"fgreid_ops.{op}: expected {count_arg} to be an int or None, got {type(num_tracklets).__name__}")
        # every tracklet needs a frame: more tracklets than frames is an error, not an allocation
        if not 1 <= num_tracklets <= F:
            raise ValueError(f"fgreid_ops.{op}: expected {count_arg} in [1, F]=[1, {F}] (every tracklet needs a frame "
                             f"of {feats_arg}), got {num_tracklets}")
    ids = tracklet_ids.to(torch.int64)
    low, high = int(ids.min()), int(ids.max())
    T = high + 1 if num_tracklets is None else num_tracklets
    if low < 0 or high >= min(T, F):
        raise ValueError(f"fgreid_ops.{op}: expected {ids_arg} in [0, {count_arg}={T}) and below F={F}, "
                         f"got values in [{low}, {high}]")
    acc = torch.float64 if frame_feats.dtype == torch.float64 else torch.float32
    frames = torch.bincount(ids, minlength=T)
    if bool((frames == 0).any()):
        empty = torch.nonzero(frames == 0)[:5, 0].tolist()
        raise ValueError(f"fgreid_ops.{op}: expected every tracklet in [0, {T}) to occur in {ids_arg}; "
                         f"tracklets {empty} have no frame")
    sums = torch.zeros(T, frame_feats.shape[1], dtype=acc, device=frame_feats.device)
    sums.index_add_(0, ids, frame_feats.to(acc))
    return sums / frames[:, None].to(acc)


def evaluate_mars(q_frame_feats, q_tracklet_ids, g_frame_feats, g_tracklet_ids, q_pids, g_pids, q_camids,
                  g_camids, max_rank: int = 50, **kwargs) -> EvaluationResult:
    """MARS: tracklet features are the mean of their frames (`tracklet_features`, with
    T = len(q_pids) query and len(g_pids) gallery tracklets), then the image protocol of
    `evaluate_features` (same-pid-same-camera removal, skipped queries, ties to the lower index).
    MARS labels junk tracklets pid -1 and distractors pid 0, as Market-1501: pass junk_pid=-1 to
    ignore junk. kwargs go to `evaluate_features` (metric, memory_budget, progress, ...)."""
    op = "evaluate_mars"
    num = {}
    for side, pids in (("q", q_pids), ("g", g_pids)):
        checks.check_tensor(op, f"{side}_pids", pids)
        if pids.dim() != 1:
            raise ValueError(f"fgreid_ops.{op}: expected {side}_pids to be 1-D (one per tracklet), got {pids.dim()}-D")
        num[side] = pids.shape[0]
    q_feats = _tracklet_features(q_frame_feats, q_tracklet_ids, num["q"], op, "q_frame_feats", "q_tracklet_ids",
                                 "len(q_pids)")
    g_feats = _tracklet_features(g_frame_feats, g_tracklet_ids, num["g"], op, "g_frame_feats", "g_tracklet_ids",
                                 "len(g_pids)")
    checks.check_same_device(op, "g_frame_feats", g_frame_feats, "q_frame_feats", q_frame_feats)
    if g_feats.shape[1] != q_feats.shape[1]:
        raise ValueError(f"fgreid_ops.{op}: expected g_frame_feats of width D={q_feats.shape[1]} (as q_frame_feats), "
                         f"got {g_feats.shape[1]}")
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
            raise ValueError(f"fgreid_ops.evaluate_fgpr: expected camids to hold exactly two cameras in each of the "
                             f"groups, group {group} has {cams}")
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
    checks.check_float_dtype(op, "feats", feats)
    if "max_rank" in kwargs:
        raise TypeError(f"fgreid_ops.{op}: max_rank is fixed at 5 by the protocol (rank-1, rank-5), got max_rank={kwargs['max_rank']!r}")
    for arg, t in (("pids", pids), ("camids", camids), ("groups", groups)):
        checks.check_tensor(op, arg, t)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an integer tensor, got {t.dtype}")
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
