"""k-reciprocal re-ranking (SPEC §9; Zhong et al., CVPR 2017) in bounded memory: `rerank`, and the
streamed evaluation behind `evaluate_features(..., rerank=...)`. Fakes of the fgreid::rerank_*
ops live here. There are no gradients: inputs are detached.

What is computed is the `re_ranking` of torchreid, fast-reid and reid-strong-baseline (see
fgreid_ops.reference.rerank_reference): with x = cat(q_feats, g_feats) (N = Q + G rows),
d = (|x_i|^2 + |x_j|^2) - 2 x_i.x_j and d' = each row of d divided by its max, V the weights of
the expanded k-reciprocal neighbours (k1, round(k1 / 2)), averaged over the k2 nearest (k2 > 1),
J the Jaccard distance of the V rows, and the result (1 - lambda_value) J + lambda_value d' on
the query rows and gallery columns.

How, in O(N (k1 + k2)) memory plus one [Q_block, G_chunk] tile:
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
  tests/test_rerank.py::test_float16_numpy_variant_distance), about one float16 ulp of J near 1;
  its rankings differ from these where two re-ranked distances are that close.
- Ties rank to the lower index everywhere (numpy's default argsort is not stable). Rows are
  ranked by d, which is the order of d' except where the division rounds two distances less
  than an ulp apart to one value (the reference then ranks them by index).
- A row whose max distance is 0 (every row identical) has d' = 0, not NaN.
- k1 >= N or k2 >= N take every row, as numpy's slicing does; k2 = 1 skips query expansion.
- Non-finite features give NaN/inf distances (ranked last); the result is then not meaningful.
"""

import torch

from .. import _backend
from .. import _checks as checks
from .._extension import has_extension
from ..reference.rerank import rerank_reference
from .evaluate import _chunk_sizes, _progress, _result, streaming_ops

_OP = "rerank"
DEFAULT_MEMORY_BUDGET = 256 * 2**20
PARAMS = ("k1", "k2", "lambda_value")


# --- input checks ------------------------------------------------------------------------------

def _check_int(op, arg, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} >= {minimum}, got {value}")


def check_params(op, k1, k2, lambda_value):
    _check_int(op, "k1", k1, 1)
    _check_int(op, "k2", k2, 1)
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float)):
        raise TypeError(f"fgreid_ops.{op}: expected lambda_value to be a float, got {type(lambda_value).__name__}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"fgreid_ops.{op}: expected 0 <= lambda_value <= 1, got {lambda_value}")


def check_features(op, q_feats, g_feats):
    for arg, t in (("q_feats", q_feats), ("g_feats", g_feats)):
        checks.check_tensor(op, arg, t)
        checks.check_dim(op, arg, t, 2, "(num, D)")
        checks.check_float_dtype(op, arg, t)
    checks.check_same_device(op, "g_feats", g_feats, "q_feats", q_feats)
    if q_feats.shape[0] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected q_feats to have at least one query, got shape {list(q_feats.shape)}")
    if g_feats.shape[0] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected g_feats to have at least one gallery item, "
                         f"got shape {list(g_feats.shape)}")
    if q_feats.shape[1] != g_feats.shape[1] or q_feats.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected q_feats and g_feats with the same D > 0, "
                         f"got {list(q_feats.shape)} and {list(g_feats.shape)}")
    if q_feats.shape[0] + g_feats.shape[0] > 2**31 - 1:
        raise ValueError(f"fgreid_ops.{op}: expected at most 2^31-1 rows in q_feats and g_feats together, "
                         f"got {q_feats.shape[0] + g_feats.shape[0]}")


def check_memory_budget(op, memory_budget):
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"fgreid_ops.{op}: expected memory_budget to be a positive int (bytes), got {memory_budget!r}")


def check_knn_inputs(op, feats, sqnorms, k):
    """The checks of fgreid::rerank_knn (C++ csrc/cpu/rerank.cpp), also run by its fakes."""
    checks.check_tensor(op, "feats", feats)
    checks.check_dim(op, "feats", feats, 2, "(N, D)")
    if feats.dtype != torch.float32:
        raise TypeError(f"fgreid_ops.{op}: expected feats to be float32, got {feats.dtype}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected feats to be non-empty, got shape {list(feats.shape)}")
    N = feats.shape[0]
    checks.check_tensor(op, "sqnorms", sqnorms)
    if sqnorms.dtype != torch.float32:
        raise TypeError(f"fgreid_ops.{op}: expected sqnorms to be float32, got {sqnorms.dtype}")
    if sqnorms.dim() != 1 or sqnorms.shape[0] != N:
        raise ValueError(f"fgreid_ops.{op}: expected sqnorms of shape [N]=[{N}], got {list(sqnorms.shape)}")
    checks.check_same_device(op, "sqnorms", sqnorms, "feats", feats)
    if not 1 <= k <= N:
        raise ValueError(f"fgreid_ops.{op}: expected 1 <= k <= N ({N}), got {k}")


def rerank_params(op, params):
    """(k1, k2, lambda_value) from evaluate_features' rerank= argument: a dict with any of
    k1, k2, lambda_value (the defaults of `rerank` for the others), or True for all defaults."""
    if params is True:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"fgreid_ops.{op}: expected rerank to be a dict with keys among {list(PARAMS)}, "
                        f"True or None, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"fgreid_ops.{op}: expected rerank keys among {list(PARAMS)}, got {unknown}")
    k1, k2, lambda_value = params.get("k1", 20), params.get("k2", 6), params.get("lambda_value", 0.3)
    check_params(op, k1, k2, lambda_value)
    return k1, k2, lambda_value


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
    entry = torch.repeat_interleave(torch.arange(hi - lo, device=device), count, output_size=total)
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
    O(N (k1 + k2)) for V and the inverted index, and nothing of size Q x G."""

    def __init__(self, q_feats, g_feats, k1, k2, lambda_value, backend):
        x = torch.cat([q_feats.detach(), g_feats.detach()]).to(torch.float32).contiguous()
        self.x, self.num_query, self.lambda_value = x, q_feats.shape[0], float(lambda_value)
        self.sq = (x * x).sum(1)
        k = min(x.shape[0], max(k1 + 1, k2))
        if backend == "triton":
            index, self.row_max = torch.ops.fgreid.rerank_knn_triton(x, self.sq, k)
            cpu = torch.device("cpu")
            sparse = torch.ops.fgreid.rerank_neighbours(x.to(cpu), self.sq.to(cpu), index.to(cpu),
                                                        self.row_max.to(cpu), k1, k2)
            self.sparse = tuple(t.to(x.device) for t in sparse)
            inv_offsets, inv_rows = self.sparse[3], self.sparse[4]
            n = x.shape[0]
            inv_cols = torch.repeat_interleave(torch.arange(n, device=x.device), inv_offsets.diff(),
                                               output_size=inv_rows.shape[0])
            self._inv_key = inv_cols * n + inv_rows
        else:
            index, self.row_max = torch.ops.fgreid.rerank_knn(x, self.sq, k)
            self.sparse = torch.ops.fgreid.rerank_neighbours(x, self.sq, index, self.row_max, k1, k2)
            self._inv_key = None

    def tile(self, q_lo, q_hi, g_lo, g_hi, buffer):
        """Rows q_lo:q_hi, columns g_lo:g_hi of the [Q, G] result, written into buffer."""
        Q = self.num_query
        out = buffer[: (q_hi - q_lo) * (g_hi - g_lo)].view(q_hi - q_lo, g_hi - g_lo)
        torch.mm(self.x[q_lo:q_hi], self.x[Q + g_lo:Q + g_hi].T, out=out)
        args = (self.sq[q_lo:q_hi], self.sq[Q + g_lo:Q + g_hi], self.row_max[q_lo:q_hi])
        if self._inv_key is None:
            torch.ops.fgreid.rerank_blend_(out, *args, *self.sparse, q_lo, Q + g_lo, self.lambda_value)
        else:
            blend_torch(out, *args, self.sparse, self._inv_key, q_lo, Q + g_lo, self.lambda_value)
        return out

    def tiles(self, memory_budget, progress=False):
        """(q_lo, q_hi, g_lo, g_hi, tile) over the whole result, gallery chunks outer; the
        blocking depends only on (Q, G, D, memory_budget), so two walks give identical tiles."""
        Q, G, D = self.num_query, self.x.shape[0] - self.num_query, self.x.shape[1]
        q_block, chunk = _chunk_sizes(Q, G, D, memory_budget, 4)
        buffer = torch.empty(q_block * chunk, dtype=torch.float32, device=self.x.device)
        bar = _progress(G, progress)
        try:
            for g_lo in range(0, G, chunk):
                g_hi = min(G, g_lo + chunk)
                for q_lo in range(0, Q, q_block):
                    q_hi = min(Q, q_lo + q_block)
                    yield q_lo, q_hi, g_lo, g_hi, self.tile(q_lo, q_hi, g_lo, g_hi, buffer)
                if bar is not None:
                    bar.update(g_hi - g_lo)
        finally:
            if bar is not None:
                bar.close()


# --- public functions --------------------------------------------------------------------------

@torch.library.custom_op("fgreid::rerank", mutates_args=())
def _rerank_op(q_feats: torch.Tensor, g_feats: torch.Tensor, k1: int, k2: int, lambda_value: float,
               memory_budget: int, backend: str) -> torch.Tensor:
    reranker = Reranker(q_feats, g_feats, k1, k2, lambda_value, backend)
    out = torch.empty(q_feats.shape[0], g_feats.shape[0], dtype=torch.float32, device=q_feats.device)
    for q_lo, q_hi, g_lo, g_hi, tile in reranker.tiles(memory_budget):
        out[q_lo:q_hi, g_lo:g_hi] = tile
    return out


@_rerank_op.register_fake
def _(q_feats, g_feats, k1, k2, lambda_value, memory_budget, backend):
    check_features(_OP, q_feats, g_feats)
    check_params(_OP, k1, k2, lambda_value)
    return q_feats.new_empty((q_feats.shape[0], g_feats.shape[0]), dtype=torch.float32)


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
    rounding (<= 1e-5 on clustered features). Works under torch.compile(fullgraph=True) (one
    opaque op).
    """
    check_features(_OP, q_feats, g_feats)
    check_params(_OP, k1, k2, lambda_value)
    check_memory_budget(_OP, memory_budget)
    backend = _backend.resolve(_OP, q_feats.device.type, backend)
    if backend == "reference":
        return rerank_reference(q_feats, g_feats, k1, k2, lambda_value)
    return _rerank_op(q_feats.detach(), g_feats.detach(), k1, k2, float(lambda_value), memory_budget, backend)


def evaluate_reranked(q_feats, g_feats, ids, params, max_rank, memory_budget, progress, return_per_query,
                      junk_pid, backend):
    """evaluate_features(..., rerank=params) after its input checks: the re-ranked tiles are
    walked twice (first for the matches' own distances, then counting the items ranked before
    each), so that no [Q, G] matrix is stored. See `rerank` and evaluate_features."""
    op = "evaluate_features"
    k1, k2, lambda_value = rerank_params(op, params)
    rerank_backend = _backend.resolve(_OP, q_feats.device.type, backend)
    if rerank_backend == "reference":
        from ..reference.evaluate import per_query_reference

        distmat = rerank_reference(q_feats, g_feats, k1, k2, lambda_value)
        return _result(*per_query_reference(distmat, *ids, junk_pid), max_rank, return_per_query)

    q_pids, g_pids, _, _ = ids
    offsets, index, count_op, finalize = streaming_ops(rerank_backend, ids, junk_pid)

    reranker = Reranker(q_feats, g_feats, k1, k2, lambda_value, rerank_backend)
    Q, nnz, device = q_feats.shape[0], index.shape[0], q_feats.device
    match_query = torch.repeat_interleave(torch.arange(Q, device=device), offsets.diff(), output_size=nnz)
    match_dist = torch.empty(nnz, dtype=torch.float32, device=device)
    for q_lo, q_hi, g_lo, g_hi, tile in reranker.tiles(memory_budget):
        lo, hi = (int(t) for t in offsets[[q_lo, q_hi]].tolist())
        g_index = index[lo:hi]
        inside = (g_index >= g_lo) & (g_index < g_hi)
        slots = torch.nonzero(inside).squeeze(1) + lo
        match_dist[slots] = tile[match_query[slots] - q_lo, index[slots] - g_lo]
    counts = torch.zeros(nnz, dtype=torch.int64, device=device)
    for q_lo, q_hi, g_lo, g_hi, tile in reranker.tiles(memory_budget, progress):
        count_op(tile, q_pids[q_lo:q_hi], g_pids[g_lo:g_hi], g_lo, offsets[q_lo:q_hi + 1], index, match_dist,
                 junk_pid, counts)
    return _result(*finalize(offsets, index, match_dist, counts), max_rank, return_per_query)


# --- fakes -------------------------------------------------------------------------------------

def _fake_knn(feats, sqnorms, k):
    check_knn_inputs("rerank_knn", feats, sqnorms, k)
    return feats.new_empty((feats.shape[0], k), dtype=torch.int64), feats.new_empty((feats.shape[0],))


def _fake_neighbours(feats, sqnorms, knn_index, row_max, k1, k2):
    check_knn_inputs("rerank_neighbours", feats, sqnorms, 1)
    N = feats.shape[0]
    ctx = torch.library.get_ctx()
    nnz = ctx.new_dynamic_size()
    long = dict(dtype=torch.int64)
    return (feats.new_empty((N + 1,), **long), feats.new_empty((nnz,), **long), feats.new_empty((nnz,)),
            feats.new_empty((N + 1,), **long), feats.new_empty((nnz,), **long), feats.new_empty((nnz,)))


def _fake_blend(gram, row_sq, col_sq, row_max, v_offsets, v_columns, v_values, inv_offsets, inv_rows,
                inv_values, row_start, col_start, lambda_value):
    if gram.dim() != 2 or gram.dtype != torch.float32:
        raise ValueError(f"fgreid_ops.rerank_blend_: expected gram to be a 2-D float32 tensor, got "
                         f"{gram.dim()}-D {gram.dtype}")


if has_extension():
    torch.library.register_fake("fgreid::rerank_knn")(_fake_knn)
    torch.library.register_fake("fgreid::rerank_neighbours")(_fake_neighbours)
    torch.library.register_fake("fgreid::rerank_blend_")(_fake_blend)

__all__ = ["rerank"]
