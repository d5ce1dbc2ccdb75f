import pytest
import torch
from hypothesis import given, strategies as st

import fgreid_ops
from fgreid_ops.ops.topk_mask import TOPK_MASK
from fgreid_ops.reference import topk_mask_reference

from grad_layouts import GRAD_LAYOUTS, copies_of_shape, grad_like
from helpers import DTYPES, LAYOUTS, kernel_backends, to_layout
from op_battery import OpTester

BACKENDS = kernel_backends()


def int_inputs(shape, dtype, device, seed=0, low=-2, high=3):
    """f1 of small integers: every channel sum is exact in float32 whatever the order, and many
    positions tie, so kernels and the reference must agree bit for bit."""
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randint(low, high, shape, generator=g).to(dtype).to(device)
    f2 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    return f1, f2


def float_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    f2 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    return f1, f2


def assert_exact(out, mask, f1, f2, k):
    ref_out, ref_mask = topk_mask_reference(f1, f2, k)
    assert mask.shape == ref_mask.shape and mask.dtype == f2.dtype
    assert torch.equal(mask, ref_mask), (mask.flatten(1) == 0).nonzero().tolist()
    assert out.dtype == f2.dtype and torch.equal(out, ref_out)


def assert_valid_selection(out, mask, f1, f2, k):
    """For float inputs, A's rounding depends on the summation order, so two sums closer than
    that rounding may be ordered either way. Checks that the zeroed positions are a top-k set of
    the float64 sums up to that rounding, and equal to the reference's where no near-tie exists."""
    N, C, H, W = f1.shape
    HW = H * W
    assert mask.shape == (N, 1, H, W) and mask.dtype == f2.dtype
    zeroed = mask.reshape(N, HW) == 0
    assert torch.all((mask == 0) | (mask == 1))
    assert torch.all(zeroed.sum(1) == min(k, HW))
    f1d = f1.detach().double()
    a = f1d.sum(1).reshape(N, HW)
    tol = 1e-5 * f1d.abs().sum(1).amax().item() + 1e-12
    _, ref_mask = topk_mask_reference(f1, f2, k)
    for n in range(N):
        if 0 < k < HW:
            assert a[n][zeroed[n]].min() >= a[n][~zeroed[n]].max() - tol
            top = a[n].sort(descending=True).values
            if top[k - 1] - top[k] > tol:
                assert torch.equal(mask[n], ref_mask[n])
        else:
            assert torch.equal(mask[n], ref_mask[n])
    assert torch.equal(out, f2 * mask)


# --- reference: known values -------------------------------------------------------------------

def test_reference_known_values():
    # A = [[1, 5], [3, 5]]: the tie between flat indices 1 and 3 goes to 1.
    f1 = torch.tensor([[1.0, 5.0], [3.0, 5.0]]).reshape(1, 1, 2, 2).repeat(1, 2, 1, 1) / 2
    f2 = torch.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    expected = {0: [1, 1, 1, 1], 1: [1, 0, 1, 1], 2: [1, 0, 1, 0], 3: [1, 0, 0, 0], 4: [0, 0, 0, 0], 9: [0, 0, 0, 0]}
    for k, m in expected.items():
        out, mask = topk_mask_reference(f1, f2, k)
        m = torch.tensor(m, dtype=torch.float32).reshape(1, 1, 2, 2)
        torch.testing.assert_close(mask, m, rtol=0, atol=0)
        torch.testing.assert_close(out, f2 * m, rtol=0, atol=0)


def test_reference_nan_counts_as_largest():
    f1 = torch.tensor([3.0, float("nan"), 7.0, float("inf"), float("nan"), -1.0]).reshape(1, 1, 2, 3)
    f2 = torch.ones(1, 2, 2, 3)
    for k, zeroed in [(1, [1]), (2, [1, 4]), (3, [1, 3, 4]), (4, [1, 2, 3, 4])]:
        _, mask = topk_mask_reference(f1, f2, k)
        assert (mask.flatten() == 0).nonzero().flatten().tolist() == zeroed


def test_reference_matches_sum_topk_scatter_mul():
    # The eager recipe of the issue, on values without ties.
    f1, f2 = float_inputs((3, 6, 5, 4), torch.float64, "cpu")
    k = 7
    a = f1.sum(1).flatten(1)
    mask = torch.ones_like(a).scatter_(1, a.topk(k, dim=1).indices, 0).reshape(3, 1, 5, 4)
    out, ref_mask = topk_mask_reference(f1, f2, k)
    assert torch.equal(ref_mask, mask) and torch.equal(out, f2 * mask)


# --- kernels vs reference ----------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_all_equal_attention_zeroes_first_positions(backend, device):
    f1 = torch.ones(2, 4, 3, 5, device=device)
    f2 = torch.rand(2, 4, 3, 5, device=device) + 1
    out, mask = fgreid_ops.topk_mask(f1, f2, 6, backend=backend)
    expected = torch.tensor([0.0] * 6 + [1.0] * 9, device=device).reshape(1, 1, 3, 5).expand(2, 1, 3, 5)
    assert torch.equal(mask, expected) and torch.equal(out, f2 * expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_many_channels_exact(backend, device):
    # C > 128: the kernels sum fixed chunks of channels, then add the chunks in order.
    f1, f2 = int_inputs((2, 300, 4, 5), torch.float32, device, seed=3)
    for k in [1, 7]:
        out, mask = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
        assert_exact(out, mask, f1, f2, k)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_large_map_exact(backend, device):
    # H*W = 340 > 256: several tiles of the CUDA selection and of the Triton rank blocks
    f1, f2 = int_inputs((2, 3, 20, 17), torch.float32, device, seed=6)
    for k in [1, 100, 339]:
        out, mask = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
        assert_exact(out, mask, f1, f2, k)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 37, 6, 5), (2, 16, 4, 8)], ids=["odd", "vec"])
def test_forward_random_values(backend, device, dtype, layout, shape):
    # "vec": H*W and C multiples of 16 bytes of every dtype, the vectorized CUDA multiply
    f1, f2 = float_inputs(shape, dtype, device, seed=1)
    f1, f2 = to_layout(f1, layout), to_layout(f2, layout)
    for k in [1, 5, 29]:
        out, mask = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
        assert_valid_selection(out, mask, f1, f2, k)


def test_cpu_result_independent_of_thread_count():
    f1, f2 = float_inputs((4, 700, 6, 4), torch.float32, "cpu", seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fgreid_ops.topk_mask(f1, f2, 5, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = fgreid_ops.topk_mask(f1, f2, 5, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("channels_last", "channels_last"),
                                     ("channels_last", "contiguous"), ("contiguous", "channels_last")])
def test_cpu_per_sample_and_channel_parallel_forwards_agree(dtype, layouts):
    # N >= 4 samples per thread: one sample per task (f2 read while in cache); fewer: the passes
    # parallel over channels. Both must give the reference's mask and products exactly.
    f1, f2 = int_inputs((8, 300, 5, 4), dtype, "cpu", seed=11)
    f1, f2 = to_layout(f1, layouts[0]), to_layout(f2, layouts[1])
    threads = torch.get_num_threads()
    try:
        for k in [0, 3, 20]:
            results = []
            for n_threads in (1, 3):  # 8 samples: per sample at 1 thread, channel-parallel at 3
                torch.set_num_threads(n_threads)
                for a, b in [(f1, f2), (f2, f2)]:
                    out, mask = fgreid_ops.topk_mask(a, b, k, backend="cpu")
                    assert_exact(out, mask, a, b, k)
                    assert out.stride() == b.stride()
                    results.append((out, mask))
            assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(results[:2], results[2:]))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_layout_and_dtype(backend, device, layout):
    f1, f2 = float_inputs((2, 3, 4, 5), torch.float16, device)
    out, mask = fgreid_ops.topk_mask(f1, to_layout(f2, layout), 2, backend=backend)
    assert mask.shape == (2, 1, 4, 5) and mask.dtype == torch.float16 and mask.is_contiguous()
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    else:
        assert out.is_contiguous()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_inf(backend, device, layout):
    f1, f2 = int_inputs((2, 3, 3, 4), torch.float32, device, seed=4)
    f1[0, 1, 2, 1] = float("nan")  # A is NaN there: counts as the largest
    f1[1, 0, 0, 3] = float("inf")
    f2[0, 2, 2, 1] = float("inf")  # at a zeroed position: inf * 0 = NaN, as in f2 * mask
    f2[1, 1, 1, 1] = float("nan")
    f1, f2 = to_layout(f1, layout), to_layout(f2, layout)
    for k in [1, 3, 12]:
        out, mask = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
        ref_out, ref_mask = topk_mask_reference(f1, f2, k)
        assert torch.equal(mask, ref_mask)
        assert mask[0, 0, 2, 1] == 0 and mask[1, 0, 0, 3] == 0
        torch.testing.assert_close(out, ref_out, rtol=0, atol=0, equal_nan=True)
        assert torch.isnan(out[0, 2, 2, 1])


# --- gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_op_with_any_mask(backend, device, dtype, layout):
    # Direct callers may pass any mask, not only the forward's 0/1 one (-0.0 included).
    backward = torch.ops.fgreid.topk_mask_triton_backward if backend == "triton" else torch.ops.fgreid.topk_mask_backward
    grad = to_layout(torch.randn(2, 3, 4, 5, dtype=torch.float64).to(dtype).to(device), layout)
    for mask in [torch.rand(2, 1, 4, 5), torch.tensor([0.0, -0.0, 1.0, 1.0, 0.0]).repeat(2, 1, 4, 1)]:
        mask = mask.to(dtype).to(device)
        expected = (grad.double() * mask.double()).to(dtype)
        # the Triton interpreter truncates float32 -> bfloat16 instead of rounding: 1 ulp
        ulp = 2**-7 if dtype == torch.bfloat16 and backend == "triton" and device == "cpu" else 0
        torch.testing.assert_close(backward(grad, mask), expected, rtol=ulp, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_f1_receives_no_gradient(backend, device):
    f1, f2 = float_inputs((2, 3, 4, 4), torch.float32, device)
    f1.requires_grad_()
    f2.requires_grad_()
    out, mask = fgreid_ops.topk_mask(f1, f2, 3, backend=backend)
    (out.sum() + mask.sum()).backward()
    assert f1.grad is None
    assert torch.equal(f2.grad, mask.expand_as(f2))
    # f1 alone requiring grad: the output is in the graph, f1.grad still stays None
    f1.grad = None
    out, _ = fgreid_ops.topk_mask(f1, f2.detach(), 3, backend=backend)
    out.sum().backward()
    assert f1.grad is None


# --- bad input ---------------------------------------------------------------------------------

def _t(*shape, dtype=torch.float32):
    return torch.rand(*shape).to(dtype)


BAD_INPUTS = [
    ("f1 to be 4-D", lambda: (_t(2, 3, 4), _t(2, 3, 4), 1), ValueError),
    ("f1 to be float32", lambda: (torch.ones(2, 3, 4, 4, dtype=torch.int64),) * 2 + (1,), TypeError),
    ("f2 to have the same dtype as f1", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 4, dtype=torch.float16), 1), TypeError),
    ("f2 of the same shape as f1", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 5), 1), ValueError),
    ("f2 of the same shape as f1", lambda: (_t(2, 3, 4, 4), _t(2, 3, 16), 1), ValueError),
    ("f1 to have a non-empty batch", lambda: (_t(0, 3, 4, 4), _t(0, 3, 4, 4), 1), ValueError),
    ("f1 to be non-empty", lambda: (_t(2, 0, 4, 4), _t(2, 0, 4, 4), 1), ValueError),
    ("f1 to be non-empty", lambda: (_t(2, 3, 0, 4), _t(2, 3, 0, 4), 1), ValueError),
    ("k >= 0", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 4), -1), ValueError),
    # Python-only (the schema itself refuses these on direct torch.ops calls)
    ("k to be an int", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 4), 2.0), TypeError),
    ("k to be an int", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 4), True), TypeError),
    ("k to be an int", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 4), None), TypeError),
    ("f1 to be a torch.Tensor", lambda: ([[1.0]], _t(2, 3, 4, 4), 1), TypeError),
    ("f2 to be a torch.Tensor", lambda: (_t(2, 3, 4, 4), None, 1), TypeError),
]
N_KERNEL_CHECKED = 9


def _pattern(op, message):
    return f"fgreid_ops.{op}: expected " + message.replace("[", r"\[").replace("]", r"\]")


def test_device_mismatch_names_argument():
    with pytest.raises(ValueError, match="expected f2 on the same device as f1"):
        fgreid_ops.topk_mask(_t(2, 3, 4, 4), torch.rand(2, 3, 4, 4, device="meta"), 1)


BAD_BACKWARD = [
    ("mask of shape [N, 1, H, W]=[2, 1, 4, 4]", lambda: (_t(2, 3, 4, 4), _t(2, 3, 4, 4)), ValueError),
    ("mask of shape [N, 1, H, W]=[2, 1, 4, 4]", lambda: (_t(2, 3, 4, 4), _t(2, 1, 4, 5)), ValueError),
    ("grad_out to be 4-D", lambda: (_t(2, 3, 16), _t(2, 1, 4, 4)), ValueError),
    ("mask to be float32", lambda: (_t(2, 3, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.bool)), TypeError),
]


@pytest.mark.parametrize("message,make,error", BAD_BACKWARD)
def test_bad_backward_input(message, make, error):
    grad, mask = make()
    pattern = _pattern("topk_mask_backward", message)
    ops = [torch.ops.fgreid.topk_mask_backward]
    if fgreid_ops._backend.triton_available("cpu"):
        ops.append(torch.ops.fgreid.topk_mask_triton_backward)
    for op in ops:
        with pytest.raises((error, RuntimeError), match=pattern):
            op(grad, mask)
        with pytest.raises((error, RuntimeError), match=pattern):
            op(grad.to("meta"), mask.to("meta"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        fgreid_ops.topk_mask(_t(1, 1, 2, 2), _t(1, 1, 2, 2), 1, backend="fortran")


def test_reference_switch():
    f1, f2 = float_inputs((2, 3, 4, 4), torch.float32, "cpu")
    with fgreid_ops.use_reference():
        ref = fgreid_ops.topk_mask(f1, f2, 3)
    out = fgreid_ops.topk_mask(f1, f2, 3)
    assert torch.equal(ref[1], out[1]) and torch.equal(ref[0], out[0])


# --- torch.compile -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_pooled_branch(backend, device):
    torch._dynamo.reset()

    def branch(f1, f2, k):
        out, mask = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
        return out.mean(dim=(2, 3)), mask

    compiled = torch.compile(branch, fullgraph=True, dynamic=True)
    for shape, k in [((2, 4, 5, 3), 5), ((3, 4, 6, 2), 0)]:
        f1, f2 = int_inputs(shape, torch.float32, device, seed=shape[0])
        f2.requires_grad_()
        pooled, mask = compiled(f1, f2, k)
        ref_pooled, ref_mask = branch(f1, f2, k)
        assert torch.equal(mask, ref_mask)
        torch.testing.assert_close(pooled, ref_pooled)
        (g,) = torch.autograd.grad(pooled.sum(), f2)
        (g_ref,) = torch.autograd.grad(ref_pooled.sum(), f2)
        torch.testing.assert_close(g, g_ref)


# --- hypothesis --------------------------------------------------------------------------------

@given(
    n=st.integers(1, 3), c=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 9),
    k_frac=st.floats(0.0, 1.2), exact=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_hypothesis_float_selection(backend, device, n, c, h, w, k_frac, exact, dtype, layout, seed):
    shape = (n, c, h, w)
    f1, f2 = (int_inputs if exact else float_inputs)(shape, dtype, device, seed=seed)
    f1, f2 = to_layout(f1, layout), to_layout(f2, layout).requires_grad_()
    k = int(k_frac * h * w)
    out, mask = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
    (assert_exact if exact else assert_valid_selection)(out, mask, f1, f2.detach(), k)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
    (g2,) = torch.autograd.grad(out, f2, grad)
    assert torch.equal(g2, grad * mask)


# --- the generic battery (tests/op_battery.py) ---------------------------------------------------

class TestTopkMask(OpTester):
    """Inputs of small integers: channel sums are exact and many positions tie, so every
    comparison with the reference is exact (the tie rule included)."""

    op_def = TOPK_MASK
    layouts = LAYOUTS + ["mixed"]
    cases = ("k0", "k1", "k20", "k98", "k500")
    grad_cases = ("k1", "k20")
    shape = (2, 3, 9, 11)  # H*W = 99: two blocks of the Triton selection
    shapes = [(2, 4, 5, 3), (3, 4, 6, 2)]
    grad_inputs = (1,)
    grad_outputs = (0,)
    bad_inputs = BAD_INPUTS
    kernel_checked = N_KERNEL_CHECKED
    gradcheck_fast_triton_interpret = True

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        make = float_inputs if purpose == "gradcheck" else int_inputs  # gradcheck: no ties to perturb across
        f1, f2 = make(shape, dtype, device, seed=seed)
        return f1, f2, int(case[1:])

    def layout_inputs(self, args, layout):
        f1, f2, k = args
        if layout == "mixed":
            return to_layout(f1, "channels_last"), to_layout(f2, "strided"), k
        return to_layout(f1, layout), to_layout(f2, layout), k

    def assert_close(self, actual, expected, dtype, grad=False):
        assert actual.dtype == dtype or grad
        assert torch.equal(actual, expected.to(actual.dtype))

    def backward_args(self, args, device):
        f1, f2, k = args
        _, mask = topk_mask_reference(f1.detach(), f2.detach(), k)
        return [(torch.rand_like(f2.detach()), mask)]  # grad_out in f2's layout

    def shape_strategy(self):
        return st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 9), st.integers(1, 9))


# --- pool=True: the masked mean, never writing the product --------------------------------------

def _pooled_tolerance(dtype):
    # the kernels and the reference sum H*W products in different orders
    return {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
            torch.float16: dict(rtol=2e-3, atol=1e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}[dtype]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [0, 1, 7, 15, 40])
def test_pool_matches_reference(backend, device, dtype, layout, k):
    f1, f2 = int_inputs((3, 5, 5, 3), dtype, device, seed=k)
    f1, f2 = to_layout(f1, layout), to_layout(f2, layout)
    pooled, mask = fgreid_ops.topk_mask(f1, f2, k, pool=True, backend=backend)
    ref_pooled, ref_mask = topk_mask_reference(f1, f2, k, pool=True)
    assert pooled.shape == (3, 5) and pooled.dtype == dtype and pooled.is_contiguous()
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pooled, ref_pooled, **_pooled_tolerance(dtype))
    # the same positions as the unpooled op, whose product the pooled one never writes
    out, mask_full = fgreid_ops.topk_mask(f1, f2, k, backend=backend)
    assert torch.equal(mask, mask_full)
    torch.testing.assert_close(pooled, out.mean((2, 3)), **_pooled_tolerance(dtype))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pool_many_channels_and_same_tensor(backend, device):
    # C over the CPU kernel's channel chunk, and f1 is f2 as in CUHS's top-k branch
    f1, _ = int_inputs((2, 300, 6, 5), torch.float32, device, seed=3)
    pooled, mask = fgreid_ops.topk_mask(f1, f1, 5, pool=True, backend=backend)
    ref_pooled, ref_mask = topk_mask_reference(f1, f1, 5, pool=True)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pooled, ref_pooled)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pool_nan_and_inf(backend, device):
    f1 = torch.zeros(1, 2, 2, 2, device=device)
    f1[0, 0, 0, 0] = 5.0  # position 0 is the one zeroed with k = 1
    f2 = torch.ones(1, 2, 2, 2, device=device)
    f2[0, 0, 0, 0] = float("inf")  # inf * 0 = NaN, as in (f2 * mask).mean()
    f2[0, 1, 1, 1] = float("inf")  # kept: the mean is inf
    pooled, _ = fgreid_ops.topk_mask(f1, f2, 1, pool=True, backend=backend)
    ref, _ = topk_mask_reference(f1, f2, 1, pool=True)
    assert pooled[0, 0].isnan() and ref[0, 0].isnan()
    assert pooled[0, 1] == float("inf") == ref[0, 1]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
def test_pool_backward_matches_reference(backend, device, dtype, grad_layout):
    f1, f2 = int_inputs((3, 4, 5, 3), dtype, device, seed=2)
    f2.requires_grad_()
    pooled, mask = fgreid_ops.topk_mask(f1, f2, 4, pool=True, backend=backend)
    grad = grad_like(pooled, grad_layout, torch.Generator().manual_seed(1))
    (g2,) = torch.autograd.grad(pooled, f2, grad)
    ref_pooled, _ = topk_mask_reference(f1, f2, 4, pool=True)
    (g2_ref,) = torch.autograd.grad(ref_pooled, f2, grad)
    assert g2.dtype == dtype and g2.shape == f2.shape
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        # the Triton interpreter truncates float32 -> bfloat16 casts (a GPU rounds to nearest)
        torch.testing.assert_close(g2, g2_ref, rtol=2**-7, atol=0)
    else:
        # grad / (H W) rounded to the dtype, then times the 0/1 mask: exact
        assert torch.equal(g2, g2_ref)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
def test_backward_grad_layouts(backend, device, dtype, grad_layout):
    f1, f2 = int_inputs((3, 4, 5, 3), dtype, device, seed=6)
    f2.requires_grad_()
    out, mask = fgreid_ops.topk_mask(f1, f2, 4, backend=backend)
    grad = grad_like(out, grad_layout, torch.Generator().manual_seed(2))
    (g2,) = torch.autograd.grad(out, f2, grad)
    ref_out, _ = topk_mask_reference(f1, f2, 4)
    (g2_ref,) = torch.autograd.grad(ref_out, f2, grad)
    assert torch.equal(g2, g2_ref)


def test_cpu_backward_does_not_copy_expanded_grads():
    f1, f2 = int_inputs((2, 4, 5, 3), torch.float32, "cpu")
    f2.requires_grad_()
    for pool in (False, True):
        out, _ = fgreid_ops.topk_mask(f1, f2, 4, pool=pool, backend="cpu")
        for grad_layout in ["mean_expand", "sum_expand", "broadcast", "permuted"]:
            grad = grad_like(out, grad_layout)
            copies = copies_of_shape(lambda: torch.autograd.grad(out, f2, grad, retain_graph=True),
                                     "fgreid::topk_mask_backward", grad.shape)
            assert not copies, (pool, grad_layout, copies)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pool_gradcheck(backend, device):
    f1, f2 = float_inputs((2, 3, 3, 4), torch.float64, device)
    f2.requires_grad_()
    fast = backend == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(
        lambda b: fgreid_ops.topk_mask(f1, b, 5, pool=True, backend=backend)[0], (f2,), fast_mode=fast
    )


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool_opcheck(backend, device, layout):
    triton = backend == "triton"
    op = torch.ops.fgreid.topk_mask_triton if triton else torch.ops.fgreid.topk_mask
    backward = torch.ops.fgreid.topk_mask_triton_backward if triton else torch.ops.fgreid.topk_mask_backward
    f1, f2 = int_inputs((2, 3, 4, 5), torch.float32, device)
    f1, f2 = to_layout(f1, layout), to_layout(f2, layout)
    torch.library.opcheck(op, (f1, f2, 3, True))
    torch.library.opcheck(op, (f1, f2.requires_grad_(), 3, True))
    _, mask = op(f1, f2.detach(), 3, True)
    torch.library.opcheck(backward, (torch.rand(2, 3, device=device), mask, True))
    torch.library.opcheck(backward, (torch.rand(3, device=device).expand(2, 3), mask, True))


@pytest.mark.parametrize("backend,device", BACKENDS[:2])
@pytest.mark.parametrize("message,grad_shape,mask_shape", [
    ("grad_out to be 2-D", (2, 3, 4, 5), (2, 1, 4, 5)),
    ("mask of shape [N, 1, H, W] with N=2", (2, 3), (3, 1, 4, 5)),
    ("mask of shape [N, 1, H, W] with N=2", (2, 3), (2, 3, 4, 5)),
])
def test_pool_bad_backward_input(backend, device, message, grad_shape, mask_shape):
    op = torch.ops.fgreid.topk_mask_triton_backward if backend == "triton" else torch.ops.fgreid.topk_mask_backward
    with pytest.raises(ValueError, match=_pattern("topk_mask_backward", message)):
        op(torch.rand(grad_shape, device=device), torch.ones(mask_shape, device=device), True)


def test_pool_must_be_bool():
    f1 = torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match="fgreid_ops.topk_mask: expected pool to be a bool, got int"):
        fgreid_ops.topk_mask(f1, f1, 1, 1)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_pool_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def branch(f1, f2, k):
        return fgreid_ops.topk_mask(f1, f2, k, pool=True, backend=backend)

    compiled = torch.compile(branch, fullgraph=True, dynamic=True)
    for shape, k in [((2, 4, 5, 3), 5), ((3, 4, 6, 2), 0)]:
        f1, f2 = int_inputs(shape, torch.float32, device, seed=shape[0])
        f2.requires_grad_()
        pooled, mask = compiled(f1, f2, k)
        ref_pooled, ref_mask = topk_mask_reference(f1, f2, k, pool=True)
        assert torch.equal(mask, ref_mask)
        torch.testing.assert_close(pooled, ref_pooled)
        (g,) = torch.autograd.grad(pooled.sum(), f2)
        (g_ref,) = torch.autograd.grad(ref_pooled.sum(), f2)
        assert torch.equal(g, g_ref)
