"""k-reciprocal re-ranking (docs/ops.md#rerank; Zhong et al., CVPR 2017) in bounded memory: `rerank`, and the
streamed evaluation behind `evaluate_features(..., rerank=...)`. Fakes of the fgreid::rerank_*
ops live here. There are no gradients: inputs are detached.

What is computed is the `re_ranking` of torchreid, fast-reid and reid-strong-baseline (see
fgreid_ops.reference.rerank_reference): with x = cat(q_feats, g_feats) (N = Q + G rows),
d = (|x_i|^2 + |x_j|^2) - 2 x_i.x_j and d' = each row of d divided by its max, V the weights of
the expanded k-reciprocal neighbours (k1, round(k1 / 2)), averaged over the k2 nearest (k2 > 1),
J the Jaccard distance of the V rows, and the result (1 - lambda_value) J + lambda_value d' on
the query rows and gallery columns.

How, in O(N (k1 + k2)) memory (V after query expansion has at most k2 |S| entries per row; ~74
on average on the bench's clustered data, k1=20, k2=6) plus one [Q_block, G_chunk] tile:
1. kNN (fgreid::rerank_knn, C++; fgreid::rerank_knn_triton on CUDA): GEMM tiles of the Gram
   matrix, a running top-k of every row, each row's max.
2. Sparse stage (fgreid::rerank_neighbours, C++): the k-reciprocal sets and their expansion from
   the kNN lists alone, V as CSR, query expansion, and V's transpose as the inverted index.
3. Blend (fgreid::rerank_blend_, C++; plain PyTorch on the device on CUDA): per tile, the Gram
   tile by one GEMM, then the Jaccard sums over the inverted index and the blend, in place.

Choices where the common code is silent or differs:
- float32 throughout (the common code stores V and J in float16). The float16 variant is
  ~2e-3 from this result: max abs difference 1.8e-3 to 2.8e-3 measured on clustered features
  (N = 100 to 500, D = 16 to 64, k1=20, k2=6, lambda=0.3;
  tests/test_rerank.py::test_float16_numpy_variant_distance), a few float16 steps of J (4.9e-4
  near 1); its rankings differ from these where two re-ranked distances are that close.
- Ties rank to the lower index everywhere (numpy's default argsort is not stable). Rows are
  ranked by d, which is the order of d' except where the division rounds two distances less
  than an ulp apart to one value (the reference then ranks them by index).
- The kernels' own stages (top-k, sparse sets, sums) do not depend on the thread count. The Gram
  tiles come from torch.mm (MKL/OpenBLAS), whose rounding is the same for the same call; rankings
  can therefore differ from another GEMM's only where two distances are within rounding.
- A row whose max distance is 0 (every row identical) has d' = 0, not NaN.
- k1 >= N or k2 >= N take every row, as numpy's slicing does; k2 = 1 skips query expansion.
- Non-finite features give NaN/inf distances (ranked last); the result is then not meaningful.
"""

import time

import torch

from .. import _backend, _registry
from ..checks.evaluate import check_memory_budget
from ..checks.rerank import (
    OP, check_blend_inputs, check_features, check_knn_inputs, check_neighbours_inputs, check_params, rerank_params,
)
from ..reference.evaluate import per_query_reference
from ..reference.rerank import rerank_reference

DEFAULT_MEMORY_BUDGET = 256 * 2**20
_MIN_CHUNK = 1024


def tile_sizes(num_query, num_gallery, memory_budget):
    """(query block, gallery chunk) of the result tiles: block * chunk float32 within
    memory_budget bytes, queries blocked only when all of them would leave chunks under
    _MIN_CHUNK columns (a GEMM that narrow runs slowly). Gallery rows are views: no copy."""
    elements = max(1, memory_budget // 4)
    min_chunk = min(num_gallery, _MIN_CHUNK)
    q_block = num_query if num_query * min_chunk <= elements else max(1, elements // min_chunk)
    return q_block, max(1, min(num_gallery, elements // q_block))


# --- the three stages --------------------------------------------------------------------------

def blend_torch(gram, row_sq, col_sq, row_max, sparse, inv_key, row_start, col_start, lambda_value):
    """fgreid::rerank_blend_ in plain PyTorch on any device (the CUDA path). inv_key[p] =
    column * N + row of inverted-index entry p (ascending), to find a column's rows in
    [col_start, col_start + C) by binary search. Each (query, gallery) pair sums its terms in
    index_put_'s order: deterministic on CPU, and on CUDA under torch.use_deterministic_algorithms."""
    v_offsets, v_columns, v_values, _, inv_rows, inv_values = sparse
    R, C = gram.shape
    N = v_offsets.shape[0] - 1
    device = gram.device
    span = v_offsets[row_start:row_start + R + 1]
    lo, hi = (int(t) for t in span[[0, -1]].tolist())
    rows = torch.repeat_interleave(torch.arange(R, device=device), span.diff(), output_size=hi - lo)
    cols, vals = v_columns[lo:hi], v_values[lo:hi]
    start = torch.searchsorted(inv_key, cols * N + col_start)
    count = torch.searchsorted(inv_key, cols * N + (col_start + C)) - start
    total = int(count.sum())
    entry = torch.repeat_interleave(torch.arange(count.shape[0], device=device), count, output_size=total)
    pos = torch.arange(total, device=device) - (torch.cumsum(count, 0) - count)[entry] + start[entry]
    m = torch.zeros(R, C, dtype=torch.float32, device=device)
    m.index_put_((rows[entry], inv_rows[pos] - col_start), torch.minimum(vals[entry], inv_values[pos]),
                 accumulate=True)
    d = (row_sq[:, None] + col_sq[None, :]) - 2 * gram
    positive = row_max > 0
    d_norm = torch.where(positive[:, None], d / torch.where(positive, row_max, 1)[:, None], 0)
    gram.copy_((1 - lambda_value) * (1 - m / (2 - m)) + lambda_value * d_norm)


class Reranker:
    """The kNN and sparse stages of one (q_feats, g_feats, k1, k2, lambda_value), after which
    `tile` gives any [q_lo:q_hi, g_lo:g_hi] block of the result. Holds x = cat(q, g) in float32,
    O(N (k1 + k2)) for V and the inverted index, and nothing of size Q x G.
    timings: None, or a dict that gets the seconds of each stage ("knn", "sparse", and "blend"
    summed over the tiles walked), the device synchronized around each (bench/rerank.py)."""

    def __init__(self, q_feats, g_feats, k1, k2, lambda_value, backend, timings=None):
        self.timings, self._device = timings, q_feats.device
        start = self._clock()
        x = torch.cat([q_feats.detach(), g_feats.detach()]).to(torch.float32).contiguous()
        self.x, self.num_query, self.lambda_value = x, q_feats.shape[0], float(lambda_value)
        self.sq = (x * x).sum(1)
        k = min(x.shape[0], max(k1 + 1, k2))
        index, self.row_max = _backend.kernel(KNN, backend)(x, self.sq, k)
        start = self._record("knn", start)
        neighbours = _backend.kernel(NEIGHBOURS, "cpu")
        if backend == "triton":  # the sparse stage runs on CPU copies of the O(N (k1 + k2)) lists
            cpu = torch.device("cpu")
            sparse = neighbours(x.to(cpu), self.sq.to(cpu), index.to(cpu), self.row_max.to(cpu), k1, k2)
            self.sparse = tuple(t.to(x.device) for t in sparse)
            inv_offsets, inv_rows = self.sparse[3], self.sparse[4]
            n = x.shape[0]
            inv_cols = torch.repeat_interleave(torch.arange(n, device=x.device), inv_offsets.diff(),
                                               output_size=inv_rows.shape[0])
            self._inv_key = inv_cols * n + inv_rows
        else:
            self.sparse = neighbours(x, self.sq, index, self.row_max, k1, k2)
            self._inv_key = None
        self._record("sparse", start)

    def _clock(self):
        if self.timings is None:
            return None
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    def _record(self, stage, start):
        """Adds the seconds since `start` to timings[stage]; returns the new start."""
        if self.timings is None:
            return None
        now = self._clock()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - start
        return now

    def tile(self, q_lo, q_hi, g_lo, g_hi, buffer):
        """Rows q_lo:q_hi, columns g_lo:g_hi of the [Q, G] result, written into buffer."""
        Q = self.num_query
        start = self._clock()
        out = buffer[: (q_hi - q_lo) * (g_hi - g_lo)].view(q_hi - q_lo, g_hi - g_lo)
        torch.mm(self.x[q_lo:q_hi], self.x[Q + g_lo:Q + g_hi].T, out=out)
        args = (self.sq[q_lo:q_hi], self.sq[Q + g_lo:Q + g_hi], self.row_max[q_lo:q_hi])
        if self._inv_key is None:
            _backend.kernel(BLEND, "cpu")(out, *args, *self.sparse, q_lo, Q + g_lo, self.lambda_value)
        else:
            blend_torch(out, *args, self.sparse, self._inv_key, q_lo, Q + g_lo, self.lambda_value)
        self._record("blend", start)
        return out

    def tiles(self, memory_budget, bar=None):
        """(q_lo, q_hi, g_lo, g_hi, tile) over the whole result, gallery chunks outer; the
        blocking depends only on (Q, G, memory_budget), so two walks give identical tiles.
        bar: a progress bar updated per gallery chunk, or None."""
        Q, G = self.num_query, self.x.shape[0] - self.num_query
        q_block, chunk = tile_sizes(Q, G, memory_budget)
        buffer = torch.empty(q_block * chunk, dtype=torch.float32, device=self.x.device)
        for g_lo in range(0, G, chunk):
            g_hi = min(G, g_lo + chunk)
            for q_lo in range(0, Q, q_block):
                q_hi = min(Q, q_lo + q_block)
                yield q_lo, q_hi, g_lo, g_hi, self.tile(q_lo, q_hi, g_lo, g_hi, buffer)
            if bar is not None:
                bar.update(g_hi - g_lo)


# --- public functions --------------------------------------------------------------------------

def rerank(q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
           memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str | None = None) -> torch.Tensor:
    """k-reciprocal re-ranked distances, [Q, G] float32 (Zhong et al., CVPR 2017).

    Args:
        q_feats: [Q, D], g_feats: [G, D] float features (any strides, any float dtype: computed
            in float32), on the same device; G >= 1.
        k1: neighbourhood of the k-reciprocal sets (>= 1); round(k1 / 2) for their expansion.
        k2: query-expansion neighbourhood (>= 1; 1 disables it).
        lambda_value: weight of the original distance d' in [0, 1] (0: Jaccard only).
        memory_budget: bytes for one tile of the result (the output itself is Q x G).
        backend: None (auto), "reference" (dense, small N only), "cpu" or "triton".

    The algorithm, its memory and the choices that differ from the common code are in this
    module's docstring. `evaluate_features(..., rerank={...})` streams the same tiles into the
    ranking instead of storing them: with the same memory_budget its result equals
    `evaluate(rerank(...), ...)` exactly. Differences from rerank_reference are float32
    rounding (<= 1e-5 on clustered features). Traces under torch.compile(fullgraph=True) (the
    Python loop over tiles unrolls; the sparse stage's size is data-dependent).
    """
    check_features(OP, q_feats, g_feats)
    check_params(OP, k1, k2, lambda_value)
    check_memory_budget(OP, memory_budget)
    backend = _backend.resolve(KNN, q_feats.device.type, backend)
    if backend == "reference":
        return rerank_reference(q_feats, g_feats, k1, k2, lambda_value)
    reranker = Reranker(q_feats, g_feats, k1, k2, lambda_value, backend)
    out = torch.empty(q_feats.shape[0], g_feats.shape[0], dtype=torch.float32, device=q_feats.device)
    for q_lo, q_hi, g_lo, g_hi, tile in reranker.tiles(memory_budget):
        out[q_lo:q_hi, g_lo:g_hi] = tile
    return out


def evaluate_reranked(q_feats, g_feats, ids, params, metric, memory_budget, junk_pid, backend, bar=None):
    """(first_hit, ap, inp) per query of evaluate_features(..., rerank=params), after its input
    checks (backend: the one it resolved). The re-ranked tiles are walked twice, first for the
    matches' own distances, then counting the items ranked before each: no [Q, G] matrix is
    stored. bar: a progress bar over the second walk (closed here), or None."""
    op = "evaluate_features"
    try:
        k1, k2, lambda_value = rerank_params(op, params)
        if metric != "euclidean":
            raise ValueError(f"fgreid_ops.{op}: expected metric='euclidean' with rerank, got {metric!r}")
        rerank_backend = _backend.resolve(KNN, q_feats.device.type, backend)
        if rerank_backend == "reference":
            return per_query_reference(rerank_reference(q_feats, g_feats, k1, k2, lambda_value), *ids, junk_pid)

        q_pids, g_pids, _, _ = ids
        offsets, index = _backend.kernel("evaluate_matches", backend)(*ids, junk_pid)
        count_op, finalize = _backend.kernel("evaluate_count", backend), _backend.kernel("evaluate_finalize", backend)
        reranker = Reranker(q_feats, g_feats, k1, k2, lambda_value, rerank_backend)
        Q, nnz, device = q_feats.shape[0], index.shape[0], q_feats.device
        match_query = torch.repeat_interleave(torch.arange(Q, device=device), offsets.diff(), output_size=nnz)
        match_dist = torch.empty(nnz, dtype=torch.float32, device=device)
        for q_lo, q_hi, g_lo, g_hi, tile in reranker.tiles(memory_budget):
            lo, hi = (int(t) for t in offsets[[q_lo, q_hi]].tolist())
            g_index = index[lo:hi]
            slots = torch.nonzero((g_index >= g_lo) & (g_index < g_hi)).squeeze(1) + lo
            match_dist[slots] = tile[match_query[slots] - q_lo, index[slots] - g_lo]
        counts = torch.zeros(nnz, dtype=torch.int64, device=device)
        for q_lo, q_hi, g_lo, g_hi, tile in reranker.tiles(memory_budget, bar):
            count_op(tile, q_pids[q_lo:q_hi], g_pids[g_lo:g_hi], g_lo, offsets[q_lo:q_hi + 1], index, match_dist,
                     junk_pid, counts)
        return finalize(offsets, index, match_dist, counts)
    finally:
        if bar is not None:
            bar.close()


# --- fakes and descriptions --------------------------------------------------------------------

def _fake_knn(feats, sqnorms, k):
    check_knn_inputs(feats, sqnorms, k)
    return feats.new_empty((feats.shape[0], k), dtype=torch.int64), feats.new_empty((feats.shape[0],))


def _fake_neighbours(feats, sqnorms, knn_index, row_max, k1, k2):
    check_neighbours_inputs(feats, sqnorms, knn_index, row_max, k1, k2)
    N = feats.shape[0]
    nnz = torch.library.get_ctx().new_dynamic_size()
    index = dict(dtype=torch.int64)
    return (feats.new_empty((N + 1,), **index), feats.new_empty((nnz,), **index), feats.new_empty((nnz,)),
            feats.new_empty((N + 1,), **index), feats.new_empty((nnz,), **index), feats.new_empty((nnz,)))


def _fake_blend(*args):
    check_blend_inputs(*args)


KNN = _registry.register(_registry.OpDef(
    name="rerank_knn", op=OP, check=check_knn_inputs, fake=_fake_knn, reference=None,
    signature="(Tensor feats, Tensor sqnorms, int k) -> (Tensor index, Tensor row_max)",
    cpp=("cpu",), triton="rerank",
))
NEIGHBOURS = _registry.register(_registry.OpDef(
    name="rerank_neighbours", op=OP, check=check_neighbours_inputs, fake=_fake_neighbours, reference=None,
    signature="(Tensor feats, Tensor sqnorms, Tensor knn_index, Tensor row_max, int k1, int k2)"
              " -> (Tensor v_offsets, Tensor v_columns, Tensor v_values, Tensor inv_offsets, Tensor inv_rows,"
              " Tensor inv_values)",
    cpp=("cpu",),
))
BLEND = _registry.register(_registry.OpDef(
    name="rerank_blend_", op=OP, check=check_blend_inputs, fake=_fake_blend, reference=None,
    signature="(Tensor(a!) gram, Tensor row_sq, Tensor col_sq, Tensor row_max, Tensor v_offsets,"
              " Tensor v_columns, Tensor v_values, Tensor inv_offsets, Tensor inv_rows, Tensor inv_values,"
              " int row_start, int col_start, float lambda_value) -> ()",
    cpp=("cpu",),
))

__all__ = ["rerank"]
