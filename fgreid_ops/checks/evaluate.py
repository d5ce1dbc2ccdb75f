"""Checks of the fgreid::evaluate* ops (csrc/include/fgreid_ops/evaluate_checks.h) and of the
arguments of evaluate / evaluate_features."""

import numpy as np
import torch

from .. import _checks as checks

OP = "evaluate"
IDS = ("q_pids", "g_pids", "q_camids", "g_camids")
METRICS = ("euclidean", "cosine")


def as_tensor(value, device):
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value, device=device)
    return value


def check_ids(op, arg, t, n, size_name, ref_arg, ref, strict):
    checks.check_tensor(op, arg, t)
    if strict and t.dtype != torch.int64:
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an int64 tensor, got {t.dtype}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an integer tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} of shape [{size_name}]=[{n}], got {list(t.shape)}")
    checks.check_same_device(op, arg, t, ref_arg, ref)


def check_distance_block(op, arg, d):
    checks.check_tensor(op, arg, d)
    checks.check_dim(op, arg, d, 2, "(num_query, num_gallery)")
    checks.check_float_dtype(op, arg, d)
    if d.shape[0] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at least one query, got shape {list(d.shape)}")
    if d.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at least one gallery item, got shape {list(d.shape)}")
    if d.shape[1] > 2**31 - 1:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at most 2^31-1 gallery columns, got {d.shape[1]}")


def check_junk(op, junk_pid):
    if junk_pid is not None and (isinstance(junk_pid, bool) or not isinstance(junk_pid, int)):
        raise TypeError(f"fgreid_ops.{op}: expected junk_pid to be an int or None, got {type(junk_pid).__name__}")


# The CMC curve past the gallery only repeats its last value; up to this length it may, so that
# max_rank=50 works on a small gallery, but a length beyond both is a mistake, not an allocation.
MAX_RANK_PAST_GALLERY = 1000


def check_max_rank(op, max_rank, num_gallery=None):
    """max_rank an int in [1, max(num_gallery, 1000)] (no upper bound when num_gallery is None:
    a rank's shard, checked against the whole gallery once its size is known)."""
    if isinstance(max_rank, bool) or not isinstance(max_rank, int):
        raise TypeError(f"fgreid_ops.{op}: expected max_rank to be an int, got {type(max_rank).__name__}")
    if max_rank < 1:
        raise ValueError(f"fgreid_ops.{op}: expected max_rank >= 1, got {max_rank}")
    if num_gallery is not None and max_rank > max(num_gallery, MAX_RANK_PAST_GALLERY):
        bound = max(num_gallery, MAX_RANK_PAST_GALLERY)
        raise ValueError(f"fgreid_ops.{op}: expected max_rank <= max(num_gallery, {MAX_RANK_PAST_GALLERY}) "
                         f"= {bound}, got {max_rank}")


def check_ids_for(op, Q, G, ids, ref_arg, ref, strict):
    for arg, t in zip(IDS, ids):
        n, size_name = (Q, "Q") if arg.startswith("q") else (G, "G")
        check_ids(op, arg, t, n, size_name, ref_arg, ref, strict)


def check_op_inputs(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid, strict=True):
    """The checks of the fgreid::evaluate op (C++: evaluate_checks.h), also run by its fake."""
    check_distance_block(OP, "distmat", distmat)
    check_ids_for(OP, distmat.shape[0], distmat.shape[1], (q_pids, g_pids, q_camids, g_camids),
                   "distmat", distmat, strict)
    check_junk(OP, junk_pid)


def check_lists(op, offsets, index, match_dist, counts, n):
    check_ids(op, "match_offsets", offsets, n + 1, "num_query + 1", "match_offsets", offsets, True)
    checks.check_tensor(op, "match_index", index)
    if index.dim() != 1:
        raise ValueError(f"fgreid_ops.{op}: expected match_index to be 1-D, got {index.dim()}-D")
    nnz = index.shape[0]
    check_ids(op, "match_index", index, nnz, "nnz", "match_offsets", offsets, True)
    checks.check_tensor(op, "match_dist", match_dist)
    checks.check_float_dtype(op, "match_dist", match_dist)
    if match_dist.dim() != 1 or match_dist.shape[0] != nnz:
        raise ValueError(f"fgreid_ops.{op}: expected match_dist of shape [nnz]=[{nnz}], got {list(match_dist.shape)}")
    check_ids(op, "counts", counts, nnz, "nnz", "match_offsets", offsets, True)
    checks.check_same_device(op, "match_dist", match_dist, "match_offsets", offsets)


def check_count_inputs(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts):
    op = "evaluate_count"
    check_distance_block(op, "dist", dist)
    check_ids(op, "q_pids", q_pids, dist.shape[0], "Q", "dist", dist, True)
    check_ids(op, "g_pids", g_pids, dist.shape[1], "G", "dist", dist, True)
    if g_start < 0:
        raise ValueError(f"fgreid_ops.{op}: expected g_start >= 0, got {g_start}")
    check_lists(op, offsets, index, match_dist, counts, dist.shape[0])
    checks.check_same_dtype(op, "match_dist", match_dist, "dist", dist)
    checks.check_same_device(op, "match_offsets", offsets, "dist", dist)
    check_junk(op, junk_pid)


def check_matches_inputs(q_pids, g_pids, q_camids, g_camids, junk_pid):
    op = "evaluate_matches"
    for arg, t in (("q_pids", q_pids), ("g_pids", g_pids)):
        checks.check_tensor(op, arg, t)
        if t.dim() != 1 or t.shape[0] == 0:
            raise ValueError(f"fgreid_ops.{op}: expected {arg} to be a non-empty 1-D tensor, got shape {list(t.shape)}")
    check_ids_for(op, q_pids.shape[0], g_pids.shape[0], (q_pids, g_pids, q_camids, g_camids), "q_pids", q_pids, True)
    check_junk(op, junk_pid)


def check_finalize_inputs(offsets, index, match_dist, counts):
    op = "evaluate_finalize"
    checks.check_tensor(op, "match_offsets", offsets)
    if offsets.dim() != 1 or offsets.shape[0] < 2:
        raise ValueError(f"fgreid_ops.{op}: expected match_offsets of shape [num_query + 1] with num_query >= 1, "
                         f"got {list(offsets.shape)}")
    check_lists(op, offsets, index, match_dist, counts, offsets.shape[0] - 1)


def check_features(op, q_feats, g_feats, min_gallery=1):
    for arg, t in (("q_feats", q_feats), ("g_feats", g_feats)):
        checks.check_tensor(op, arg, t)
        checks.check_dim(op, arg, t, 2, "(num, D)")
        checks.check_float_dtype(op, arg, t)
    checks.check_same_device(op, "g_feats", g_feats, "q_feats", q_feats)
    if q_feats.shape[0] == 0 or g_feats.shape[0] < min_gallery:
        wanted = "at least one query and one gallery item" if min_gallery else "at least one query"
        raise ValueError(f"fgreid_ops.{op}: expected {wanted}, "
                         f"got q_feats {list(q_feats.shape)} and g_feats {list(g_feats.shape)}")
    if q_feats.shape[1] != g_feats.shape[1] or q_feats.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected q_feats and g_feats with the same D > 0, "
                         f"got {list(q_feats.shape)} and {list(g_feats.shape)}")


def check_memory_budget(op, memory_budget):
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"fgreid_ops.{op}: expected memory_budget to be a positive int (bytes), got {memory_budget!r}")
