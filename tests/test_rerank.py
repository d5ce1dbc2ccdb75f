"""k-reciprocal re-ranking: the dense reference against the peers' numpy code, the kernels against
the reference, the streamed evaluation against evaluate on the matrix, and input errors.

Features are clustered and quantized to a 1/8 grid with small values and D <= 16, so every
squared distance is exact in float32 whatever the GEMM's summation order: rankings (and their
ties) are then the same in every implementation, and only V, J and the blend carry rounding."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import fgreid_ops
from fgreid_ops.ops.rerank import BLEND, DEFAULT_MEMORY_BUDGET, KNN, NEIGHBOURS, Reranker, blend_torch
from fgreid_ops.reference import rerank_reference

from helpers import kernel_backends, to_layout
from op_battery import OpTester

BACKENDS = [p for p in kernel_backends() if p.id in ("cpu", "triton-interpret", "triton-cuda")]
TOL = dict(rtol=0, atol=1e-5)


def clustered(num_query, num_gallery, dim=8, clusters=4, seed=0, spread=0.75):
    """(q, g) float32: points around `clusters` random centres, rounded to multiples of 1/8."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randint(-3, 4, (clusters, dim), generator=gen).float()
    n = num_query + num_gallery
    label = torch.randint(0, clusters, (n,), generator=gen)
    x = centres[label] + spread * torch.randn(n, dim, generator=gen)
    x = (x * 8).round().clamp(-40, 40) / 8
    return x[:num_query].contiguous(), x[num_query:].contiguous()


def numpy_re_ranking(q, g, k1, k2, lambda_value, dtype):
    """The re_ranking of torchreid / reid-strong-baseline, transcribed (V and the Jaccard
    distance in `dtype`: float16 as they ship it), with a stable argsort."""
    feat = np.concatenate([q, g]).astype(np.float32)
    query_num, all_num = q.shape[0], feat.shape[0]
    sq = (feat ** 2).sum(1, keepdims=True)
    original_dist = (sq + sq.T) - 2 * (feat @ feat.T)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(dtype)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            h = int(np.around(k1 / 2))
            candidate_forward = initial_rank[candidate, :h + 1]
            candidate_backward = initial_rank[candidate_forward, :h + 1]
            fi_candidate = np.where(candidate_backward == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2 / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=dtype)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=dtype)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=dtype)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]],
                                                                               V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


PARAMS = [
    pytest.param(20, 6, 0.3, id="defaults"),
    pytest.param(7, 3, 0.3, id="odd-k1"),
    pytest.param(5, 1, 0.3, id="k2=1"),
    pytest.param(4, 2, 0.0, id="lambda=0"),
    pytest.param(4, 2, 1.0, id="lambda=1"),
    pytest.param(60, 4, 0.3, id="k1>=N"),
    pytest.param(3, 60, 0.5, id="k2>=N"),
    pytest.param(1, 2, 0.3, id="k1=1"),
]


# --- the reference is the common code ----------------------------------------------------------

@pytest.mark.parametrize("k1,k2,lambda_value", PARAMS)
def test_reference_matches_numpy_float32(k1, k2, lambda_value):
    q, g = clustered(9, 31, seed=k1 + k2)
    expected = numpy_re_ranking(q.numpy(), g.numpy(), k1, k2, lambda_value, np.float32)
    torch.testing.assert_close(rerank_reference(q, g, k1, k2, lambda_value), torch.from_numpy(expected), **TOL)


def test_float16_numpy_variant_distance():
    """The float16 V / Jaccard of the common code against float32 (the figure in the docstring
    of fgreid_ops.ops.rerank): within 5e-3 on clustered features (measured ~2e-3), and not equal."""
    worst = 0.0
    for seed in range(3):
        q, g = clustered(20, 80, dim=16, clusters=6, seed=seed)
        ours = fgreid_ops.rerank(q, g)
        half = torch.from_numpy(numpy_re_ranking(q.numpy(), g.numpy(), 20, 6, 0.3, np.float16).astype(np.float32))
        worst = max(worst, float((ours - half).abs().max()))
    assert 1e-4 < worst < 5e-3


# --- kernels against the reference -------------------------------------------------------------

# the parameter sets of the battery (TestRerank) run on every backend and dtype, the others on the
# CPU kernels; the Triton interpreter (~8 s a kNN stage here) runs the battery's sets in float32
BATTERY_PARAMS = {"defaults": (20, 6, 0.3), "k1>=N": (60, 4, 0.3)}
INTERPRETED = [p for p in BACKENDS if p.id == "triton-interpret"]


@pytest.mark.parametrize("k1,k2,lambda_value", [p for p in PARAMS if p.id not in BATTERY_PARAMS])
def test_parameter_sets_match_reference(k1, k2, lambda_value):
    q, g = clustered(9, 31, seed=k1 + k2)
    out = fgreid_ops.rerank(q, g, k1, k2, lambda_value, backend="cpu")
    assert out.dtype == torch.float32 and out.shape == (9, 31)
    torch.testing.assert_close(out, rerank_reference(q, g, k1, k2, lambda_value), **TOL)


@pytest.mark.parametrize("backend,device", INTERPRETED)
@pytest.mark.parametrize("k1,k2,lambda_value", list(BATTERY_PARAMS.values()), ids=list(BATTERY_PARAMS))
def test_triton_interpreter_matches_reference(backend, device, k1, k2, lambda_value):
    q, g = clustered(9, 31, seed=k1 + k2)
    out = fgreid_ops.rerank(q, g, k1, k2, lambda_value, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (9, 31)
    torch.testing.assert_close(out, rerank_reference(q, g, k1, k2, lambda_value), **TOL)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_exact_ties(backend, device):
    """Duplicate gallery rows, a query repeated in the gallery, a query repeated: equal distances
    rank to the lower index in the kNN lists, so the duplicates get equal re-ranked columns
    except where a duplicate's own position decides."""
    q, g = clustered(6, 24, seed=3)
    g[5], g[9], g[17] = g[2], g[2], q[1]
    q[4] = q[0]
    out = fgreid_ops.rerank(q.to(device), g.to(device), 6, 3, 0.3, backend=backend).cpu()
    torch.testing.assert_close(out, rerank_reference(q, g, 6, 3, 0.3), **TOL)


def test_identical_rows_give_zero_normalized_distance():
    q = torch.ones(3, 4)
    g = torch.ones(5, 4)
    out = fgreid_ops.rerank(q, g, 2, 2, 1.0)
    assert torch.equal(out, torch.zeros(3, 5))
    torch.testing.assert_close(fgreid_ops.rerank(q, g, 2, 2, 0.3), rerank_reference(q, g, 2, 2, 0.3), **TOL)


@pytest.mark.parametrize("k1", [3, 40])
def test_non_finite_features_do_not_crash(k1):
    q, g = clustered(4, 20, seed=47)
    q[1, 0], g[3, 2] = float("nan"), float("inf")
    out = fgreid_ops.rerank(q, g, k1, 2)
    assert out.shape == (4, 20) and out.dtype == torch.float32


def test_single_gallery_item_and_query():
    q, g = clustered(1, 1, seed=5)
    torch.testing.assert_close(fgreid_ops.rerank(q, g), rerank_reference(q, g), **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_strided_inputs_compute_in_float32(dtype):
    q, g = clustered(5, 19, seed=7)
    expected = fgreid_ops.rerank(q, g, 5, 3)
    wide_q = torch.zeros(5, 16, dtype=dtype)
    wide_q[:, ::2] = q.to(dtype)
    out = fgreid_ops.rerank(wide_q[:, ::2], g.to(dtype).T.contiguous().T, 5, 3)
    assert torch.equal(out, expected)  # the 1/8 grid is exact in every one of these dtypes


def test_memory_budget_and_thread_count_do_not_change_the_result():
    q, g = clustered(7, 40, seed=11)
    expected = fgreid_ops.rerank(q, g, 6, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fgreid_ops.rerank(q, g, 6, 3, memory_budget=64 * 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, expected)


def test_tiles_stay_within_the_budget():
    q, g = clustered(7, 40, seed=11)
    reranker = Reranker(q, g, 6, 3, 0.3, "cpu")
    shapes = {tuple(t.shape) for *_, t in reranker.tiles(memory_budget=4 * 105)}
    assert len(shapes) > 1 and all(r * c < 7 * 40 for r, c in shapes)


@pytest.mark.parametrize("backend,device", BACKENDS[:2])
def test_knn_stage_ties_to_lower_index(backend, device):
    """Both kNN kernels against a stable sort of the exact distances, with duplicate rows."""
    q, g = clustered(4, 60, seed=13)
    x = torch.cat([q, g])
    x[10], x[11], x[40] = x[3], x[3], x[3]
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :]) - 2 * (x @ x.T)
    op = torch.ops.fgreid.rerank_knn if backend == "cpu" else torch.ops.fgreid.rerank_knn_triton
    index, row_max = op(x.to(device), sq.to(device), 9)
    assert torch.equal(index.cpu(), torch.sort(d, dim=1, stable=True).indices[:, :9])
    assert torch.equal(row_max.cpu(), d.amax(1))


def test_knn_stage_across_tiles():
    """More rows than one 1024 x 1024 Gram tile: off-diagonal tiles serve their rows and,
    transposed, their columns."""
    q, g = clustered(4, 2300, dim=6, seed=43)
    x = torch.cat([q, g])
    x[1500], x[2100] = x[7], x[7]
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :]) - 2 * (x @ x.T)
    index, row_max = torch.ops.fgreid.rerank_knn(x, sq, 21)
    assert torch.equal(index, torch.sort(d, dim=1, stable=True).indices[:, :21])
    assert torch.equal(row_max, d.amax(1))


_SM90_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fgreid_ops.triton.rerank import _rerank_knn_tile_kernel
scalars = ("N", "D", "stride_x", "row_start", "rows", "num_tiles")
signature = {"x_ptr": "*fp32", "sq_ptr": "*fp32", "keys_ptr": "*i64", "max_ptr": "*fp32",
             **{name: "i64" for name in scalars}, **{name: "constexpr" for name in ("K", "BLOCK_M", "BLOCK_N", "BLOCK_D")}}
source = ASTSource(fn=_rerank_knn_tile_kernel, signature=signature,
                   constexprs={"K": 21, "BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_D": 32})
assert "cubin" in triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm
"""


def test_triton_knn_kernel_compiles_for_sm90():
    """The interpreter does not compile: build the kernel's cubin for an H100-class target (no
    GPU needed, Triton's bundled ptxas) in a process without TRITON_INTERPRET."""
    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", _SM90_COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_torch_blend_traces_fullgraph():
    """The plain-PyTorch blend of the CUDA path under torch.compile(fullgraph=True), on CPU
    tensors: its sizes are data-dependent (unbacked), the tile is the CPU kernel's."""
    q, g = clustered(5, 17, seed=31)
    reranker = Reranker(q, g, 4, 2, 0.3, "cpu")
    x, sq, row_max, sparse = reranker.x, reranker.sq, reranker.row_max, reranker.sparse
    n = x.shape[0]
    inv_key = torch.repeat_interleave(torch.arange(n), sparse[3].diff()) * n + sparse[4]  # column * N + row

    def tile(gram):
        blend_torch(gram, sq[:5], sq[5:], row_max[:5], sparse, inv_key, 0, 5, 0.3)
        return gram

    compiled = torch.compile(tile, fullgraph=True, dynamic=True, backend="eager")
    out = compiled(x[:5] @ x[5:].T)
    assert torch.equal(out, tile(x[:5] @ x[5:].T))
    torch.testing.assert_close(out, fgreid_ops.rerank(q, g, 4, 2, backend="cpu"), **TOL)


# --- streamed evaluation -----------------------------------------------------------------------

def _ids(num_query, num_gallery, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 6, (num_query,), generator=gen), torch.randint(0, 6, (num_gallery,), generator=gen),
            torch.randint(0, 3, (num_query,), generator=gen), torch.randint(0, 3, (num_gallery,), generator=gen))


@pytest.mark.parametrize("memory_budget", [256 * 2**20, 4 * 30])
@pytest.mark.parametrize("quantized", [True, False], ids=["grid", "gaussian"])
def test_evaluate_features_rerank_equals_evaluate_of_rerank(memory_budget, quantized):
    """Exact equality, also for features whose distances carry rounding: both walk the same tiles."""
    if quantized:
        q, g = clustered(13, 57, seed=17)
    else:
        gen = torch.Generator().manual_seed(17)
        q, g = torch.randn(13, 10, generator=gen), torch.randn(57, 10, generator=gen)
    ids = _ids(13, 57, 17)
    params = {"k1": 8, "k2": 3, "lambda_value": 0.3}
    streamed = fgreid_ops.evaluate_features(q, g, *ids, max_rank=10, rerank=params, memory_budget=memory_budget,
                                            return_per_query=True)
    dense = fgreid_ops.evaluate(fgreid_ops.rerank(q, g, **params, memory_budget=memory_budget), *ids, max_rank=10,
                                return_per_query=True)
    for a, b in zip(streamed, dense):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_evaluate_features_rerank_defaults_and_reference_backend():
    q, g = clustered(6, 30, seed=19)
    ids = _ids(6, 30, 19)
    default = fgreid_ops.evaluate_features(q, g, *ids, rerank=True)
    same = fgreid_ops.evaluate_features(q, g, *ids, rerank={"k1": 20, "k2": 6, "lambda_value": 0.3})
    reference = fgreid_ops.evaluate_features(q, g, *ids, rerank={}, backend="reference")
    torch.testing.assert_close(default.cmc, same.cmc, rtol=0, atol=0)
    torch.testing.assert_close(default.mAP, reference.mAP, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend,device", BACKENDS[1:])
def test_evaluate_features_rerank_triton(backend, device):
    q, g = clustered(5, 20, seed=23)
    ids = tuple(t.to(device) for t in _ids(5, 20, 23))
    params = {"k1": 5, "k2": 2}
    streamed = fgreid_ops.evaluate_features(q.to(device), g.to(device), *ids, rerank=params, backend=backend)
    dense = fgreid_ops.evaluate(rerank_reference(q, g, 5, 2).to(device), *ids)
    torch.testing.assert_close(streamed.mAP, dense.mAP, rtol=0, atol=1e-12)


# --- the generic battery (tests/op_battery.py) ---------------------------------------------------

def _public(**changes):
    args = dict(q_feats=torch.zeros(3, 8), g_feats=torch.zeros(5, 8), k1=20, k2=6, lambda_value=0.3,
                memory_budget=DEFAULT_MEMORY_BUDGET)
    args.update(changes)
    return tuple(args.values())


BAD_INPUTS = [  # (message after "fgreid_ops.rerank: expected ", make() -> rerank's arguments, error)
    ("at least one query and one gallery item", lambda: _public(g_feats=torch.zeros(0, 8)), ValueError),
    ("at least one query and one gallery item", lambda: _public(q_feats=torch.zeros(0, 8)), ValueError),
    ("q_feats and g_feats with the same D", lambda: _public(g_feats=torch.zeros(5, 7)), ValueError),
    ("q_feats to be float32", lambda: _public(q_feats=torch.zeros(3, 8, dtype=torch.int64)), TypeError),
    ("q_feats to be 2-D", lambda: _public(q_feats=torch.zeros(3)), ValueError),
    ("k1 >= 1", lambda: _public(k1=0), ValueError),
    ("k2 >= 1", lambda: _public(k2=0), ValueError),
    ("k1 to be an int", lambda: _public(k1=2.0), TypeError),
    ("0 <= lambda_value <= 1", lambda: _public(lambda_value=1.5), ValueError),
    ("memory_budget", lambda: _public(memory_budget=0), ValueError),
]


def _knn_args(feats=None, k=5):
    x = torch.cat(clustered(3, 9, seed=41)) if feats is None else feats
    return x, (x.float() * x.float()).sum(1), k


KNN_BAD_INPUTS = [  # the kNN stage's own checks (messages name rerank_knn)
    ("1 <= k <= N (12)", lambda: _knn_args(k=13), ValueError),
    ("1 <= k <= N (12)", lambda: _knn_args(k=0), ValueError),
    ("feats to be float32", lambda: _knn_args(torch.ones(12, 8, dtype=torch.float64)), TypeError),
    ("feats to be 2-D", lambda: (torch.ones(12), torch.ones(12), 5), ValueError),
    ("sqnorms of shape [N]=[12]", lambda: (*_knn_args()[:1], torch.ones(5), 5), ValueError),
]


class TestRerank(OpTester):
    """rerank(q_feats, g_feats, k1, k2, lambda_value, memory_budget) against the dense reference:
    the kNN op is fgreid::rerank_knn (C++ and Triton), the sparse stage and the blend
    (CPU C++) are opchecked beside it. Features on the 1/8 grid are exact in every dtype. No
    gradients."""

    op_def = KNN
    backends = [p for p in BACKENDS if p.id != "triton-interpret"]  # see test_triton_interpreter_matches_reference
    layouts = ("contiguous", "strided")  # strided: a column-strided q_feats and a transposed g_feats
    opcheck_layouts = ("contiguous",)
    cases = tuple(BATTERY_PARAMS)
    shape = (9, 31, 8)  # Q, G, D
    shapes = [(12, 30, 8), (13, 35, 8)]
    grad_inputs = ()
    bad_inputs = BAD_INPUTS
    kernel_bad_inputs = KNN_BAD_INPUTS
    kernel_message_op = "rerank_knn"
    compile_backend = "eager"  # Dynamo through the stages' fakes (the sparse stage's nnz is unbacked)

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        num_query, num_gallery, dim, *params = shape  # hypothesis draws k1, k2, lambda_value too
        k1, k2, lambda_value = params or BATTERY_PARAMS[case]
        q, g = clustered(num_query, num_gallery, dim=dim, clusters=3 if params else 4, seed=seed + k1 + k2)
        return q.to(dtype).to(device), g.to(dtype).to(device), k1, k2, lambda_value, DEFAULT_MEMORY_BUDGET

    def layout_inputs(self, args, layout):
        q, g, *rest = args
        if layout == "strided":
            q, g = to_layout(q, "strided"), g.T.contiguous().T
        return (q, g, *rest)

    def call(self, backend, q, g, k1, k2, lambda_value, memory_budget):
        return fgreid_ops.rerank(q, g, k1, k2, lambda_value, memory_budget=memory_budget, backend=backend)

    def reference(self, q, g, k1, k2, lambda_value, memory_budget):
        return rerank_reference(q.cpu(), g.cpu(), k1, k2, lambda_value)  # its dense matrices live on the CPU

    def kernel_args(self, args):
        q, g, k1, k2, *_ = args
        x = torch.cat([q, g]).to(torch.float32).contiguous()
        return x, (x * x).sum(1), min(x.shape[0], max(k1 + 1, k2))

    def kernel_opchecks(self, backend, args, device):
        if backend not in NEIGHBOURS.backends:  # the sparse stage and the blend run on CPU
            return []
        x, sq, k = self.kernel_args(args)
        _, _, k1, k2, lambda_value, _ = args
        index, row_max = torch.ops.fgreid.rerank_knn(x, sq, k)
        neighbours = (x, sq, index, row_max, k1, k2)
        sparse = getattr(torch.ops.fgreid, NEIGHBOURS.name)(*neighbours)
        Q = args[0].shape[0]
        gram = (x[:Q] @ x[Q:].T).contiguous()
        blend = (gram, sq[:Q], sq[Q:], row_max[:Q], *sparse, 0, Q, lambda_value)
        return [(getattr(torch.ops.fgreid, NEIGHBOURS.name), neighbours), (getattr(torch.ops.fgreid, BLEND.name), blend)]

    def output_dtype(self, position, dtype):
        return torch.float32

    def assert_close(self, actual, expected, dtype, grad=False):
        torch.testing.assert_close(actual, expected.to(actual.device, actual.dtype), **TOL)

    def shape_strategy(self):
        return st.tuples(st.integers(1, 8), st.integers(1, 24), st.integers(1, 12), st.integers(1, 30),
                         st.integers(1, 8), st.sampled_from([0.0, 0.3, 0.75, 1.0]))


# --- errors ------------------------------------------------------------------------------------

def test_empty_gallery_error_from_evaluate_features():
    ids = (torch.zeros(3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
           torch.zeros(3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="fgreid_ops.evaluate_features: expected at least one query and one gallery"):
        fgreid_ops.evaluate_features(torch.zeros(3, 8), torch.zeros(0, 8), *ids, rerank=True)


@pytest.mark.parametrize("rerank,error,match", [
    ({"k": 3}, ValueError, "expected rerank keys among"),
    ([20, 6], TypeError, "expected rerank to be a dict"),
    ({"k2": -1}, ValueError, "expected k2 >= 1"),
])
def test_evaluate_features_rerank_argument_errors(rerank, error, match):
    q, g = clustered(3, 9, seed=37)
    with pytest.raises(error, match=f"fgreid_ops.evaluate_features: {match}"):
        fgreid_ops.evaluate_features(q, g, *_ids(3, 9, 37), rerank=rerank)
    with pytest.raises(ValueError, match="expected metric='euclidean' with rerank"):
        fgreid_ops.evaluate_features(q, g, *_ids(3, 9, 37), metric="cosine", rerank=True)


def test_direct_op_calls_validate_indices():
    q, g = clustered(3, 9, seed=41)
    x = torch.cat([q, g])
    sq = (x * x).sum(1)
    index, row_max = torch.ops.fgreid.rerank_knn(x, sq, 5)
    bad = index.clone()
    bad[2, 1] = 12
    with pytest.raises(ValueError, match="fgreid_ops.rerank_neighbours: expected knn_index values in"):
        torch.ops.fgreid.rerank_neighbours(x, sq, bad, row_max, 4, 2)
    with pytest.raises(ValueError, match="fgreid_ops.rerank_neighbours: expected knn_index of shape"):
        torch.ops.fgreid.rerank_neighbours(x, sq, index[:, :3], row_max, 4, 2)
    sparse = torch.ops.fgreid.rerank_neighbours(x, sq, index, row_max, 4, 2)
    gram = x[:3] @ x[3:].T
    with pytest.raises(ValueError, match="fgreid_ops.rerank_blend_: expected 0 <= col_start"):
        torch.ops.fgreid.rerank_blend_(gram, sq[:3], sq[3:], row_max[:3], *sparse, 0, 4, 0.3)
    broken = list(sparse)
    broken[1] = broken[1].clone()
    broken[1][0] = 99
    with pytest.raises(ValueError, match="fgreid_ops.rerank_blend_: expected v_columns values in"):
        torch.ops.fgreid.rerank_blend_(gram, sq[:3], sq[3:], row_max[:3], *broken, 0, 3, 0.3)
