"""Rank evaluation (SPEC §6): CMC, mAP and mINP from a distance matrix (`evaluate`) or from
features, streaming the gallery in chunks (`evaluate_features`). Fakes of the fgreid::evaluate*
ops live here too. There are no gradients: inputs are detached.

Protocol (Market-1501, as torchreid, fast-reid and reid-strong-baseline):
- for each query, gallery items with the query's pid *and* camera are removed;
- the remaining items of the query's pid are its matches; a query without any is skipped
  (counted in ``num_skipped``);
- ranking is by ascending distance; ties go to the lower gallery index (deterministic, unlike
  ``np.argsort``'s default quicksort); NaN distances rank last;
- CMC[k] = fraction of the kept queries whose first match is at rank <= k + 1;
  AP = mean over the matches of (number of matches up to it) / (its rank);
  INP = (number of matches) / (rank of the last match) (fast-reid's mINP).

Market-1501 labels junk images pid -1 and distractors pid 0. Distractors are ordinary
non-matching gallery items. Junk images are dropped by torchreid's and fast-reid's loaders;
pass ``junk_pid=-1`` to drop them here instead (the original MATLAB protocol): items of that pid
are removed from every query's ranking and queries of that pid are skipped. With the default
``junk_pid=None`` every pid, -1 included, is an ordinary identity.
"""

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import _backend
from .. import _checks as checks
from .._extension import has_extension
from ..reference.evaluate import distance_reference, per_query_reference, summarize

_OP = "evaluate"
_IDS = ("q_pids", "g_pids", "q_camids", "g_camids")
METRICS = ("euclidean", "cosine")


class EvaluationResult(NamedTuple):
    """What `evaluate` returns; every field is a tensor on the input's device.

    cmc: [max_rank] float64, cmc[k] = rank-(k + 1) accuracy (a fraction, not a percentage).
    mAP, mINP: 0-d float64. num_skipped: 0-d int64, queries without a match.
    ap: [Q] float64 per-query AP (NaN for skipped queries) when asked for, else None."""

    cmc: torch.Tensor
    mAP: torch.Tensor
    mINP: torch.Tensor
    num_skipped: torch.Tensor
    ap: torch.Tensor | None = None

    def rank(self, k: int) -> float:
        """Rank-k accuracy (1-based k) as a Python float."""
        return float(self.cmc[k - 1])

    def summary(self, ranks=(1, 5, 10)) -> dict:
        """{"rank1": ..., "rank5": ..., "mAP": ..., "mINP": ..., "num_skipped": ...} as Python numbers."""
        out = {f"rank{k}": self.rank(k) for k in ranks if k <= self.cmc.shape[0]}
        out.update(mAP=float(self.mAP), mINP=float(self.mINP), num_skipped=int(self.num_skipped))
        return out


# --- input checks ------------------------------------------------------------------------------

def _as_tensor(value, device):
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value, device=device)
    return value


def _check_ids(op, arg, t, n, size_name, ref_arg, ref, strict):
    checks.check_tensor(op, arg, t)
    if strict and t.dtype != torch.int64:
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an int64 tensor, got {t.dtype}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an integer tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} of shape [{size_name}]=[{n}], got {list(t.shape)}")
    checks.check_same_device(op, arg, t, ref_arg, ref)


def _check_distance_block(op, arg, d):
    checks.check_tensor(op, arg, d)
    checks.check_dim(op, arg, d, 2, "(num_query, num_gallery)")
    checks.check_float_dtype(op, arg, d)
    if d.shape[0] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at least one query, got shape {list(d.shape)}")
    if d.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at least one gallery item, got shape {list(d.shape)}")
    if d.shape[1] > 2**31 - 1:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have at most 2^31-1 gallery columns, got {d.shape[1]}")


def _check_junk(op, junk_pid):
    if junk_pid is not None and (isinstance(junk_pid, bool) or not isinstance(junk_pid, int)):
        raise TypeError(f"fgreid_ops.{op}: expected junk_pid to be an int or None, got {type(junk_pid).__name__}")


# The CMC curve past the gallery only repeats its last value; up to this length it may, so that
# max_rank=50 works on a small gallery, but a length beyond both is a mistake, not an allocation.
MAX_RANK_PAST_GALLERY = 1000


def _check_max_rank(op, max_rank, G):
    if isinstance(max_rank, bool) or not isinstance(max_rank, int):
        raise TypeError(f"fgreid_ops.{op}: expected max_rank to be an int, got {type(max_rank).__name__}")
    if max_rank < 1:
        raise ValueError(f"fgreid_ops.{op}: expected max_rank >= 1, got {max_rank}")
    if max_rank > max(G, MAX_RANK_PAST_GALLERY):
        raise ValueError(f"fgreid_ops.{op}: expected max_rank <= max(num_gallery, {MAX_RANK_PAST_GALLERY}) "
                         f"= {max(G, MAX_RANK_PAST_GALLERY)}, got {max_rank}")


def _check_ids_for(op, Q, G, ids, ref_arg, ref, strict):
    for arg, t in zip(_IDS, ids):
        n, size_name = (Q, "Q") if arg.startswith("q") else (G, "G")
        _check_ids(op, arg, t, n, size_name, ref_arg, ref, strict)


def _check_op_inputs(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid, strict=True):
    """The checks of the fgreid::evaluate op (C++: evaluate_checks.h), also run by its fake."""
    _check_distance_block(_OP, "distmat", distmat)
    _check_ids_for(_OP, distmat.shape[0], distmat.shape[1], (q_pids, g_pids, q_camids, g_camids),
                   "distmat", distmat, strict)
    _check_junk(_OP, junk_pid)


def _check_lists(op, offsets, index, match_dist, counts, n):
    _check_ids(op, "match_offsets", offsets, n + 1, "num_query + 1", "match_offsets", offsets, True)
    checks.check_tensor(op, "match_index", index)
    if index.dim() != 1:
        raise ValueError(f"fgreid_ops.{op}: expected match_index to be 1-D, got {index.dim()}-D")
    nnz = index.shape[0]
    _check_ids(op, "match_index", index, nnz, "nnz", "match_offsets", offsets, True)
    checks.check_float_dtype(op, "match_dist", match_dist)
    if match_dist.dim() != 1 or match_dist.shape[0] != nnz:
        raise ValueError(f"fgreid_ops.{op}: expected match_dist of shape [nnz]=[{nnz}], got {list(match_dist.shape)}")
    _check_ids(op, "counts", counts, nnz, "nnz", "match_offsets", offsets, True)
    checks.check_same_device(op, "match_dist", match_dist, "match_offsets", offsets)


def _check_count_inputs(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts):
    op = "evaluate_count"
    _check_distance_block(op, "dist", dist)
    _check_ids(op, "q_pids", q_pids, dist.shape[0], "Q", "dist", dist, True)
    _check_ids(op, "g_pids", g_pids, dist.shape[1], "G", "dist", dist, True)
    if g_start < 0:
        raise ValueError(f"fgreid_ops.{op}: expected g_start >= 0, got {g_start}")
    _check_lists(op, offsets, index, match_dist, counts, dist.shape[0])
    if match_dist.dtype != dist.dtype:
        raise TypeError(f"fgreid_ops.{op}: expected match_dist to have the dtype of dist ({dist.dtype}), got {match_dist.dtype}")
    checks.check_same_device(op, "match_offsets", offsets, "dist", dist)
    _check_junk(op, junk_pid)


# --- public functions --------------------------------------------------------------------------

def _prepare_ids(op, Q, G, ids, ref_arg, ref):
    ids = tuple(_as_tensor(t, ref.device) for t in ids)
    _check_ids_for(op, Q, G, ids, ref_arg, ref, strict=False)
    return tuple(t.to(torch.int64) for t in ids)


def _result(first_hit, ap, inp, max_rank, return_per_query):
    cmc, mean_ap, mean_inp, num_skipped = summarize(first_hit, ap, inp, max_rank)
    return EvaluationResult(cmc, mean_ap, mean_inp, num_skipped, ap if return_per_query else None)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
             return_per_query: bool = False, junk_pid: int | None = None,
             backend: str | None = None) -> EvaluationResult:
    """CMC, mAP and mINP from a [Q, G] distance matrix (torchreid's argument order).

    Args:
        distmat: [Q, G] float32/float64/float16/bfloat16 distances (lower = more similar), any
            strides (a transposed or sliced matrix is read in place), or a numpy array.
        q_pids, g_pids, q_camids, g_camids: [Q] / [G] integer tensors or numpy arrays.
        max_rank: length of the CMC curve, 1 <= max_rank <= max(G, 1000); ranks past the gallery
            size repeat the last value.
        return_per_query: also return the per-query AP (NaN for skipped queries).
        junk_pid: a pid ignored everywhere (e.g. -1 for Market-1501 junk), or None; see the module doc.
        backend: None (auto), "reference", "cpu" or "triton".

    The protocol is in this module's docstring. Every row is ranked exactly (comparisons in the
    input dtype: no float rounding), with memory O(Q + matches + threads * G); the CPU kernel
    never sorts a row. Works under torch.compile(fullgraph=True).
    """
    distmat = _as_tensor(distmat, None)
    _check_distance_block(_OP, "distmat", distmat)
    Q, G = distmat.shape
    ids = _prepare_ids(_OP, Q, G, (q_pids, g_pids, q_camids, g_camids), "distmat", distmat)
    _check_max_rank(_OP, max_rank, G)
    _check_junk(_OP, junk_pid)
    backend = _backend.resolve(_OP, distmat.device.type, backend)
    distmat = distmat.detach()
    if backend == "reference":
        per_query = per_query_reference(distmat, *ids, junk_pid)
    elif backend == "triton":
        per_query = torch.ops.fgreid.evaluate_triton(distmat, *ids, junk_pid)
    else:
        per_query = torch.ops.fgreid.evaluate(distmat, *ids, junk_pid)
    return _result(*per_query, max_rank, return_per_query)


_MIN_CHUNK = 1024


def _chunk_sizes(Q, G, D, memory_budget, itemsize):
    """(query block, gallery chunk) with block * chunk distances + chunk gallery rows (in the
    compute dtype) within memory_budget bytes; queries are blocked only when a single block
    would leave chunks under _MIN_CHUNK columns (a GEMM that narrow runs slowly)."""
    elements = max(1, memory_budget // itemsize)
    min_chunk = min(G, _MIN_CHUNK)
    q_block = Q if (Q + D) * min_chunk <= elements else max(1, min(Q, elements // min_chunk - D))
    chunk = max(1, min(G, elements // (q_block + D)))
    return q_block, chunk


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("fgreid_ops.evaluate_features: progress=True needs tqdm (pip install tqdm); no progress bar",
                      stacklevel=3)
        return None
    return tqdm(total=total, unit="img", desc="gallery", leave=False)


class _Distances:
    """Distance blocks of the features form as one GEMM of augmented rows, so no extra pass over
    the block adds the norms: squared Euclidean (torchreid's ||q||^2 + ||g||^2 - 2 q.g) is
    [q, ||q||^2, 1] . [-2 g, 1, ||g||^2], and 1 - cos is [q^, 1] . [-g^, 1] with unit rows q^, g^."""

    def __init__(self, q_feats, metric, compute):
        self.metric = metric
        self.compute = compute
        q = q_feats.to(compute)
        ones = torch.ones(q.shape[0], 1, dtype=compute, device=q.device)
        if metric == "cosine":
            self.q = torch.cat([F.normalize(q, dim=1), ones], 1)
        else:
            self.q = torch.cat([q, (q * q).sum(1, keepdim=True), ones], 1)

    def gallery(self, g_feats):
        g = g_feats.to(self.compute)
        ones = torch.ones(g.shape[0], 1, dtype=self.compute, device=g.device)
        if self.metric == "cosine":
            return torch.cat([-F.normalize(g, dim=1), ones], 1)
        return torch.cat([-2 * g, ones, (g * g).sum(1, keepdim=True)], 1)

    def block(self, q_lo, q_hi, g, buffer):
        out = buffer[: (q_hi - q_lo) * g.shape[0]].view(q_hi - q_lo, g.shape[0])
        return torch.mm(self.q[q_lo:q_hi], g.T, out=out)


def _gather_matches(block, q_lo, q_hi, g_lo, g_hi, offsets, index, match_query, match_dist):
    """match_dist of the matches of queries [q_lo, q_hi) inside gallery columns [g_lo, g_hi),
    read from the distance block itself (offsets: the CSR offsets as a Python list)."""
    lo, hi = offsets[q_lo], offsets[q_hi]
    if lo == hi:
        return
    idx = index[lo:hi]
    pos = torch.nonzero((idx >= g_lo) & (idx < g_hi)).squeeze(1) + lo
    match_dist[pos] = block[match_query[pos] - q_lo, index[pos] - g_lo]


def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                      metric: str = "euclidean", memory_budget: int = 256 * 2**20, progress: bool = False,
                      return_per_query: bool = False, junk_pid: int | None = None,
                      backend: str | None = None) -> EvaluationResult:
    """`evaluate` from features, never holding the [Q, G] distance matrix.

    The gallery is walked in chunks: per chunk one GEMM gives the [Q, chunk] distances
    (``metric="euclidean"``: squared Euclidean ||q||^2 + ||g||^2 - 2 q.g as torchreid;
    ``"cosine"``: 1 - cos), and the kernel adds, for every match of every query, the number of
    kept other-pid items ranked before it. A match's own distance is read from the same GEMM
    block (when the gallery needs more than one chunk, a first pass over the blocks reads them:
    twice the GEMM work), so every pair's distance comes from one formula. Memory: the features, memory_budget bytes for a distance block and a chunk of gallery
    rows in the compute dtype (float32; float64 for float64 features), a copy of the queries in
    that dtype with two more columns (the norms ride in the GEMM), and O(Q + matches).

    Distances are float32 sums: a match and another item whose distances differ by a rounding
    error may rank differently than in a distance matrix computed another way (torch.cdist, a
    differently blocked GEMM). Exact ties (duplicate gallery rows) rank by gallery index, as
    `evaluate` does on the matrix.

    Args:
        q_feats: [Q, D], g_feats: [G, D] float features (any strides), on the same device.
        metric: "euclidean" or "cosine".
        memory_budget: bytes for the distance block + gallery chunk (default 256 MiB).
        progress: show a tqdm progress bar over the gallery (when tqdm is installed).
        backend: None (auto), "reference" (whole matrix, not streamed), "cpu" or "triton".
        Other arguments as `evaluate`. Eager only (a Python loop over chunks).
    """
    op = "evaluate_features"
    q_feats, g_feats = _as_tensor(q_feats, None), _as_tensor(g_feats, None)
    for arg, t in (("q_feats", q_feats), ("g_feats", g_feats)):
        checks.check_tensor(op, arg, t)
        checks.check_dim(op, arg, t, 2, "(num, D)")
        checks.check_float_dtype(op, arg, t)
    checks.check_same_device(op, "g_feats", g_feats, "q_feats", q_feats)
    if q_feats.shape[0] == 0 or g_feats.shape[0] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected at least one query and one gallery item, "
                         f"got q_feats {list(q_feats.shape)} and g_feats {list(g_feats.shape)}")
    if q_feats.shape[1] != g_feats.shape[1] or q_feats.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected q_feats and g_feats with the same D > 0, "
                         f"got {list(q_feats.shape)} and {list(g_feats.shape)}")
    Q, G, D = q_feats.shape[0], g_feats.shape[0], q_feats.shape[1]
    ids = _prepare_ids(op, Q, G, (q_pids, g_pids, q_camids, g_camids), "q_feats", q_feats)
    _check_max_rank(op, max_rank, G)
    _check_junk(op, junk_pid)
    checks.check_choice(op, "metric", metric, METRICS)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"fgreid_ops.{op}: expected memory_budget to be a positive int (bytes), got {memory_budget!r}")
    backend = _backend.resolve(_OP, q_feats.device.type, backend)
    q_feats, g_feats = q_feats.detach(), g_feats.detach()
    if backend == "reference":
        distmat = distance_reference(q_feats, g_feats, metric)
        return _result(*per_query_reference(distmat, *ids, junk_pid), max_rank, return_per_query)

    q_pids, g_pids, q_camids, g_camids = ids
    compute = torch.float64 if torch.float64 in (q_feats.dtype, g_feats.dtype) else torch.float32
    dist = _Distances(q_feats, metric, compute)
    if backend == "triton":
        from ..triton.evaluate import finalize_torch, matches_torch

        offsets, index = matches_torch(*ids, junk_pid)
        count_op, finalize = torch.ops.fgreid.evaluate_count_triton, finalize_torch
    else:
        offsets, index = torch.ops.fgreid.evaluate_matches(*ids, junk_pid)
        count_op, finalize = torch.ops.fgreid.evaluate_count, torch.ops.fgreid.evaluate_finalize

    itemsize = torch.empty((), dtype=compute).element_size()
    q_block, chunk = _chunk_sizes(Q, G, D + 2, memory_budget, itemsize)
    nnz = index.shape[0]
    match_query = torch.repeat_interleave(torch.arange(Q, device=q_feats.device), offsets.diff(), output_size=nnz)
    match_dist = torch.empty(nnz, dtype=compute, device=q_feats.device)
    counts = torch.zeros(nnz, dtype=torch.int64, device=q_feats.device)
    offsets_list = offsets.tolist()
    buffer = torch.empty(q_block * chunk, dtype=compute, device=q_feats.device)

    def blocks():
        for g_lo in range(0, G, chunk):
            g_hi = min(G, g_lo + chunk)
            g = dist.gallery(g_feats[g_lo:g_hi])
            for q_lo in range(0, Q, q_block):
                q_hi = min(Q, q_lo + q_block)
                yield g_lo, g_hi, q_lo, q_hi, dist.block(q_lo, q_hi, g, buffer)

    # Every pair's distance, a match's included, is the GEMM value the count kernel compares
    # (SPEC's one-formula rule: duplicate gallery rows tie exactly, the lower index wins). With
    # one gallery chunk a block holds all matches of its queries; otherwise a first pass over
    # the same blocks reads them.
    one_chunk = chunk >= G
    if not one_chunk:
        for g_lo, g_hi, q_lo, q_hi, block in blocks():
            _gather_matches(block, q_lo, q_hi, g_lo, g_hi, offsets_list, index, match_query, match_dist)
    bar = _progress(G, progress)
    try:
        for g_lo, g_hi, q_lo, q_hi, block in blocks():
            if one_chunk:
                _gather_matches(block, q_lo, q_hi, g_lo, g_hi, offsets_list, index, match_query, match_dist)
            count_op(block, q_pids[q_lo:q_hi], g_pids[g_lo:g_hi], g_lo, offsets[q_lo:q_hi + 1], index, match_dist,
                     junk_pid, counts)
            if bar is not None and q_hi == Q:
                bar.update(g_hi - g_lo)
    finally:
        if bar is not None:
            bar.close()
    return _result(*finalize(offsets, index, match_dist, counts), max_rank, return_per_query)


# --- fakes -------------------------------------------------------------------------------------

def _fake_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid):
    _check_op_inputs(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid)
    Q = distmat.shape[0]
    return q_pids.new_empty((Q,)), distmat.new_empty((Q,), dtype=torch.float64), distmat.new_empty((Q,), dtype=torch.float64)


def _fake_matches(q_pids, g_pids, q_camids, g_camids, junk_pid):
    op = "evaluate_matches"
    for arg, t in (("q_pids", q_pids), ("g_pids", g_pids)):
        checks.check_tensor(op, arg, t)
        if t.dim() != 1 or t.shape[0] == 0:
            raise ValueError(f"fgreid_ops.{op}: expected {arg} to be a non-empty 1-D tensor, got shape {list(t.shape)}")
    _check_ids_for(op, q_pids.shape[0], g_pids.shape[0], (q_pids, g_pids, q_camids, g_camids), "q_pids", q_pids, True)
    _check_junk(op, junk_pid)
    nnz = torch.library.get_ctx().new_dynamic_size()
    return q_pids.new_empty((q_pids.shape[0] + 1,)), q_pids.new_empty((nnz,))


def _fake_count(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts):
    _check_count_inputs(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts)


def _fake_finalize(offsets, index, match_dist, counts):
    op = "evaluate_finalize"
    checks.check_tensor(op, "match_offsets", offsets)
    if offsets.dim() != 1 or offsets.shape[0] < 2:
        raise ValueError(f"fgreid_ops.{op}: expected match_offsets of shape [num_query + 1] with num_query >= 1, "
                         f"got {list(offsets.shape)}")
    _check_lists(op, offsets, index, match_dist, counts, offsets.shape[0] - 1)
    Q = offsets.shape[0] - 1
    return offsets.new_empty((Q,)), match_dist.new_empty((Q,), dtype=torch.float64), match_dist.new_empty((Q,), dtype=torch.float64)


if has_extension():
    torch.library.register_fake("fgreid::evaluate")(_fake_evaluate)
    torch.library.register_fake("fgreid::evaluate_triton")(_fake_evaluate)
    torch.library.register_fake("fgreid::evaluate_matches")(_fake_matches)
    torch.library.register_fake("fgreid::evaluate_count")(_fake_count)
    torch.library.register_fake("fgreid::evaluate_count_triton")(_fake_count)
    torch.library.register_fake("fgreid::evaluate_finalize")(_fake_finalize)

__all__ = ["EvaluationResult", "evaluate", "evaluate_features", "METRICS"]
