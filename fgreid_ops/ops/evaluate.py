"""Rank evaluation (docs/ops.md#evaluate): CMC, mAP and mINP from a distance matrix (`evaluate`) or from
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

import torch
import torch.nn.functional as F

from .. import _backend, _registry
from .. import _checks as checks
from ..checks.evaluate import (
    METRICS, as_tensor, check_count_inputs, check_distance_block, check_features, check_finalize_inputs,
    check_ids_for, check_junk, check_matches_inputs, check_max_rank, check_memory_budget, check_op_inputs,
)
from ..reference.evaluate import distance_reference, per_query_reference, summarize

_OP = "evaluate"


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


# --- public functions --------------------------------------------------------------------------

def _prepare_ids(op, Q, G, ids, ref_arg, ref):
    ids = tuple(as_tensor(t, ref.device) for t in ids)
    check_ids_for(op, Q, G, ids, ref_arg, ref, strict=False)
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
    distmat = as_tensor(distmat, None)
    check_distance_block(_OP, "distmat", distmat)
    Q, G = distmat.shape
    ids = _prepare_ids(_OP, Q, G, (q_pids, g_pids, q_camids, g_camids), "distmat", distmat)
    check_max_rank(_OP, max_rank, G)
    check_junk(_OP, junk_pid)
    per_query = _backend.dispatch(EVALUATE, distmat.device.type, backend, distmat.detach(), *ids, junk_pid)
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
        self.itemsize = torch.empty((), dtype=compute).element_size()
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



def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                      metric: str = "euclidean", memory_budget: int = 256 * 2**20, progress: bool = False,
                      return_per_query: bool = False, junk_pid: int | None = None,
                      backend: str | None = None, rerank: dict | None = None) -> EvaluationResult:
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
        rerank: None, or k-reciprocal re-ranking of the euclidean distances, {"k1": 20, "k2": 6,
            "lambda_value": 0.3} (any subset; True for these defaults): the re-ranked tiles are
            streamed (fgreid_ops.ops.rerank.evaluate_reranked), equal to `evaluate` on
            `fgreid_ops.rerank(q_feats, g_feats, ..., memory_budget=memory_budget)`.
        Other arguments as `evaluate`. Eager only (a Python loop over chunks).
    """
    q_feats, g_feats, ids, backend = _prepare_features("evaluate_features", q_feats, g_feats,
                                                       (q_pids, g_pids, q_camids, g_camids), max_rank, junk_pid,
                                                       metric, memory_budget, backend)
    if rerank is not None:
        from .rerank import evaluate_reranked  # it uses the evaluate kernels, not this module

        per_query = evaluate_reranked(q_feats, g_feats, ids, rerank, metric, memory_budget, junk_pid, backend,
                                      _progress(g_feats.shape[0], progress))
        return _result(*per_query, max_rank, return_per_query)
    if backend == "reference":
        distmat = distance_reference(q_feats, g_feats, metric)
        return _result(*per_query_reference(distmat, *ids, junk_pid), max_rank, return_per_query)

    Q, G, D = q_feats.shape[0], g_feats.shape[0], q_feats.shape[1]
    q_pids, g_pids, q_camids, g_camids = ids
    dist = _Distances(q_feats, metric, _compute_dtype(q_feats, g_feats))
    matches, count_op, finalize = _streaming_kernels(backend)
    offsets, index = matches(*ids, junk_pid)
    q_block, chunk = _chunk_sizes(Q, G, D + 2, memory_budget, dist.itemsize)
    # With one gallery chunk each block holds every match of its queries: read them while counting;
    # otherwise a first pass over the same blocks reads them (twice the GEMM work).
    one_chunk = chunk >= G
    if one_chunk:
        match_dist = torch.empty(index.shape[0], dtype=dist.compute, device=q_feats.device)
    else:
        match_dist = _match_distances(dist, g_feats, offsets, index, q_block, chunk)
    counts = torch.zeros(index.shape[0], dtype=torch.int64, device=q_feats.device)
    _count_gallery(dist, g_feats, g_pids, 0, q_pids, offsets, index, match_dist, counts, junk_pid, count_op,
                   q_block, chunk, progress, read_matches=one_chunk)
    return _result(*finalize(offsets, index, match_dist, counts), max_rank, return_per_query)


def _prepare_features(op, q_feats, g_feats, ids, max_rank, junk_pid, metric, memory_budget, backend,
                      min_gallery=1):
    """The argument checks of evaluate_features: (q_feats, g_feats, int64 ids, backend), detached.
    min_gallery=0 admits an empty gallery (a rank's shard in the sharded evaluation)."""
    q_feats, g_feats = as_tensor(q_feats, None), as_tensor(g_feats, None)
    check_features(op, q_feats, g_feats, min_gallery=min_gallery)
    ids = _prepare_ids(op, q_feats.shape[0], g_feats.shape[0], ids, "q_feats", q_feats)
    check_max_rank(op, max_rank, g_feats.shape[0] if min_gallery else None)
    check_junk(op, junk_pid)
    checks.check_choice(op, "metric", metric, METRICS)
    check_memory_budget(op, memory_budget)
    backend = _backend.resolve(EVALUATE, q_feats.device.type, backend)
    return q_feats.detach(), g_feats.detach(), ids, backend


def _compute_dtype(q_feats, g_feats):
    return torch.float64 if torch.float64 in (q_feats.dtype, g_feats.dtype) else torch.float32


def _streaming_kernels(backend):
    """(matches, count, finalize) of the streamed evaluation on `backend`."""
    return (_backend.kernel(MATCHES, backend), _backend.kernel(COUNT, backend), _backend.kernel(FINALIZE, backend))


def _blocks(dist, g_feats, q_block, chunk, buffer):
    """(g_lo, g_hi, q_lo, q_hi, block): the [q_hi - q_lo, g_hi - g_lo] distance blocks of the
    queries against g_feats' rows, gallery chunk by chunk (one GEMM each, into `buffer`)."""
    Q, G = dist.q.shape[0], g_feats.shape[0]
    for g_lo in range(0, G, chunk):
        g_hi = min(G, g_lo + chunk)
        g = dist.gallery(g_feats[g_lo:g_hi])
        for q_lo in range(0, Q, q_block):
            q_hi = min(Q, q_lo + q_block)
            yield g_lo, g_hi, q_lo, q_hi, dist.block(q_lo, q_hi, g, buffer)


class _MatchReader:
    """Fills match_dist from the distance blocks themselves, so that a match's distance is the
    GEMM value the count kernel compares with every other pair (one formula: duplicate gallery
    rows tie exactly and the lower index wins, as `evaluate` on the matrix). index: gallery
    indices of g_feats' rows offset by g_start."""

    def __init__(self, offsets, index, match_dist, g_start):
        nnz = index.shape[0]
        self.offsets = offsets.tolist()
        self.index, self.match_dist, self.g_start = index, match_dist, g_start
        self.match_query = torch.repeat_interleave(torch.arange(offsets.shape[0] - 1, device=offsets.device),
                                                   offsets.diff(), output_size=nnz)

    def read(self, block, q_lo, q_hi, g_lo, g_hi):
        """The matches of queries [q_lo, q_hi) in rows [g_lo, g_hi) of g_feats."""
        lo, hi = self.offsets[q_lo], self.offsets[q_hi]
        if lo == hi:
            return
        rows = self.index[lo:hi] - self.g_start
        pos = torch.nonzero((rows >= g_lo) & (rows < g_hi)).squeeze(1)
        if pos.numel():
            self.match_dist[pos + lo] = block[self.match_query[pos + lo] - q_lo, rows[pos] - g_lo]


def _match_distances(dist, g_feats, offsets, index, q_block, chunk, g_start=0):
    """The distance of every match of g_feats' rows (query of its CSR row, gallery index[k], that
    is row index[k] - g_start of g_feats), read from the distance blocks that `_count_gallery`
    computes with the same q_block and chunk (one pass of GEMMs)."""
    match_dist = torch.empty(index.shape[0], dtype=dist.compute, device=offsets.device)
    if index.shape[0]:
        reader = _MatchReader(offsets, index, match_dist, g_start)
        buffer = torch.empty(q_block * chunk, dtype=dist.compute, device=g_feats.device)
        for g_lo, g_hi, q_lo, q_hi, block in _blocks(dist, g_feats, q_block, chunk, buffer):
            reader.read(block, q_lo, q_hi, g_lo, g_hi)
    return match_dist


def _count_gallery(dist, g_feats, g_pids, g_start, q_pids, offsets, index, match_dist, counts, junk_pid, count_op,
                   q_block, chunk, progress, read_matches=False):
    """Streams g_feats (global gallery rows g_start, g_start + 1, ...) in chunks and adds to
    counts, for every match in (offsets, index, match_dist) (global gallery indices), the kept
    other-pid items of these rows ranked before it. read_matches: match_dist is filled here from
    each block before it is counted (only when one chunk holds the whole gallery, so that a
    block holds every match of its queries)."""
    G = g_feats.shape[0]
    reader = _MatchReader(offsets, index, match_dist, g_start) if read_matches else None
    buffer = torch.empty(q_block * chunk, dtype=dist.compute, device=g_feats.device)
    bar = _progress(G, progress)
    try:
        for g_lo, g_hi, q_lo, q_hi, block in _blocks(dist, g_feats, q_block, chunk, buffer):
            if reader is not None:
                reader.read(block, q_lo, q_hi, g_lo, g_hi)
            count_op(block, q_pids[q_lo:q_hi], g_pids[g_lo:g_hi], g_start + g_lo, offsets[q_lo:q_hi + 1], index,
                     match_dist, junk_pid, counts)
            if bar is not None and q_hi == q_pids.shape[0]:
                bar.update(g_hi - g_lo)
    finally:
        if bar is not None:
            bar.close()


# --- fakes -------------------------------------------------------------------------------------

def _fake_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid):
    check_op_inputs(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid)
    Q = distmat.shape[0]
    return q_pids.new_empty((Q,)), distmat.new_empty((Q,), dtype=torch.float64), distmat.new_empty((Q,), dtype=torch.float64)


def _fake_matches(q_pids, g_pids, q_camids, g_camids, junk_pid):
    check_matches_inputs(q_pids, g_pids, q_camids, g_camids, junk_pid)
    nnz = torch.library.get_ctx().new_dynamic_size()
    return q_pids.new_empty((q_pids.shape[0] + 1,)), q_pids.new_empty((nnz,))


def _fake_count(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts):
    check_count_inputs(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts)


def _fake_finalize(offsets, index, match_dist, counts):
    check_finalize_inputs(offsets, index, match_dist, counts)
    Q = offsets.shape[0] - 1
    return offsets.new_empty((Q,)), match_dist.new_empty((Q,), dtype=torch.float64), match_dist.new_empty((Q,), dtype=torch.float64)


# Rank evaluation has no CUDA C++ kernel: CUDA tensors use Triton. The streamed path
# (evaluate_features) runs matches -> count per gallery chunk -> finalize on one backend.
_IDS_SIGNATURE = "Tensor q_pids, Tensor g_pids, Tensor q_camids, Tensor g_camids, int? junk_pid"
_PER_QUERY = "(Tensor first_hit, Tensor ap, Tensor inp)"
EVALUATE = _registry.register(_registry.OpDef(
    name="evaluate", op="evaluate", check=check_op_inputs, fake=_fake_evaluate, reference=per_query_reference,
    signature=f"(Tensor distmat, {_IDS_SIGNATURE}) -> {_PER_QUERY}", cpp=("cpu",), triton="evaluate",
))
MATCHES = _registry.register(_registry.OpDef(
    name="evaluate_matches", op="evaluate", check=check_matches_inputs, fake=_fake_matches, reference=None,
    signature=f"({_IDS_SIGNATURE}) -> (Tensor match_offsets, Tensor match_index)", cpp=("cpu",), triton="evaluate",
))
COUNT = _registry.register(_registry.OpDef(
    name="evaluate_count", op="evaluate", check=check_count_inputs, fake=_fake_count, reference=None,
    signature="(Tensor dist, Tensor q_pids, Tensor g_pids, int g_start, Tensor match_offsets, Tensor match_index,"
              " Tensor match_dist, int? junk_pid, Tensor(a!) counts) -> ()",
    cpp=("cpu",), triton="evaluate",
))
FINALIZE = _registry.register(_registry.OpDef(
    name="evaluate_finalize", op="evaluate", check=check_finalize_inputs, fake=_fake_finalize, reference=None,
    signature=f"(Tensor match_offsets, Tensor match_index, Tensor match_dist, Tensor counts) -> {_PER_QUERY}",
    cpp=("cpu",), triton="evaluate",
))

__all__ = ["EvaluationResult", "evaluate", "evaluate_features"]
