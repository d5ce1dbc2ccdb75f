import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import fgreid_ops
from fgreid_ops.ops.evaluate import COUNT, EVALUATE, FINALIZE, MATCHES
from fgreid_ops.reference import distance_reference, evaluate_reference

from helpers import kernel_backends
from op_battery import OpTester

BACKENDS = kernel_backends()
DIST_LAYOUTS = ["contiguous", "transposed", "strided"]


# --- the standard per-query algorithm, transcribed in numpy --------------------------------------

def numpy_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, junk_pid=None):
    """torchreid's eval_market1501 (python version) with fast-reid's mINP, a stable argsort (ties
    to the lower gallery index), the junk pid removed when given, and the CMC padded with its
    last value when fewer than max_rank items remain. Returns cmc, mAP, mINP, skipped, ap[Q]."""
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids, q_camids, g_camids = (np.asarray(a) for a in (q_pids, g_pids, q_camids, g_camids))
    num_q = distmat.shape[0]
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    per_query_ap = np.full(num_q, np.nan)
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        if junk_pid is not None:
            remove |= g_pids[order] == junk_pid
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_max_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        cmc[cmc > 1] = 1
        cmc = np.concatenate([cmc, np.full(max(0, max_rank - len(cmc)), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        per_query_ap[q_idx] = tmp_cmc.sum() / num_rel
        all_ap.append(per_query_ap[q_idx])
    if not all_ap:
        return np.full(max_rank, np.nan), np.nan, np.nan, num_q, per_query_ap
    cmc = np.asarray(all_cmc, dtype=np.float64).sum(0) / len(all_ap)
    return cmc, np.mean(all_ap), np.mean(all_inp), num_q - len(all_ap), per_query_ap


def assert_matches_numpy(result, distmat, ids, max_rank, junk_pid=None):
    cmc, mean_ap, mean_inp, skipped, ap = numpy_eval(distmat.double().cpu(), *(t.cpu() for t in ids), max_rank, junk_pid)
    torch.testing.assert_close(result.cmc.cpu(), torch.from_numpy(cmc), rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(result.mAP.cpu(), torch.tensor(mean_ap, dtype=torch.float64), rtol=1e-12, atol=1e-12,
                               equal_nan=True)
    torch.testing.assert_close(result.mINP.cpu(), torch.tensor(mean_inp, dtype=torch.float64), rtol=1e-12,
                               atol=1e-12, equal_nan=True)
    assert int(result.num_skipped) == skipped
    if result.ap is not None:
        torch.testing.assert_close(result.ap.cpu(), torch.from_numpy(ap), rtol=1e-12, atol=1e-12, equal_nan=True)


def make_problem(Q, G, num_pids, num_cams, seed=0, levels=None, dtype=torch.float32, device="cpu"):
    """Random ids and distances; with `levels`, distances are small integers (many ties)."""
    g = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, num_pids, (Q,), generator=g), torch.randint(0, num_pids, (G,), generator=g),
           torch.randint(0, num_cams, (Q,), generator=g), torch.randint(0, num_cams, (G,), generator=g))
    if levels:
        distmat = torch.randint(0, levels, (Q, G), generator=g).to(torch.float64)
    else:
        distmat = torch.rand(Q, G, generator=g, dtype=torch.float64)
    return distmat.to(dtype).to(device), tuple(t.to(device) for t in ids)


def to_dist_layout(d, layout):
    if layout == "transposed":
        return d.T.contiguous().T
    if layout == "strided":
        wide = torch.zeros(d.shape[0], 2 * d.shape[1], dtype=d.dtype, device=d.device)
        wide[:, 1::2] = d
        return wide[:, 1::2]
    return d.contiguous()


# --- reference and numpy transcription: known values ---------------------------------------------

def known_problem():
    # query 0 (pid 1, cam 0): gallery 2 is removed (same pid and camera); ranking 1 (0.1), 3 (0.1,
    # tie -> lower index first), 0 (0.3): its only match is at rank 3.
    # query 1 (pid 2, cam 0): gallery 3 removed; 1 (0.4) ties 2 (0.4) and wins: rank 1.
    # query 2 (pid 7): no match, skipped.
    distmat = torch.tensor([[0.3, 0.1, 0.2, 0.1], [0.5, 0.4, 0.4, 0.1], [0.1, 0.2, 0.3, 0.4]])
    ids = (torch.tensor([1, 2, 7]), torch.tensor([1, 2, 1, 2]), torch.tensor([0, 0, 0]), torch.tensor([1, 1, 0, 0]))
    return distmat, ids


def test_known_values_numpy_and_reference():
    distmat, ids = known_problem()
    cmc, mean_ap, mean_inp, skipped, ap = numpy_eval(distmat, *ids, max_rank=4)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(ap[:2], [1 / 3, 1.0])
    assert math.isnan(ap[2]) and skipped == 1
    assert mean_ap == pytest.approx(2 / 3) and mean_inp == pytest.approx(2 / 3)
    ref = evaluate_reference(distmat, *ids, max_rank=4)
    torch.testing.assert_close(ref[0], torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    assert float(ref[1]) == pytest.approx(2 / 3) and int(ref[3]) == 1


def test_known_values_map_and_minp():
    # one query, matches at ranks 1, 3, 6 among kept items: AP = (1/1 + 2/3 + 3/6) / 3, INP = 3/6
    distmat = torch.arange(6.0)[None]
    ids = (torch.tensor([5]), torch.tensor([5, 0, 5, 1, 2, 5]), torch.tensor([0]), torch.tensor([1] * 6))
    for backend in ["reference", "cpu"] + (["triton"] if fgreid_ops._backend.triton_available("cpu") else []):
        r = fgreid_ops.evaluate(distmat, *ids, max_rank=7, backend=backend)
        assert float(r.mAP) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
        assert float(r.mINP) == pytest.approx(0.5)
        assert r.cmc.tolist() == [1.0] * 7


# --- kernels vs the numpy transcription ----------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu", id="reference")])
def test_edge_cases(backend, device):
    run = lambda d, ids, **kw: fgreid_ops.evaluate(d.to(device), *(t.to(device) for t in ids), backend=backend, **kw)
    # max_rank larger than the gallery: the curve is padded with its last value
    distmat, ids = make_problem(5, 4, num_pids=2, num_cams=2, seed=1)
    r = run(distmat, ids, max_rank=50, return_per_query=True)
    assert r.cmc.shape == (50,)
    assert_matches_numpy(r, distmat, ids, 50)
    # single-camera gallery seen from the same camera: every same-pid item is removed
    distmat, ids = make_problem(6, 30, num_pids=3, num_cams=1, seed=2)
    r = run(distmat, ids, max_rank=5)
    assert int(r.num_skipped) == 6 and torch.isnan(r.mAP) and torch.isnan(r.cmc).all()
    # single-camera gallery seen from another camera: nothing is removed
    ids = (ids[0], ids[1], ids[2] + 1, ids[3])
    r = run(distmat, ids, max_rank=5)
    assert_matches_numpy(r, distmat, ids, 5)
    # one gallery item, one query
    r = run(torch.tensor([[0.5]]), (torch.tensor([3]), torch.tensor([3]), torch.tensor([0]), torch.tensor([1])))
    assert r.cmc.tolist() == [1.0] * 50 and float(r.mAP) == 1.0 and int(r.num_skipped) == 0


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu", id="reference")])
def test_nan_and_signed_zero_distances(backend, device):
    distmat, ids = make_problem(8, 60, num_pids=3, num_cams=2, seed=3, levels=6)
    distmat[distmat == 3] = float("nan")
    distmat[distmat == 1] = -0.0
    distmat[:, ::3][distmat[:, ::3] == -0.0] = 0.0
    distmat[distmat == 4] = float("inf")
    distmat[distmat == 5] = -float("inf")
    distmat[:, ::4][distmat[:, ::4] == 2] = 1e-40  # subnormal
    r = fgreid_ops.evaluate(distmat.to(device), *(t.to(device) for t in ids), max_rank=20,
                            return_per_query=True, backend=backend)
    assert_matches_numpy(r, distmat, ids, 20)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("levels", [None, 3])
def test_many_matches_per_query(backend, device, levels):
    # ~200 matches per query: the CPU kernel's binary-search path; some NaN matches too
    distmat, ids = make_problem(4, 600, num_pids=2, num_cams=3, seed=4, levels=levels)
    distmat[0, ::7] = float("nan")
    r = fgreid_ops.evaluate(distmat.to(device), *(t.to(device) for t in ids), max_rank=50,
                            return_per_query=True, backend=backend)
    assert_matches_numpy(r, distmat, ids, 50)
    # the same, streamed in chunks (g_start > 0 for the binary search)
    d32 = distmat.float()
    offsets, index = torch.ops.fgreid.evaluate_matches(*ids, None)
    query = torch.repeat_interleave(torch.arange(4), offsets.diff())
    match_dist = d32[query, index]
    counts = torch.zeros_like(index)
    for lo in range(0, 600, 130):
        torch.ops.fgreid.evaluate_count(d32[:, lo:lo + 130], ids[0], ids[1][lo:lo + 130], lo, offsets, index,
                                        match_dist, None, counts)
    first_hit, ap, _ = torch.ops.fgreid.evaluate_finalize(offsets, index, match_dist, counts)
    expected = numpy_eval(d32, *ids, 50)[4]
    torch.testing.assert_close(ap, torch.from_numpy(expected), rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu", id="reference")])
def test_junk_pid(backend, device):
    distmat, ids = make_problem(10, 80, num_pids=4, num_cams=2, seed=5)
    ids = tuple(t - 1 if i < 2 else t for i, t in enumerate(ids))  # pids -1 .. 2, -1 junk
    for junk in (None, -1, 0):
        r = fgreid_ops.evaluate(distmat.to(device), *(t.to(device) for t in ids), max_rank=10, junk_pid=junk,
                                return_per_query=True, backend=backend)
        assert_matches_numpy(r, distmat, ids, 10, junk_pid=junk)


def test_numpy_inputs_like_torchreid():
    distmat, ids = make_problem(7, 50, num_pids=4, num_cams=2, seed=6)
    r = fgreid_ops.evaluate(distmat.numpy(), *(t.numpy().astype(np.int32) for t in ids), max_rank=5)
    assert_matches_numpy(r, distmat, ids, 5)
    assert set(r.summary()) == {"rank1", "rank5", "mAP", "mINP", "num_skipped"}
    assert r.rank(1) == pytest.approx(float(r.cmc[0]))


# --- features form: streamed == distance-matrix form ---------------------------------------------

def integer_features(n, D, seed):
    # small integers: every dot product and squared distance is exact in float32, whatever the
    # GEMM blocking, so streamed and whole-matrix distances are bit-equal (ties included)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, D), generator=g).float()


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu", id="reference")])
@pytest.mark.parametrize("budget", [1 << 30, 2040, 600], ids=["one-chunk", "chunks", "query-blocks"])
def test_features_equal_distmat_exact(backend, device, budget, monkeypatch):
    # with chunks of >= 16 columns: 3 chunks of 30 at 2040 bytes; blocks of 3 queries at 600
    monkeypatch.setattr(importlib.import_module("fgreid_ops.ops.evaluate"), "_MIN_CHUNK", 16)
    Q, G, D = 11, 90, 6
    _, ids = make_problem(Q, G, num_pids=5, num_cams=3, seed=7)
    qf, gf = integer_features(Q, D, 1), integer_features(G, D, 2)
    gf[10:20] = gf[:10]  # duplicate gallery rows: exact distance ties
    distmat = distance_reference(qf, gf, "euclidean")
    ids = tuple(t.to(device) for t in ids)
    expected = fgreid_ops.evaluate(distmat.to(device), *ids, max_rank=20, return_per_query=True, backend=backend)
    got = fgreid_ops.evaluate_features(qf.to(device), gf.to(device), *ids, max_rank=20, memory_budget=budget,
                                       return_per_query=True, backend=backend)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert_matches_numpy(got, distmat, ids, 20)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_features_cosine_and_layouts(backend, device, dtype):
    Q, G, D = 8, 70, 12
    _, ids = make_problem(Q, G, num_pids=4, num_cams=2, seed=8)
    g = torch.Generator().manual_seed(9)
    qf = torch.randn(Q, 2 * D, generator=g).to(dtype)[:, ::2]  # strided views
    gf = torch.randn(D, G, generator=g).to(dtype).T
    for metric in ("cosine", "euclidean"):
        distmat = distance_reference(qf, gf, metric)
        got = fgreid_ops.evaluate_features(qf.to(device), gf.to(device), *(t.to(device) for t in ids), max_rank=10,
                                           metric=metric, memory_budget=4000, return_per_query=True, backend=backend)
        assert_matches_numpy(got, distmat, ids, 10)


def test_features_progress_bar(capsys):
    pytest.importorskip("tqdm")
    _, ids = make_problem(4, 30, num_pids=3, num_cams=2, seed=10)
    qf, gf = integer_features(4, 5, 3), integer_features(30, 5, 4)
    r = fgreid_ops.evaluate_features(qf, gf, *ids, max_rank=5, memory_budget=600, progress=True)
    assert_matches_numpy(r, distance_reference(qf, gf), ids, 5)


# --- video protocols -----------------------------------------------------------------------------

def test_tracklet_features_and_mars():
    g = torch.Generator().manual_seed(11)
    q_frames, g_frames = torch.randn(25, 6, generator=g), torch.randn(60, 6, generator=g)
    q_tid = torch.cat([torch.arange(5), torch.randint(0, 5, (20,), generator=g)])
    g_tid = torch.cat([torch.arange(12), torch.randint(0, 12, (48,), generator=g)])
    q_means = torch.stack([q_frames[q_tid == t].mean(0) for t in range(5)])
    g_means = torch.stack([g_frames[g_tid == t].mean(0) for t in range(12)])
    torch.testing.assert_close(fgreid_ops.tracklet_features(q_frames, q_tid), q_means)
    _, ids = make_problem(5, 12, num_pids=3, num_cams=2, seed=12)
    r = fgreid_ops.evaluate_mars(q_frames, q_tid, g_frames, g_tid, *ids, max_rank=5, return_per_query=True)
    assert_matches_numpy(r, distance_reference(q_means, g_means), ids, 5)
    with pytest.raises(ValueError, match="expected every tracklet in \\[0, 7\\) to occur in tracklet_ids"):
        fgreid_ops.tracklet_features(q_frames, q_tid, num_tracklets=7)
    with pytest.raises(ValueError, match="expected tracklet_ids in"):
        fgreid_ops.tracklet_features(q_frames, q_tid - 1)


def fgpr_problem():
    # three groups (cameras 1-2, 2-3, 4-5), one tracklet per identity and camera
    g = torch.Generator().manual_seed(13)
    pids, cams, groups = [], [], []
    for group, (c1, c2), n in [(0, (1, 2), 6), (1, (2, 3), 4), (2, (4, 5), 5)]:
        for p in range(n):
            for c in (c1, c2):
                pids.append(100 * group + p)
                cams.append(c)
                groups.append(group)
    pids, cams, groups = torch.tensor(pids), torch.tensor(cams), torch.tensor(groups)
    feats = torch.randn(len(pids), 8, generator=g) + 0.8 * torch.randn(300, 8, generator=g)[pids % 300]
    return feats, pids, cams, groups


def test_fgpr_protocol():
    feats, pids, cams, groups = fgpr_problem()
    result = fgreid_ops.evaluate_fgpr(feats, pids, cams, groups)
    first_cam = {0: 1, 1: 2, 2: 4}
    side = torch.tensor([int(c != first_cam[int(gr)]) for c, gr in zip(cams, groups)])

    def expected(members):
        scores = []
        for gallery_side in (0, 1):
            g, q = members & (side == gallery_side), members & (side != gallery_side)
            d = distance_reference(feats[q], feats[g])
            cmc, mean_ap, *_ = numpy_eval(d, pids[q], pids[g], cams[q], cams[g], max_rank=5)
            scores.append((cmc[0], cmc[4], mean_ap))
        return {k: (scores[0][i] + scores[1][i]) / 2 for i, k in enumerate(["rank1", "rank5", "mAP"])}

    everyone = torch.ones(len(pids), dtype=torch.bool)
    for key, value in expected(everyone).items():
        assert result.all_group[key] == pytest.approx(value, abs=1e-12)
    assert set(result.single_group) == {0, 1, 2}
    for group in range(3):
        for key, value in expected(groups == group).items():
            assert result.single_group[group][key] == pytest.approx(value, abs=1e-12)
    assert len(result.cases) == 8 and int(result.cases[("all", 0)].num_skipped) == 0

    with pytest.raises(ValueError, match="expected camids to hold exactly two cameras in each of the groups"):
        fgreid_ops.evaluate_fgpr(feats, pids, torch.where(pids == 0, 9, cams), groups)


# --- the generic battery (tests/op_battery.py) ---------------------------------------------------

def _good():
    distmat, ids = make_problem(3, 5, num_pids=2, num_cams=2)
    return [distmat, *ids, None, 50]  # + junk_pid, max_rank


def _with(i, value):
    args = _good()
    args[i] = value
    return tuple(args)


# (pattern after "fgreid_ops.evaluate: expected ", make() -> TestEvaluate's arguments, error);
# the kernel ops check the first N_KERNEL_CHECKED too
BAD_INPUTS = [
    ("distmat to be 2-D", lambda: _with(0, torch.rand(3)), ValueError),
    ("distmat to be float32", lambda: _with(0, torch.ones(3, 5, dtype=torch.int64)), TypeError),
    ("distmat to have at least one query", lambda: _with(0, torch.rand(0, 5)), ValueError),
    ("distmat to have at least one gallery item", lambda: _with(0, torch.rand(3, 0)), ValueError),
    (r"q_pids of shape \[Q\]=\[3\]", lambda: _with(1, torch.zeros(4, dtype=torch.int64)), ValueError),
    (r"g_pids of shape \[G\]=\[5\]", lambda: _with(2, torch.zeros(5, 1, dtype=torch.int64)), ValueError),
    (r"q_camids of shape \[Q\]=\[3\]", lambda: _with(3, torch.zeros(2, dtype=torch.int64)), ValueError),
    (r"g_camids of shape \[G\]=\[5\]", lambda: _with(4, torch.zeros(6, dtype=torch.int64)), ValueError),
    ("q_pids to be an (integer|int64) tensor", lambda: _with(1, torch.zeros(3)), TypeError),
    ("g_camids to be an (integer|int64) tensor", lambda: _with(4, torch.zeros(5, dtype=torch.bool)), TypeError),
    # the public function only
    ("q_pids to be a torch.Tensor", lambda: _with(1, [1, 2, 3]), TypeError),
    ("max_rank >= 1", lambda: _with(6, 0), ValueError),
    ("max_rank to be an int", lambda: _with(6, 2.5), TypeError),
    ("junk_pid to be an int or None", lambda: _with(5, 1.5), TypeError),
]
N_KERNEL_CHECKED = 10
# the public function converts integer ids to int64; the kernel ops want int64
KERNEL_BAD_INPUTS = [(m, (lambda make=make: make()[:6]), e) for m, make, e in BAD_INPUTS[:N_KERNEL_CHECKED]] + [
    ("q_pids to be an int64 tensor", lambda: _with(1, torch.zeros(3, dtype=torch.int32))[:6], TypeError),
]

# levels: distances are small integers (many ties), or distinct; junk_pid
PROBLEMS = {"distinct": (None, None), "ties": (5, None), "junk": (2, 0)}


def every_query_matched(ids, junk_pid):
    """ids in which every query has a match (a skipped query's NaN AP compares unequal in
    opcheck), and with a junk pid, one that only the gallery holds."""
    q_pids, g_pids, q_camids, g_camids = (t.clone() for t in ids)
    Q = q_pids.shape[0]
    g_pids[:Q], g_camids[:Q] = q_pids, q_camids + 1
    if junk_pid is not None:
        junk_pid = int(torch.cat([q_pids, g_pids]).max()) + 1
        g_pids[Q::5] = junk_pid
    return (q_pids, g_pids, q_camids, g_camids), junk_pid


class TestEvaluate(OpTester):
    """evaluate(distmat, ids, max_rank, junk_pid) against the numpy transcription, on the kernels
    and on the library's reference. The kernel op fgreid::evaluate gives the per-query
    (first_hit, ap, inp) that the public function summarizes; the streamed evaluation's
    kernel ops (matches, count, finalize) are opchecked beside it. No gradients."""

    op_def = EVALUATE
    backends = BACKENDS + [pytest.param("reference", "cpu", id="reference")]
    layouts = DIST_LAYOUTS
    opcheck_layouts = ("contiguous", "transposed")
    cases = tuple(PROBLEMS)
    shape = (9, 70, 6, 3, 10)  # Q, G, number of pids, number of cameras, max_rank
    shapes = [(5, 30, 3, 2, 5), (7, 44, 3, 2, 5)]
    grad_inputs = ()
    bad_inputs = BAD_INPUTS
    kernel_bad_inputs = KERNEL_BAD_INPUTS
    bad_messages_are_patterns = True
    hypothesis_exact_integers = True  # rankings are exact in every dtype: num_skipped too

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        Q, G, num_pids, num_cams, max_rank = shape
        levels, junk_pid = PROBLEMS[case]
        distmat, ids = make_problem(Q, G, num_pids, num_cams, seed=seed, levels=levels, dtype=dtype, device=device)
        if purpose == "opcheck":
            ids, junk_pid = every_query_matched(ids, junk_pid)
        return (distmat, *ids, junk_pid, max_rank)

    def kernel_args(self, args):
        return args[:6]  # max_rank only shapes the public function's summary

    def call(self, backend, distmat, q_pids, g_pids, q_camids, g_camids, junk_pid, max_rank):
        return fgreid_ops.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, return_per_query=True,
                                   junk_pid=junk_pid, backend=backend)

    def reference(self, distmat, q_pids, g_pids, q_camids, g_camids, junk_pid, max_rank):
        ids = (t.cpu() for t in (q_pids, g_pids, q_camids, g_camids))
        cmc, mean_ap, mean_inp, skipped, ap = numpy_eval(distmat.cpu(), *ids, max_rank, junk_pid)
        scalar = dict(dtype=torch.float64)
        return (torch.from_numpy(cmc), torch.tensor(mean_ap, **scalar), torch.tensor(mean_inp, **scalar),
                torch.tensor(skipped), torch.from_numpy(ap))

    def layout_inputs(self, args, layout):
        return (to_dist_layout(args[0], layout), *args[1:])

    def output_dtype(self, position, dtype):
        return torch.float64

    def assert_close(self, actual, expected, dtype, grad=False):
        # every row is ranked exactly in its dtype: only the float64 means round
        torch.testing.assert_close(actual, expected.to(actual.device), rtol=1e-12, atol=1e-12, equal_nan=True)

    def kernel_opchecks(self, backend, args, device):
        distmat, *ids, junk_pid, _ = args
        matches, count, finalize = (getattr(torch.ops.fgreid, op.kernel_name(backend)) for op in (MATCHES, COUNT, FINALIZE))
        offsets, index = matches(*ids, junk_pid)
        query = torch.repeat_interleave(torch.arange(distmat.shape[0], device=device), offsets.diff())
        match_dist = distmat[query, index]
        counts = torch.zeros_like(index)
        lo, hi = 10, 30  # a gallery chunk
        chunk = (distmat[:, lo:hi], ids[0], ids[1][lo:hi], lo, offsets, index, match_dist, junk_pid, counts)
        return [(matches, (*ids, junk_pid)), (count, chunk), (finalize, (offsets, index, match_dist, counts))]

    def shape_strategy(self):
        return st.tuples(st.integers(1, 12), st.integers(1, 40), st.integers(1, 6), st.integers(1, 3), st.integers(1, 50))


def test_device_mismatch_and_backend():
    distmat, *ids = _good()[:5]
    with pytest.raises(ValueError, match="expected g_pids on the same device as distmat"):
        fgreid_ops.evaluate(distmat, ids[0], ids[1].to("meta"), ids[2], ids[3])
    with pytest.raises(ValueError, match="backend"):
        fgreid_ops.evaluate(distmat, *ids, backend="fortran")


FEATURE_BAD_INPUTS = [
    ("q_feats to be 2-D", lambda a: a.__setitem__(0, torch.rand(3)), {}, ValueError),
    ("g_feats to be float32", lambda a: a.__setitem__(1, torch.ones(5, 4, dtype=torch.int32)), {}, TypeError),
    ("q_feats and g_feats with the same D", lambda a: a.__setitem__(1, torch.rand(5, 3)), {}, ValueError),
    ("at least one query and one gallery item", lambda a: a.__setitem__(1, torch.rand(0, 4)), {}, ValueError),
    ("g_pids of shape [G]=[5]", lambda a: a.__setitem__(3, torch.zeros(4, dtype=torch.int64)), {}, ValueError),
    ("metric to be one of", lambda a: None, {"metric": "manhattan"}, ValueError),
    ("memory_budget to be a positive int", lambda a: None, {"memory_budget": 0}, ValueError),
    ("max_rank >= 1", lambda a: None, {"max_rank": -3}, ValueError),
]


@pytest.mark.parametrize("message,edit,kwargs,error", FEATURE_BAD_INPUTS, ids=[m for m, *_ in FEATURE_BAD_INPUTS])
def test_features_bad_input(message, edit, kwargs, error):
    _, ids = make_problem(3, 5, num_pids=2, num_cams=2)
    args = [torch.rand(3, 4), torch.rand(5, 4), *ids]
    edit(args)
    with pytest.raises(error, match="fgreid_ops.evaluate_features: expected " + message.replace("[", r"\[").replace("]", r"\]")):
        fgreid_ops.evaluate_features(*args, **kwargs)


def test_count_and_finalize_reject_bad_match_lists():
    distmat, *ids = _good()[:5]
    offsets, index = torch.ops.fgreid.evaluate_matches(*ids, None)
    match_dist = torch.zeros(index.shape[0])
    counts = torch.zeros_like(index)
    bad = offsets.clone()
    bad[-1] = index.shape[0] + 5
    count_args = lambda o, md=match_dist, c=counts: (distmat, ids[0], ids[1], 0, o, index, md, None, c)
    ops = [torch.ops.fgreid.evaluate_count]
    if fgreid_ops._backend.triton_available("cpu"):
        ops.append(torch.ops.fgreid.evaluate_count_triton)
    for op in ops:
        with pytest.raises((ValueError, RuntimeError), match="expected match_offsets"):
            op(*count_args(bad))
        with pytest.raises((TypeError, RuntimeError), match="expected match_dist to have the same dtype as dist"):
            op(*count_args(offsets, match_dist.double()))
        with pytest.raises((ValueError, RuntimeError), match="expected match_offsets of shape"):
            op(*count_args(offsets[:-1]))
    with pytest.raises((ValueError, RuntimeError), match="expected match_offsets to be non-decreasing"):
        torch.ops.fgreid.evaluate_finalize(torch.tensor([0, 2, 1, 2]), index[:2], match_dist[:2], counts[:2])
    with pytest.raises((ValueError, RuntimeError), match="expected counts of shape"):
        torch.ops.fgreid.evaluate_finalize(offsets, index, match_dist, counts[:1])
