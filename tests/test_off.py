import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch.profiler import ProfilerActivity, profile

import fgreid_ops
from fgreid_ops.reference import off_reference
from fgreid_ops.reference.off import SOBEL_X, SOBEL_Y

from helpers import DTYPES, assert_close, kernel_backends, to_layout

# OFF has no Triton kernel: the CPU and CUDA C++ kernels.
BACKENDS = [p for p in kernel_backends() if p.values[0] != "triton"]
COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous"}


def rand(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def naive_off(a, b):
    """SPEC §2 by loops: cross-correlation with Kx, Ky, zero padding 1, then b - a (a, b [C, H, W])."""
    C, H, W = a.shape
    out = torch.zeros(3 * C, H, W, dtype=torch.float64)
    for c in range(C):
        for i in range(H):
            for j in range(W):
                for u in range(3):
                    for v in range(3):
                        y, x = i + u - 1, j + v - 1
                        if 0 <= y < H and 0 <= x < W:
                            out[c, i, j] += SOBEL_X[u][v] * a[c, y, x]
                            out[C + c, i, j] += SOBEL_Y[u][v] * a[c, y, x]
    out[2 * C:] = b.double() - a.double()
    return out


# Layouts of the pair (a, b), each [..., C, H, W] with the given trailing (C, H, W).
def make_pair(layout, chw, dtype, device, seed=0):
    C, H, W = chw
    if layout == "segment":  # the FG model's call: x[:, :-d], x[:, d:] of one [N, T, C, H, W]
        x = rand((2, 5, C, H, W), dtype, device, seed)
        return x[:, :-2], x[:, 2:]
    a, b = rand((2, C, H, W), dtype, device, seed), rand((2, C, H, W), dtype, device, seed + 1)
    if layout in ("contiguous", "channels_last", "strided"):
        return to_layout(a, layout), to_layout(b, layout)
    if layout == "mixed":  # a and b with different strides
        return a, to_layout(b, "channels_last")
    if layout == "unbatched":  # no leading dim
        return a[0], b[0]
    if layout == "permuted_batch":  # [T, N, ...] storage viewed as [N, T, ...]
        a6, b6 = rand((3, 2, C, H, W), dtype, device, seed), rand((3, 2, C, H, W), dtype, device, seed + 1)
        return a6.transpose(0, 1), b6.transpose(0, 1)
    if layout == "three_batch_dims":  # leading dims that do not fold into two: copied
        a6, b6 = rand((4, 4, 5, C, H, W), dtype, device, seed), rand((4, 4, 5, C, H, W), dtype, device, seed + 1)
        return a6[::2, ::2, :3], b6[::2, ::2, :3]
    if layout == "expanded":  # a zero batch stride
        return a[:1].expand(3, C, H, W), b[:1].expand(3, C, H, W)
    raise ValueError(layout)


PAIR_LAYOUTS = ["contiguous", "channels_last", "strided", "segment", "mixed", "unbatched", "permuted_batch",
                "three_batch_dims", "expanded"]


def expected(a, b=None, stride=None):
    """The float64 reference, cast to the kernel's dtype."""
    return off_reference(a.double(), None if b is None else b.double(), stride=stride).to(a.dtype)


def reference_grads(inputs, grad, **kwargs):
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    out = off_reference(*leaves, **kwargs)
    return torch.autograd.grad(out, leaves, grad.double())


# --- reference: known values -------------------------------------------------------------------

def test_reference_known_values():
    ones = torch.ones(1, 3, 3)
    out = off_reference(ones, torch.full((1, 3, 3), 5.0))
    torch.testing.assert_close(out[0], torch.tensor([[3.0, 0, -3], [4, 0, -4], [3, 0, -3]]))
    torch.testing.assert_close(out[1], torch.tensor([[3.0, 4, 3], [0, 0, 0], [-3, -4, -3]]))
    torch.testing.assert_close(out[2], torch.full((3, 3), 4.0))
    # cross-correlation: the response to a centred impulse is the kernel flipped (= negated)
    delta = torch.zeros(1, 5, 5)
    delta[0, 2, 2] = 1.0
    out = off_reference(delta, delta)
    torch.testing.assert_close(out[0, 1:4, 1:4], -torch.tensor(SOBEL_X))
    torch.testing.assert_close(out[1, 1:4, 1:4], -torch.tensor(SOBEL_Y))
    # a horizontal ramp has Sx = 8 and Sy = 0 away from the border
    ramp = torch.arange(6.0).expand(1, 5, 6)
    out = off_reference(ramp, ramp)
    torch.testing.assert_close(out[0, 1:-1, 1:-1], torch.full((3, 4), 8.0))
    torch.testing.assert_close(out[1, 1:-1, 1:-1], torch.zeros(3, 4))


def test_reference_matches_naive_loops():
    a, b = rand((3, 4, 5), torch.float64), rand((3, 4, 5), torch.float64, seed=1)
    torch.testing.assert_close(off_reference(a, b), naive_off(a, b))
    x = rand((2, 4, 2, 3, 4), torch.float64)
    out = off_reference(x, stride=3)
    assert out.shape == (2, 1, 6, 3, 4)
    torch.testing.assert_close(out[1, 0], naive_off(x[1, 0], x[1, 3]))


# --- kernels vs reference ----------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", PAIR_LAYOUTS)
def test_forward_matches_reference(backend, device, dtype, layout):
    a, b = make_pair(layout, (3, 7, 6), dtype, device)
    out = fgreid_ops.off(a, b, backend=backend)
    assert out.shape == (*a.shape[:-3], 9, 7, 6) and out.dtype == dtype and out.is_contiguous()
    assert_close(out, expected(a, b), dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 2, 70, 40), (1, 1, 5, 2100), (1, 1, 3000, 1), (2, 1, 1, 1), (1, 2, 1, 9),
                                   (1, 2, 9, 1), (1, 3, 2, 2), (1, 2, 130, 67)], ids=str)
def test_forward_edge_sizes(backend, device, shape):
    # several row bands (CPU) / tiles (CUDA), one band per row, single rows and columns
    a, b = rand(shape, device=device), rand(shape, device=device, seed=1)
    assert_close(fgreid_ops.off(a, b, backend=backend), expected(a, b), torch.float32)
    a, b = to_layout(a, "strided"), to_layout(b, "strided")
    assert_close(fgreid_ops.off(a, b, backend=backend), expected(a, b), torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,d", [(5, 1), (5, 2), (5, 4), (2, 1)])
def test_segment_forward(backend, device, dtype, T, d):
    x = rand((2, T, 3, 6, 5), dtype, device)
    out = fgreid_ops.off(x, stride=d, backend=backend)
    assert out.shape == (2, T - d, 9, 6, 5)
    assert_close(out, expected(x, stride=d), dtype)
    assert torch.equal(out, fgreid_ops.off(x[:, :-d], x[:, d:], backend=backend))
    xs = to_layout(x, "strided")  # a sliced W on top of the segment views
    assert_close(fgreid_ops.off(xs, stride=d, backend=backend), expected(xs, stride=d), dtype)


def _ops_run(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.name for e in prof.events()}
    assert any(n.startswith("fgreid::off") for n in names), names  # the profiler saw the op
    return names


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_segment_views_are_not_copied(backend, device):
    x = rand((2, 6, 3, 5, 4), device=device).requires_grad_()
    pair = _ops_run(lambda: fgreid_ops.off(x[:, :-2], x[:, 2:], backend=backend))
    assert not pair & COPY_OPS, pair
    seg = _ops_run(lambda: fgreid_ops.off(x, stride=2, backend=backend).sum().backward())
    assert not seg & COPY_OPS, seg
    # the check does detect a copy: leading dims that cannot fold into two are copied
    a, b = make_pair("three_batch_dims", (3, 5, 4), torch.float32, device)
    assert _ops_run(lambda: fgreid_ops.off(a, b, backend=backend)) & COPY_OPS


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "segment", "unbatched", "three_batch_dims"])
def test_backward_matches_reference(backend, device, dtype, layout):
    a, b = make_pair(layout, (3, 6, 5), dtype, device)
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    out = fgreid_ops.off(a, b, backend=backend)
    # a non-contiguous incoming gradient, as a transposing consumer would give
    grad = rand((*out.shape[:-2], out.shape[-1], out.shape[-2]), dtype, device, seed=5).transpose(-1, -2)
    ga, gb = torch.autograd.grad(out, (a, b), grad)
    ga_ref, gb_ref = reference_grads((a, b), grad)
    assert_close(ga, ga_ref, dtype, grad=True)
    assert_close(gb, gb_ref, dtype, grad=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backward_to_one_input(backend, device):
    a, b = rand((2, 3, 5, 4), device=device), rand((2, 3, 5, 4), device=device, seed=1)
    grad = rand((2, 9, 5, 4), device=device, seed=2)
    for wrt in ("a", "b"):
        leaf = (a if wrt == "a" else b).clone().requires_grad_()
        args = (leaf, b) if wrt == "a" else (a, leaf)
        (g,) = torch.autograd.grad(fgreid_ops.off(*args, backend=backend), leaf, grad)
        (g_ref,) = torch.autograd.grad(off_reference(*args), leaf, grad)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,d", [(5, 1), (5, 2), (5, 4), (6, 3)])
def test_segment_backward(backend, device, dtype, T, d):
    # d > T/2 leaves middle frames in no pair: their gradient is 0
    x = rand((2, T, 3, 5, 4), dtype, device).requires_grad_()
    out = fgreid_ops.off(x, stride=d, backend=backend)
    grad = rand(out.shape, dtype, device, seed=3)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_ref,) = reference_grads((x,), grad, stride=d)
    assert_close(gx, gx_ref, dtype, grad=True)
    gs = to_layout(grad, "strided")
    (gx,) = torch.autograd.grad(fgreid_ops.off(x, stride=d, backend=backend), x, gs)
    assert_close(gx, gx_ref, dtype, grad=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    a = rand((2, 2, 4, 5), torch.float64, device).requires_grad_()
    b = rand((2, 2, 4, 5), torch.float64, device, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fgreid_ops.off(a, b, backend=backend), (a, b))
    x = rand((2, 4, 2, 3, 4), torch.float64, device).requires_grad_()
    for d in (1, 3):
        assert torch.autograd.gradcheck(lambda x: fgreid_ops.off(x, stride=d, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda x: fgreid_ops.off(x[:, :-2], x[:, 2:], backend=backend), (x,))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradgradcheck(backend, device):
    # the backward ops have their own backward (the op is linear), so double backward works
    a = rand((1, 2, 3, 4), torch.float64, device).requires_grad_()
    b = rand((1, 2, 3, 4), torch.float64, device, seed=1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: fgreid_ops.off(a, b, backend=backend), (a, b))
    x = rand((1, 3, 2, 3, 4), torch.float64, device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: fgreid_ops.off(x, stride=1, backend=backend), (x,))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "segment", "channels_last"])
def test_opcheck(backend, device, layout):
    a, b = make_pair(layout, (2, 4, 5), torch.float32, device)
    torch.library.opcheck(torch.ops.fgreid.off, (a, b))
    torch.library.opcheck(torch.ops.fgreid.off, (a.detach().requires_grad_(), b.detach().requires_grad_()))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck_segment_and_backward_ops(backend, device):
    grad = to_layout(rand((2, 6, 4, 5), device=device), "strided")
    torch.library.opcheck(torch.ops.fgreid.off_backward, (grad,))
    x = rand((2, 4, 2, 4, 5), device=device)
    torch.library.opcheck(torch.ops.fgreid.off_segment, (x, 1))
    torch.library.opcheck(torch.ops.fgreid.off_segment, (x.requires_grad_(), 3))
    torch.library.opcheck(torch.ops.fgreid.off_segment_backward, (rand((2, 2, 6, 4, 5), device=device), 2))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_and_inf_spread_like_conv2d(backend, device):
    a = torch.zeros(1, 2, 6, 5, device=device)
    a[0, 0, 2, 4] = float("nan")  # last column: must not leak into the next row's first column
    a[0, 1, 3, 0] = float("inf")
    b = torch.zeros_like(a)
    out, ref = fgreid_ops.off(a, b, backend=backend), off_reference(a, b)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.nan_to_num(), ref.nan_to_num())
    leaf = a.clone().requires_grad_()
    grad = torch.zeros(1, 6, 6, 5, device=device)
    grad[0, 1, 1, 4] = float("nan")
    (g,) = torch.autograd.grad(fgreid_ops.off(leaf, b, backend=backend), leaf, grad)
    (g_ref,) = torch.autograd.grad(off_reference(leaf, b), leaf, grad)
    assert torch.equal(g.isnan(), g_ref.isnan()) and torch.equal(g.nan_to_num(), g_ref.nan_to_num())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def model(x, a, b):
        return fgreid_ops.off(x, stride=2, backend=backend).sum(1) + fgreid_ops.off(a, b, backend=backend)

    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for shape in [(2, 4, 3, 5, 6), (3, 5, 3, 4, 7)]:
        x = rand(shape, device=device).requires_grad_()
        a = rand((shape[0], *shape[2:]), device=device, seed=1).requires_grad_()
        b = rand((shape[0], *shape[2:]), device=device, seed=2).requires_grad_()
        out = compiled(x, a, b)
        torch.testing.assert_close(out, model(x, a, b))
        grads = torch.autograd.grad(out.square().sum(), (x, a, b))
        grads_eager = torch.autograd.grad(model(x, a, b).square().sum(), (x, a, b))
        for g, ge in zip(grads, grads_eager):
            torch.testing.assert_close(g, ge)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_dynamic_stride(backend, device):
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, d: fgreid_ops.off(x, stride=d, backend=backend), fullgraph=True, dynamic=True)
    x = rand((2, 5, 2, 4, 3), device=device)
    for d in (1, 3):
        torch.testing.assert_close(compiled(x, d), off_reference(x, stride=d))
    with pytest.raises(Exception, match="stride in"):
        compiled(x, 5)


@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), c=st.integers(1, 6), h=st.integers(1, 12),
    w=st.integers(1, 12), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    layout=st.sampled_from(["contiguous", "strided", "transposed"]), seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_hypothesis_pair(backend, device, lead, c, h, w, dtype, layout, seed):
    shape = (*lead, c, h, w)
    a, b = rand(shape, dtype, device, seed), rand(shape, dtype, device, seed + 1)
    if layout == "strided":
        a, b = to_layout(a, "strided"), to_layout(b, "strided")
    elif layout == "transposed" and lead:  # batch dim innermost in memory
        a = rand((*shape[1:], shape[0]), dtype, device, seed).movedim(-1, 0)
    a, b = a.requires_grad_(), b.requires_grad_()
    out = fgreid_ops.off(a, b, backend=backend)
    assert_close(out, expected(a.detach(), b.detach()), dtype)
    grad = rand(out.shape, dtype, device, seed + 2)
    ga, gb = torch.autograd.grad(out, (a, b), grad)
    ga_ref, gb_ref = reference_grads((a, b), grad)
    assert_close(ga, ga_ref, dtype, grad=True)
    assert_close(gb, gb_ref, dtype, grad=True)


@given(n=st.integers(1, 3), t=st.integers(2, 7), c=st.integers(1, 4), h=st.integers(1, 10), w=st.integers(1, 10),
       data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_hypothesis_segment(backend, device, n, t, c, h, w, data, dtype, seed):
    d = data.draw(st.integers(1, t - 1), label="stride")
    x = rand((n, t, c, h, w), dtype, device, seed).requires_grad_()
    out = fgreid_ops.off(x, stride=d, backend=backend)
    assert_close(out, expected(x.detach(), stride=d), dtype)
    grad = rand(out.shape, dtype, device, seed + 1)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_ref,) = reference_grads((x,), grad, stride=d)
    assert_close(gx, gx_ref, dtype, grad=True)


# --- bad input ---------------------------------------------------------------------------------

def _t(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


# (message after "fgreid_ops.off: expected ", args, kwargs, error)
BAD_PAIRS = [
    ("a to be at least 3-D", lambda: ((_t(4, 4), _t(4, 4)), {}), ValueError),
    ("b to have the same shape as a", lambda: ((_t(2, 3, 4, 4), _t(2, 3, 4, 5)), {}), ValueError),
    ("b to have the same shape as a", lambda: ((_t(2, 3, 4, 4), _t(3, 4, 4)), {}), ValueError),
    ("a to be float32", lambda: ((_t(2, 3, 4, 4, dtype=torch.int64), _t(2, 3, 4, 4)), {}), TypeError),
    ("b to be float32", lambda: ((_t(2, 3, 4, 4), _t(2, 3, 4, 4, dtype=torch.int32)), {}), TypeError),
    ("b to have the same dtype as a", lambda: ((_t(2, 3, 4, 4), _t(2, 3, 4, 4, dtype=torch.float16)), {}), TypeError),
    ("a to be non-empty", lambda: ((_t(0, 3, 4, 4), _t(0, 3, 4, 4)), {}), ValueError),
    ("a to be non-empty", lambda: ((_t(2, 3, 0, 4), _t(2, 3, 0, 4)), {}), ValueError),
]
BAD_SEGMENTS = [
    ("stride in \\[1, T-1\\] for T=4, got 0", lambda: ((_t(2, 4, 3, 4, 4),), {"stride": 0}), ValueError),
    ("stride in \\[1, T-1\\] for T=4, got 4", lambda: ((_t(2, 4, 3, 4, 4),), {"stride": 4}), ValueError),
    ("stride in \\[1, T-1\\] for T=4, got -1", lambda: ((_t(2, 4, 3, 4, 4),), {"stride": -1}), ValueError),
    ("stride in \\[1, T-1\\] for T=1", lambda: ((_t(2, 1, 3, 4, 4),), {"stride": 1}), ValueError),
    ("x to be 5-D", lambda: ((_t(4, 3, 4, 4),), {"stride": 1}), ValueError),
    ("x to be float32", lambda: ((_t(2, 4, 3, 4, 4, dtype=torch.int64),), {"stride": 1}), TypeError),
    ("x to be non-empty", lambda: ((_t(0, 4, 3, 4, 4),), {"stride": 1}), ValueError),
]
BAD_CALLS = [
    ("b or stride=d, got neither", lambda: ((_t(2, 3, 4, 4),), {}), ValueError),
    ("either b or stride, got both", lambda: ((_t(2, 4, 3, 4, 4), _t(2, 4, 3, 4, 4)), {"stride": 1}), ValueError),
    ("stride to be an int", lambda: ((_t(2, 4, 3, 4, 4),), {"stride": 1.0}), TypeError),
    ("stride to be an int", lambda: ((_t(2, 4, 3, 4, 4),), {"stride": True}), TypeError),
    ("a to be a torch.Tensor", lambda: (([[1.0]], _t(1)), {}), TypeError),
]
ALL_BAD = BAD_PAIRS + BAD_SEGMENTS + BAD_CALLS


@pytest.mark.parametrize("message,make,error", ALL_BAD, ids=[f"{i}:{m}" for i, (m, _, _) in enumerate(ALL_BAD)])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_input_raises_naming_argument(backend, message, make, error):
    args, kwargs = make()
    with pytest.raises(error, match="fgreid_ops.off: expected " + message):
        fgreid_ops.off(*args, **kwargs, backend=backend)


@pytest.mark.parametrize("message,make,error", BAD_PAIRS + BAD_SEGMENTS)
def test_bad_input_raises_in_kernel_and_on_meta(message, make, error):
    args, kwargs = make()
    op = torch.ops.fgreid.off if not kwargs else torch.ops.fgreid.off_segment
    args = args + tuple(kwargs.values())
    pattern = "fgreid_ops.off: expected " + message
    with pytest.raises((error, RuntimeError), match=pattern):
        op(*args)  # the C++ checks, for direct torch.ops callers
    meta = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in args)
    with pytest.raises((error, RuntimeError), match=pattern):
        op(*meta)  # the fake


@pytest.mark.parametrize("op,args,message", [
    (torch.ops.fgreid.off_backward, (_t(2, 4, 3, 3),), "grad_out to have 3C channels, got 4"),
    (torch.ops.fgreid.off_backward, (_t(3, 3),), "grad_out to be at least 3-D"),
    (torch.ops.fgreid.off_backward, (_t(0, 3, 3, 3),), "grad_out to be non-empty"),
    (torch.ops.fgreid.off_segment_backward, (_t(2, 2, 6, 3, 3), 0), "stride >= 1"),
    (torch.ops.fgreid.off_segment_backward, (_t(2, 6, 3, 3), 1), "grad_out to be 5-D"),
    (torch.ops.fgreid.off_segment_backward, (_t(2, 2, 5, 3, 3), 1), "grad_out to have 3C channels"),
])
def test_bad_backward_input_raises(op, args, message):
    with pytest.raises((ValueError, RuntimeError), match="fgreid_ops.off: expected " + message):
        op(*args)


def test_device_mismatch_names_argument():
    with pytest.raises(ValueError, match="fgreid_ops.off: expected b on the same device as a"):
        fgreid_ops.off(_t(2, 3, 4, 4), _t(2, 3, 4, 4).to("meta"))


def test_backend_choice():
    a, b = rand((1, 2, 3, 3)), rand((1, 2, 3, 3), seed=1)
    with pytest.raises(ValueError, match="backend"):
        fgreid_ops.off(a, b, backend="fortran")
    # no Triton kernel is a fact of the op, so the error does not depend on triton being installed
    with pytest.raises(ValueError, match="fgreid_ops.off: no Triton kernel"):
        fgreid_ops.off(a, b, backend="triton")
    with fgreid_ops.use_reference():
        ref = fgreid_ops.off(a, b)
    torch.testing.assert_close(fgreid_ops.off(a, b), ref)


def test_reference_backend_is_conv2d():
    # the eager model the op replaces: two depthwise conv2d, sub, cat
    a, b = rand((2, 3, 5, 6)), rand((2, 3, 5, 6), seed=1)
    kx = torch.tensor(SOBEL_X).expand(3, 1, 3, 3)
    ky = torch.tensor(SOBEL_Y).expand(3, 1, 3, 3)
    eager = torch.cat([F.conv2d(a, kx, padding=1, groups=3), F.conv2d(a, ky, padding=1, groups=3), b - a], 1)
    torch.testing.assert_close(fgreid_ops.off(a, b), eager)
