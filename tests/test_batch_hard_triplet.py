import socket

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import fgreid_ops
from fgreid_ops.nn import TripletLoss
from fgreid_ops.ops.batch_hard_triplet import MINE
from fgreid_ops.reference import batch_hard_triplet_reference

from grad_layouts import GRAD_LAYOUTS, grad_like
from helpers import GRAD_TOLERANCES, HAS_CUDA, TOLERANCES, assert_close, kernel_backends
from op_battery import OpTester

BACKENDS = [p for p in kernel_backends() if p.values[0] in MINE.backends]  # no CUDA C++ kernel
DISTANCES = ["euclidean", "sqeuclidean", "cosine"]
LAYOUTS = ["contiguous", "strided", "transposed"]


def to_layout_2d(x, layout):
    """The same [B, D] values as a contiguous tensor, a column-strided view or a transposed one."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "strided":
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype, device=x.device)
        wide[:, ::2] = x
        return wide[:, ::2]
    if layout == "transposed":
        return x.T.contiguous().T
    raise ValueError(layout)


def make_batch(B, D, dtype, device, n_ids=None, seed=0, scale=1.0):
    """Gaussian embeddings (rounded to dtype) and labels with unequal identity counts."""
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(B, D, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    n_ids = n_ids or max(1, B // 3)
    labels = torch.randint(0, n_ids, (B,), generator=g).to(device)
    return emb, labels


def grid_batch(B, D, dtype, device, n_ids, seed=0, unit=False):
    """Embeddings whose distances are exact in float32 and float64 whatever the summation order,
    so that kernels and the reference pick the same pairs (exact ties to the lower index
    included): multiples of 1/4 in [-3, 3], or with unit=True unit rows of four entries ±1/2
    (one ±1 when D < 4), on which normalize and the cosine are exact too."""
    g = torch.Generator().manual_seed(seed)
    if unit:
        k = 4 if D >= 4 else 1
        positions = torch.rand(B, D, generator=g).argsort(1)[:, :k]
        signs = (torch.randint(0, 2, (B, k), generator=g) * 2 - 1) / (2.0 if k == 4 else 1.0)
        emb = torch.zeros(B, D, dtype=torch.float64).scatter_(1, positions, signs.double())
    else:
        emb = torch.randint(-12, 13, (B, D), generator=g).double() / 4
    labels = torch.randint(0, n_ids, (B,), generator=g)
    return emb.to(dtype).to(device), labels.to(device)


def expected(emb, labels, margin=0.3, **kwargs):
    """The reference in float64 on the (already rounded) inputs."""
    ref = kwargs.pop("ref_emb", None)
    if ref is not None:
        kwargs["ref_emb"] = ref.double()
    return batch_hard_triplet_reference(emb.double(), labels, margin, **kwargs)


# --- reference: known values -------------------------------------------------------------------

def test_reference_known_values():
    # 1-D points 0, 1 (id 0) and 3, 7 (id 1): anchor 3 has d_ap = 4 (to 7), d_an = 2 (to 1).
    emb = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss, idx_p, idx_n = batch_hard_triplet_reference(emb, labels, 0.3, reduction="none", return_indices=True)
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.0, 2.3, 0.0]))
    assert idx_p.tolist() == [1, 0, 3, 2] and idx_n.tolist() == [2, 2, 1, 1]
    torch.testing.assert_close(batch_hard_triplet_reference(emb, labels), torch.tensor(2.3 / 4))
    torch.testing.assert_close(batch_hard_triplet_reference(emb, labels, reduction="sum"), torch.tensor(2.3))
    # sqeuclidean: anchor 3 has 16 − 4; soft margin: softplus(d_ap − d_an)
    sq = batch_hard_triplet_reference(emb, labels, 1.0, distance="sqeuclidean", reduction="none")
    torch.testing.assert_close(sq, torch.tensor([0.0, 0.0, 13.0, 0.0]))
    soft = batch_hard_triplet_reference(emb, labels, None, reduction="none")
    torch.testing.assert_close(soft, F.softplus(torch.tensor([1 - 3, 1 - 2, 4 - 2, 4 - 6.0])))
    # cosine on 2-D directions: anchor (1, 0), positive (0, 1) at 1, negative (1, 1) at 1 − 1/√2
    emb2 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    cos = batch_hard_triplet_reference(emb2, torch.tensor([0, 0, 1]), 0.0, distance="cosine", reduction="none")
    torch.testing.assert_close(cos[0], F.softplus(torch.tensor(1.0 - (1 - 2**-0.5))))


def test_reference_matches_fast_reid_formula():
    emb, _ = make_batch(16, 8, torch.float64, "cpu")
    labels = torch.arange(16) // 4
    torch.testing.assert_close(batch_hard_triplet_reference(emb, labels, 0.3), fast_reid_triplet_loss(emb, labels, 0.3, False, True))


# --- kernels vs reference: what is special about batch_hard_triplet ----------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.3, 1.0, 0.0, None])
@pytest.mark.parametrize("normalize", [False, True])
def test_margin_reduction_normalize(backend, device, reduction, margin, normalize):
    emb, labels = make_batch(10, 6, torch.float32, device, n_ids=3)
    out = fgreid_ops.batch_hard_triplet(emb, labels, margin, normalize=normalize, reduction=reduction, backend=backend)
    assert_close(out, expected(emb, labels, margin, normalize=normalize, reduction=reduction), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_only_through_selected_pairs(backend, device):
    emb, labels = make_batch(8, 4, torch.float32, device, n_ids=2)
    ref, ref_labels = make_batch(30, 4, torch.float32, device, n_ids=3, seed=4)
    ref.requires_grad_()
    _, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, labels, 10.0, ref_emb=ref, ref_labels=ref_labels,
                                                   return_indices=True, backend=backend)
    loss = fgreid_ops.batch_hard_triplet(emb, labels, 10.0, ref_emb=ref, ref_labels=ref_labels, backend=backend)
    loss.backward()
    selected = torch.zeros(30, dtype=torch.bool, device=device)
    selected[idx_p] = True
    selected[idx_n] = True
    assert torch.all(ref.grad[~selected] == 0) and torch.all(ref.grad[selected].abs().sum(1) > 0)
    # a reference set without grad: only emb is differentiated
    x = emb.clone().requires_grad_()
    fgreid_ops.batch_hard_triplet(x, labels, 10.0, ref_emb=ref.detach(), ref_labels=ref_labels, backend=backend).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ties_go_to_lower_index(backend, device):
    # integer coordinates: every distance is exact, with many exact ties
    emb = torch.tensor([[0.0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [1, 0], [0, 0], [2, 2]], device=device)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], device=device)
    for distance in DISTANCES[:2]:
        _, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, labels, distance=distance, return_indices=True, backend=backend)
        _, idx_p_r, idx_n_r = expected(emb, labels, distance=distance, return_indices=True)
        assert idx_p.tolist() == idx_p_r.tolist() and idx_n.tolist() == idx_n_r.tolist()
    # anchor 0 = (0, 0): negatives 1, 2, 4 all at distance 1 -> 1; positives 3, 5 at 1 (and 6 at 0) -> 3
    assert idx_n[0] == 1 and idx_p[0] == 3
    # duplicate rows: everything at distance 0, ties everywhere
    same = torch.ones(6, 3, device=device)
    lab = torch.tensor([2, 0, 2, 0, 1, 1], device=device)
    _, idx_p, idx_n = fgreid_ops.batch_hard_triplet(same, lab, return_indices=True, backend=backend)
    assert idx_p.tolist() == [0, 1, 0, 1, 4, 4] and idx_n.tolist() == [1, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ties_across_tiles_and_splits(backend, device):
    # 1100 identical references: the first candidate must win over those of later tiles
    ref = torch.ones(1100, 4, device=device)
    ref_labels = torch.arange(1100, device=device) % 3
    emb = torch.zeros(3, 4, device=device)
    labels = torch.tensor([0, 1, 2], device=device)
    _, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, labels, ref_emb=ref, ref_labels=ref_labels, return_indices=True, backend=backend)
    assert idx_p.tolist() == [0, 1, 2] and idx_n.tolist() == [1, 0, 0]
    if backend == "triton":
        from fgreid_ops.triton.batch_hard_triplet import mine

        for splits in (2, 3, 5):
            p, n = mine(emb, labels, ref, ref_labels, "euclidean", splits=splits)
            assert p.tolist() == [0, 1, 2] and n.tolist() == [1, 0, 0]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_reference_splits_and_tiles_match(backend, device):
    # M larger than the CPU tile (512) and than one Triton block; split merges on Triton
    emb, labels = make_batch(20, 8, torch.float32, device, n_ids=5)
    ref, ref_labels = make_batch(1100, 8, torch.float32, device, n_ids=40, seed=5)
    _, idx_p_r, idx_n_r = expected(emb, labels, ref_emb=ref, ref_labels=ref_labels, return_indices=True)
    _, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, labels, ref_emb=ref, ref_labels=ref_labels, return_indices=True, backend=backend)
    assert torch.equal(idx_p, idx_p_r) and torch.equal(idx_n, idx_n_r)
    if backend == "triton":
        from fgreid_ops.triton.batch_hard_triplet import mine

        p, n = mine(emb, labels, ref, ref_labels, "euclidean", splits=4)
        assert torch.equal(p, idx_p_r) and torch.equal(n, idx_n_r)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_anchors_without_negative_or_positive(backend, device):
    # one identity only: no negatives anywhere -> loss 0, indices -1, finite gradients
    emb, _ = make_batch(5, 3, torch.float32, device)
    emb.requires_grad_()
    labels = torch.zeros(5, dtype=torch.int64, device=device)
    for margin in (0.3, None):
        loss, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, labels, margin, reduction="none", return_indices=True, backend=backend)
        assert torch.all(loss == 0) and torch.all(idx_n == -1) and torch.all(idx_p >= 0)
        (g,) = torch.autograd.grad(loss.sum(), emb)
        assert torch.all(g == 0)
    # a reference set without the anchor's identity: no positive -> 0 and -1
    ref = torch.randn(6, 3, device=device)
    ref_labels = torch.tensor([1, 1, 2, 2, 2, 1], device=device)
    lab = torch.tensor([0, 1, 2, 3, 1], device=device)
    loss, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, lab, 10.0, ref_emb=ref, ref_labels=ref_labels,
                                                       reduction="none", return_indices=True, backend=backend)
    assert idx_p.tolist()[0] == -1 and idx_p.tolist()[3] == -1 and loss[0] == 0 and loss[3] == 0
    assert torch.all(loss[[1, 2, 4]] > 0)
    loss_r, idx_p_r, idx_n_r = expected(emb.detach(), lab, 10.0, ref_emb=ref, ref_labels=ref_labels, reduction="none", return_indices=True)
    assert_close(loss, loss_r, torch.float32)
    assert torch.equal(idx_p, idx_p_r) and torch.equal(idx_n, idx_n_r)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_all_equal_embeddings_are_finite(backend, device, dtype):
    emb = torch.full((8, 16), 3.0, dtype=dtype, device=device, requires_grad=True)
    labels = torch.arange(8, device=device) // 2
    for margin, distance, normalize in [(0.3, "euclidean", False), (None, "sqeuclidean", False),
                                        (0.3, "cosine", False), (None, "euclidean", True)]:
        loss = fgreid_ops.batch_hard_triplet(emb, labels, margin, distance=distance, normalize=normalize, backend=backend)
        (g,) = torch.autograd.grad(loss, emb)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
        expected_loss = 0.3 if margin else F.softplus(torch.tensor(0.0)).item()
        assert abs(loss.item() - expected_loss) < 1e-2
    zeros = torch.zeros(4, 5, dtype=dtype, device=device, requires_grad=True)
    loss = fgreid_ops.batch_hard_triplet(zeros, labels[:4], distance="cosine", backend=backend)
    (g,) = torch.autograd.grad(loss, zeros)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_unequal_identity_counts(backend, device):
    emb, _ = make_batch(11, 6, torch.float32, device)
    labels = torch.tensor([5, 5, 5, 5, 5, 9, 2, 2, 7, 7, 7], device=device)  # a singleton identity too
    out = fgreid_ops.batch_hard_triplet(emb, labels, reduction="none", backend=backend)
    assert_close(out, expected(emb, labels, reduction="none"), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_propagates(backend, device):
    emb, labels = make_batch(6, 4, torch.float32, device, n_ids=2)
    ref, ref_labels = make_batch(9, 4, torch.float32, device, n_ids=2, seed=6)
    ref[4, 1] = float("nan")
    out = fgreid_ops.batch_hard_triplet(emb, labels, ref_emb=ref, ref_labels=ref_labels, reduction="none", backend=backend)
    out_r = expected(emb, labels, ref_emb=ref, ref_labels=ref_labels, reduction="none")
    assert torch.isnan(out).all() and torch.isnan(out_r).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_module_compiles_fullgraph(backend, device):
    torch._dynamo.reset()
    module = TripletLoss(margin=0.3, backend=backend)
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    for B in (12, 17):
        emb, labels = make_batch(B, 8, torch.float32, device, n_ids=4, seed=B)
        emb.requires_grad_()
        out = compiled(emb, labels)
        torch.testing.assert_close(out, module(emb, labels))
        (g,) = torch.autograd.grad(out, emb)
        (g_eager,) = torch.autograd.grad(module(emb, labels), emb)
        torch.testing.assert_close(g, g_eager)


@given(
    b=st.integers(1, 40), m=st.integers(1, 90), d=st.integers(1, 70), n_ids=st.integers(1, 12),
    with_ref=st.booleans(), distance=st.sampled_from(DISTANCES), normalize=st.booleans(),
    margin=st.sampled_from([0.3, 0.0, 2.0]), layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_hypothesis_gaussian_near_ties(backend, device, b, m, d, n_ids, with_ref, distance, normalize, margin, layout, dtype, seed):
    emb, labels = make_batch(b, d, dtype, device, n_ids=n_ids, seed=seed)
    kwargs = dict(distance=distance, normalize=normalize, reduction="none")
    if with_ref:
        ref, ref_labels = make_batch(m, d, dtype, device, n_ids=n_ids, seed=seed + 1)
        kwargs.update(ref_emb=ref, ref_labels=ref_labels)
    emb = to_layout_2d(emb, layout).requires_grad_()
    loss, idx_p, idx_n = fgreid_ops.batch_hard_triplet(emb, labels, margin, return_indices=True, backend=backend, **kwargs)
    loss_r, idx_p_r, idx_n_r = expected(emb.detach(), labels, margin, return_indices=True, **kwargs)
    # the hardest distance is continuous in the data, so the loss matches even where the
    # dtype's rounding picks another of two nearly tied candidates
    assert_close(loss, loss_r, dtype)
    assert torch.equal(idx_p >= 0, idx_p_r >= 0) and torch.equal(idx_n >= 0, idx_n_r >= 0)
    if dtype in (torch.float32, torch.float64):
        (g,) = torch.autograd.grad(loss.sum(), emb)
        x = emb.detach().double().requires_grad_()
        (g_r,) = torch.autograd.grad(expected(x, labels, margin, **kwargs).sum(), x)
        if torch.equal(idx_p, idx_p_r) and torch.equal(idx_n, idx_n_r):
            assert_close(g, g_r, dtype, grad=True)
        else:  # float32 rounding of a near-tie in the search
            assert dtype == torch.float32


# --- the generic battery (tests/op_battery.py) ---------------------------------------------------

def _ok(B=4, D=3, M=5):
    return dict(emb=torch.rand(B, D), labels=torch.arange(B) % 2, ref_emb=torch.rand(M, D), ref_labels=torch.arange(M) % 2)


def _bad(distance="euclidean", margin=0.3, normalize=False, **changes):
    """TestBatchHardTriplet's arguments: _ok() with `changes`."""
    inputs = {**_ok(), **changes}
    return (inputs["emb"], inputs["labels"], inputs["ref_emb"], inputs["ref_labels"], distance, margin, normalize)


# (message after "fgreid_ops.batch_hard_triplet: expected ", make() -> arguments, error); the
# mining op (C++, Triton and its fake) checks the first N_KERNEL_CHECKED too
BAD_INPUTS = [
    ("emb to be 2-D", lambda: _bad(emb=torch.rand(4, 3, 1)), ValueError),
    ("emb to be float32", lambda: _bad(emb=torch.ones(4, 3, dtype=torch.int64)), TypeError),
    ("emb to have a non-empty batch", lambda: _bad(emb=torch.rand(0, 3), labels=torch.zeros(0, dtype=torch.int64)), ValueError),
    ("emb to be non-empty", lambda: _bad(emb=torch.rand(4, 0), ref_emb=torch.rand(5, 0)), ValueError),
    ("labels to be 1-D", lambda: _bad(labels=torch.zeros(4, 1, dtype=torch.int64)), ValueError),
    ("labels to be int64", lambda: _bad(labels=torch.zeros(4, dtype=torch.int32)), TypeError),
    ("labels of shape [4]", lambda: _bad(labels=torch.zeros(3, dtype=torch.int64)), ValueError),
    ("ref_emb to be 2-D", lambda: _bad(ref_emb=torch.rand(5)), ValueError),
    ("ref_emb to have the same dtype as emb", lambda: _bad(ref_emb=torch.rand(5, 3, dtype=torch.float64)), TypeError),
    ("ref_emb to have a non-empty batch", lambda: _bad(ref_emb=torch.rand(0, 3), ref_labels=torch.zeros(0, dtype=torch.int64)), ValueError),
    ("ref_emb of width D=3", lambda: _bad(ref_emb=torch.rand(5, 4)), ValueError),
    ("ref_labels to be int64", lambda: _bad(ref_labels=torch.zeros(5)), TypeError),
    ("ref_labels of shape [5]", lambda: _bad(ref_labels=torch.zeros(4, dtype=torch.int64)), ValueError),
    ("distance to be one of", lambda: _bad(distance="manhattan"), ValueError),
    # the loss arguments, and a non-tensor: the public function only
    ("margin to be a number >= 0 or None", lambda: _bad(margin=-0.1), ValueError),
    ("margin to be a number >= 0 or None", lambda: _bad(margin="0.3"), ValueError),
    ("normalize to be a bool", lambda: _bad(normalize=1), TypeError),
    ("emb to be a torch.Tensor", lambda: _bad(emb=[[1.0, 2.0]]), TypeError),
]
N_KERNEL_CHECKED = 14


def _case(distance, with_ref, normalize=False):
    """A case name: the distance, the references (the batch itself with margin 0.3, or another
    set with the soft margin), normalize."""
    return "-".join([distance, "ref-soft" if with_ref else "self", *(["normalize"] if normalize else [])])


def _parse(case):
    parts = case.split("-")
    return parts[0], "ref" in parts, "normalize" in parts, None if "soft" in parts else 0.3


# the first is the compile test's
CASES = [_case("euclidean", True, True), _case("euclidean", False, True)] + [
    _case(d, ref) for d in DISTANCES for ref in (False, True)]


class TestBatchHardTriplet(OpTester):
    """batch_hard_triplet(emb, labels, margin, ref_emb=, ref_labels=, distance=, normalize=,
    reduction="none", return_indices=True): the loss per anchor and the indices of the mining
    op fgreid::batch_hard_triplet_mine. Its arguments here: (emb, labels, ref_emb or None,
    ref_labels or None, distance, margin, normalize). Inputs on a grid (grid_batch): every
    distance is exact, so the indices are compared exactly, ties included."""

    op_def = MINE
    backends = BACKENDS
    layouts = ("contiguous", "strided")  # strided: emb strided, ref_emb transposed (emb transposed: opcheck)
    gradcheck_layouts = ("contiguous",)
    cases = CASES
    grad_cases = [c for c in CASES if c != _case("euclidean", False, True)]
    opcheck_layouts = ("transposed",)  # emb transposed, ref_emb strided
    opcheck_cases = [_case("euclidean", False), _case("cosine", True)]  # + the mining op on half inputs
    shape = (13, 37, 24, 4)  # B, M, D, number of identities
    shapes = [(9, 21, 8, 3), (12, 17, 8, 4)]
    grad_inputs = (0, 2)
    bad_inputs = BAD_INPUTS
    kernel_checked = N_KERNEL_CHECKED
    gradcheck_fast_triton_interpret = True
    compile_backend = "aot_eager"  # Dynamo + the fakes + AOT autograd; TripletLoss runs Inductor below
    hypothesis_exact_integers = True

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        distance, with_ref, normalize, margin = _parse(case)
        B, M, D, n_ids = shape
        if purpose == "gradcheck":  # Gaussian: no ties to perturb across
            emb, labels = make_batch(6, 4, dtype, device, n_ids=2, seed=seed)
            ref, ref_labels = make_batch(7, 4, dtype, device, n_ids=3, seed=seed + 1)
        else:
            unit = normalize or distance == "cosine"
            emb, labels = grid_batch(B, D, dtype, device, n_ids, seed=seed, unit=unit)
            ref, ref_labels = grid_batch(M, D, dtype, device, n_ids + 2, seed=seed + 1, unit=unit)
        if not with_ref:
            ref, ref_labels = None, None
        return emb, labels, ref, ref_labels, distance, margin, normalize

    def layout_inputs(self, args, layout):
        emb, labels, ref, *rest = args
        ref_layout = {"contiguous": "contiguous", "strided": "transposed", "transposed": "strided"}[layout]
        return (to_layout_2d(emb, layout), labels, None if ref is None else to_layout_2d(ref, ref_layout), *rest)

    def call(self, backend, emb, labels, ref_emb, ref_labels, distance, margin, normalize):
        return fgreid_ops.batch_hard_triplet(emb, labels, margin, ref_emb=ref_emb, ref_labels=ref_labels, distance=distance,
                                             normalize=normalize, reduction="none", return_indices=True, backend=backend)

    def reference(self, emb, labels, ref_emb, ref_labels, distance, margin, normalize):
        return batch_hard_triplet_reference(emb, labels, margin, ref_emb=ref_emb, ref_labels=ref_labels, distance=distance,
                                            normalize=normalize, reduction="none", return_indices=True)

    def assert_close(self, actual, expected, dtype, grad=False):
        tol = dict((GRAD_TOLERANCES if grad else TOLERANCES)[dtype])
        if grad and dtype in (torch.float16, torch.bfloat16):
            # autograd adds the anchor and the reference gradient of a row of a self-referenced
            # batch in the row's dtype, each rounded there: a few ulps of the terms, which on
            # grid inputs are of the size of the largest gradient, not of the sum
            tol["atol"] *= max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(actual, expected.to(actual.dtype), **tol)

    def kernel_args(self, args):
        emb, labels, ref_emb, ref_labels, distance, *_ = args
        return (emb, labels, emb, labels, distance) if ref_emb is None else (emb, labels, ref_emb, ref_labels, distance)

    def backward_args(self, args, device):
        emb, labels, ref, ref_labels, distance = (a.detach() if isinstance(a, torch.Tensor) else a
                                                  for a in self.kernel_args(args))
        mined = torch.ops.fgreid.batch_hard_triplet_mine(*(a.cpu() for a in (emb, labels, ref, ref_labels)), distance)
        d_ap, d_an, idx_p, idx_n = (t.to(device) for t in mined)
        grads = (torch.rand_like(d_ap), torch.rand_like(d_an))
        return [(*grads, emb, ref, idx_p, idx_n, d_ap, d_an, distance, True),
                (*grads, emb.half(), ref.half(), idx_p, idx_n, d_ap, d_an, "cosine", False)]

    def kernel_opchecks(self, backend, args, device):
        emb, labels, ref, ref_labels, distance = self.kernel_args(args)
        if distance != "cosine":
            return []
        mine = getattr(torch.ops.fgreid, MINE.kernel_name(backend))
        return [(mine, (emb.half(), labels, ref.half(), ref_labels, distance))]  # the mining op on half inputs

    def shape_strategy(self):
        return st.tuples(st.integers(1, 40), st.integers(1, 90), st.integers(1, 70), st.integers(1, 12))


@pytest.mark.parametrize("kwargs,message,error", [
    (dict(reduction="avg"), "reduction to be one of", ValueError),
    (dict(ref_emb=torch.rand(5, 3)), "ref_emb and ref_labels to be given together", ValueError),
    (dict(backend="fortran"), "backend", ValueError),
    (dict(backend="cuda"), "no CUDA C\\+\\+ kernel", ValueError),
])
def test_bad_arguments(kwargs, message, error):
    inputs = _ok()
    with pytest.raises(error, match=message):
        fgreid_ops.batch_hard_triplet(inputs["emb"], inputs["labels"], **kwargs)


def test_device_mismatch_names_argument():
    inputs = _ok()
    with pytest.raises(ValueError, match="expected labels on the same device as emb"):
        fgreid_ops.batch_hard_triplet(inputs["emb"], inputs["labels"].to("meta"))
    with pytest.raises(ValueError, match="expected ref_emb on the same device as emb"):
        fgreid_ops.batch_hard_triplet(inputs["emb"], inputs["labels"], ref_emb=inputs["ref_emb"].to("meta"),
                                      ref_labels=inputs["ref_labels"])


# --- fast-reid compatibility -------------------------------------------------------------------

def fast_reid_triplet_loss(embedding, targets, margin, norm_feat, hard_mining):
    """A transcription of fast-reid's fastreid/modeling/losses/triplet_loss.py (single process):
    euclidean_dist, hard_example_mining (equal identity counts only), weighted_example_mining,
    margin_ranking_loss / soft_margin_loss."""
    if norm_feat:
        embedding = 1.0 * embedding / (torch.norm(embedding, 2, -1, keepdim=True).expand_as(embedding) + 1e-12)
    all_embedding, all_targets = embedding, targets
    m, n = embedding.size(0), all_embedding.size(0)
    xx = torch.pow(embedding, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(all_embedding, 2).sum(1, keepdim=True).expand(n, m).t()
    dist_mat = (xx + yy - 2 * torch.matmul(embedding, all_embedding.t())).clamp(min=1e-12).sqrt()
    N, M = dist_mat.size()
    is_pos = targets.view(N, 1).expand(N, M).eq(all_targets.view(M, 1).expand(M, N).t())
    is_neg = targets.view(N, 1).expand(N, M).ne(all_targets.view(M, 1).expand(M, N).t())
    if hard_mining:
        dist_ap, _ = torch.max(dist_mat[is_pos].contiguous().view(N, -1), 1, keepdim=True)
        dist_an, _ = torch.min(dist_mat[is_neg].contiguous().view(N, -1), 1, keepdim=True)
        dist_ap, dist_an = dist_ap.squeeze(1), dist_an.squeeze(1)
    else:
        def softmax_weights(dist, mask):
            max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
            diff = dist - max_v
            Z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
            return torch.exp(diff) * mask / Z

        is_pos, is_neg = is_pos.float(), is_neg.float()
        dist_ap, dist_an = dist_mat * is_pos, dist_mat * is_neg
        weights_ap = softmax_weights(dist_ap, is_pos)
        weights_an = softmax_weights(-dist_an, is_neg)
        dist_ap = torch.sum(dist_ap * weights_ap, dim=1)
        dist_an = torch.sum(dist_an * weights_an, dim=1)
    y = dist_an.new().resize_as_(dist_an).fill_(1)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)
    loss = F.soft_margin_loss(dist_an - dist_ap, y)
    if loss == float("Inf"):
        loss = F.margin_ranking_loss(dist_an, dist_ap, y, margin=0.3)
    return loss


# every setting on the CPU kernel; the other backends once (the module is backend independent)
MODULE_CASES = [pytest.param("cpu", "cpu", m, n, h, id=f"cpu-{m}-{n}-{h}")
                for m in (0.3, 0.0) for n in (False, True) for h in (True, False)]
MODULE_CASES += [pytest.param(*p.values, 0.3, True, True, id=p.id, marks=p.marks) for p in BACKENDS[1:]]


@pytest.mark.parametrize("backend,device,margin,norm_feat,hard_mining", MODULE_CASES)
def test_triplet_loss_module_matches_fast_reid(backend, device, margin, norm_feat, hard_mining):
    g = torch.Generator().manual_seed(11)
    emb = torch.randn(16, 32, generator=g).to(device).requires_grad_()  # P×K = 4×4, as fast-reid needs
    targets = torch.arange(16, device=device).remainder(4)
    module = TripletLoss(margin=margin, norm_feat=norm_feat, hard_mining=hard_mining, backend=backend)
    out = module(emb, targets)
    want = fast_reid_triplet_loss(emb, targets, margin, norm_feat, hard_mining)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    (g_out,) = torch.autograd.grad(out, emb)
    (g_want,) = torch.autograd.grad(want, emb)
    torch.testing.assert_close(g_out, g_want, rtol=1e-4, atol=1e-6)


# --- distributed: 2 gloo processes on CPU ------------------------------------------------------

def _dist_worker(rank, world, port):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        full = torch.randn(12, 6, generator=g, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2, 0, 1, 3, 3, 0, 2, 4, 1, 1])
        # unequal batches (5 and 7 rows), reduction="sum": the rank losses and gradients add up
        split = [0, 5, 12]
        rows = slice(split[rank], split[rank + 1])
        x = full[rows].clone().requires_grad_()
        loss = fgreid_ops.distributed.batch_hard_triplet(x, labels[rows], 0.5, reduction="sum", backend="cpu")
        loss.backward()
        single_x = full.clone().requires_grad_()
        single = fgreid_ops.batch_hard_triplet(single_x, labels, 0.5, reduction="sum", backend="cpu")
        single.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, single.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, single_x.grad[rows], rtol=1e-12, atol=1e-12)
        assert single.item() > 0 and single_x.grad.abs().sum() > 0

        # equal batches, the nn.TripletLoss module (gathers under torch.distributed), "mean" and
        # normalize: DDP's average over ranks equals the single-process loss and gradient
        rows = slice(6 * rank, 6 * rank + 6)
        module = TripletLoss(margin=0.3, norm_feat=True, backend="cpu")
        x = full[rows].clone().requires_grad_()
        loss = module(x, labels[rows])
        loss.backward()
        single_x = full.clone().requires_grad_()
        single = TripletLoss(margin=0.3, norm_feat=True, gather=False, backend="cpu")(single_x, labels)
        single.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        torch.testing.assert_close(mean / world, single.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad / world, single_x.grad[rows], rtol=1e-12, atol=1e-12)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_distributed_matches_single_process():
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_distributed_helper_without_process_group():
    emb, labels = make_batch(8, 4, torch.float32, "cpu", n_ids=3)
    torch.testing.assert_close(fgreid_ops.distributed.batch_hard_triplet(emb, labels),
                               fgreid_ops.batch_hard_triplet(emb, labels))
    assert fgreid_ops.distributed.world_size() == 1


def test_module_reference_switch():
    emb, labels = make_batch(10, 4, torch.float32, "cpu", n_ids=3)
    module = TripletLoss()
    with fgreid_ops.use_reference():
        ref = module(emb, labels)
    torch.testing.assert_close(module(emb, labels), ref)
    assert "margin=0.3" in repr(module)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_default_backend_is_triton():
    emb, labels = make_batch(64, 32, torch.float16, "cuda", n_ids=16)
    out = fgreid_ops.batch_hard_triplet(emb, labels)
    assert_close(out, expected(emb, labels), torch.float16)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
def test_mine_backward_grad_layouts(backend, device, grad_layout):
    # d_ap, d_an summed or averaged directly send stride-0 gradients; the kernel reads them in
    # place and must give what the same values, contiguous, give
    mine = torch.ops.fgreid.batch_hard_triplet_mine_triton if backend == "triton" else torch.ops.fgreid.batch_hard_triplet_mine
    emb, labels = make_batch(13, 24, torch.float32, device, n_ids=4)
    emb.requires_grad_()
    d_ap, d_an, _, _ = mine(emb, labels, emb, labels, "euclidean")
    g_ap = grad_like(d_ap, grad_layout, torch.Generator().manual_seed(6))
    g_an = grad_like(d_an, grad_layout, torch.Generator().manual_seed(7))
    (ge,) = torch.autograd.grad((d_ap, d_an), emb, (g_ap, g_an))
    (ge_dense,) = torch.autograd.grad(mine(emb, labels, emb, labels, "euclidean")[:2], emb,
                                      (g_ap.contiguous(), g_an.contiguous()))
    assert torch.equal(ge, ge_dense)
