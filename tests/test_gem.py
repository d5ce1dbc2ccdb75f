import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import fgreid_ops
from fgreid_ops.nn import GeM
from fgreid_ops.ops.gem import GEM
from fgreid_ops.reference import gem_reference

from helpers import LAYOUTS, assert_close, kernel_backends, to_layout
from op_battery import OpTester

BACKENDS = kernel_backends()


def make_inputs(shape, dtype, device, p_shape=(1,), low=0.0, high=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype).to(device)
    p = (torch.rand(p_shape, generator=g, dtype=torch.float64) * 3 + 1).to(device)
    return x, p


def expected_forward(x, p, eps):
    return gem_reference(x.double(), p.double(), eps).to(x.dtype)


# --- reference: known values -------------------------------------------------------------------

def test_reference_known_values():
    x = torch.full((2, 3, 4, 5), 2.0)
    torch.testing.assert_close(gem_reference(x, torch.tensor([3.0])), torch.full((2, 3), 2.0))
    x = torch.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    torch.testing.assert_close(gem_reference(x, torch.tensor([1.0])), torch.tensor([[2.5]]))
    torch.testing.assert_close(gem_reference(x, torch.tensor([2.0])), torch.tensor([[(30 / 4) ** 0.5]]))
    # values below eps are clamped up to eps
    torch.testing.assert_close(gem_reference(-torch.ones(1, 1, 2, 2), torch.tensor([3.0]), eps=0.5), torch.tensor([[0.5]]))


def test_reference_matches_fast_reid_formula():
    # fast-reid GeneralizedMeanPoolingP: adaptive_avg_pool2d(x.clamp(min=eps).pow(p), 1).pow(1/p)
    x, _ = make_inputs((2, 8, 6, 4), torch.float64, "cpu")
    p = torch.tensor([3.0], dtype=torch.float64)
    fast_reid = F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(p), 1).pow(1.0 / p).flatten(1)
    torch.testing.assert_close(gem_reference(x, p), fast_reid)


# --- the generic battery (tests/op_battery.py) ---------------------------------------------------

BAD_INPUTS = [
    ("x to be 4-D", lambda: (torch.rand(2, 3, 4), torch.tensor([3.0]), 1e-6), ValueError),
    ("x to be float32", lambda: (torch.ones(2, 3, 4, 4, dtype=torch.int64), torch.tensor([3.0]), 1e-6), TypeError),
    ("p to be float32", lambda: (torch.rand(2, 3, 4, 4), torch.tensor([3]), 1e-6), TypeError),
    ("p of shape [1] or [C]", lambda: (torch.rand(2, 3, 4, 4), torch.tensor([3.0, 3.0]), 1e-6), ValueError),
    ("p of shape [1] or [C]", lambda: (torch.rand(2, 3, 4, 4), torch.ones(1, 1), 1e-6), ValueError),
    ("eps > 0", lambda: (torch.rand(2, 3, 4, 4), torch.tensor([3.0]), 0.0), ValueError),
    ("eps > 0", lambda: (torch.rand(2, 3, 4, 4), torch.tensor([3.0]), -1.0), ValueError),
    ("x to have a non-empty batch", lambda: (torch.rand(0, 3, 4, 4), torch.tensor([3.0]), 1e-6), ValueError),
    ("x to be non-empty", lambda: (torch.rand(2, 3, 0, 4), torch.tensor([3.0]), 1e-6), ValueError),
    ("x to be a torch.Tensor", lambda: ([[1.0]], torch.tensor([3.0]), 1e-6), TypeError),
]


class TestGem(OpTester):
    op_def = GEM
    cases = ("p1", "pC")  # one learnable p, or one per channel
    shape = (3, 5, 7, 6)
    shapes = [(2, 4, 5, 3), (3, 4, 6, 2)]
    grad_inputs = (0, 1)
    bad_inputs = BAD_INPUTS

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        # some x below eps (gradient 0 there) where the gradient is compared, none near the kink for gradcheck
        low = {"forward": 0.0, "backward": -0.5, "hypothesis": -0.5}.get(purpose, 0.1)
        x, p = make_inputs(shape, dtype, device, p_shape=(shape[1],) if case == "pC" else (1,), low=low, seed=seed)
        return x, p.to(torch.float64 if dtype == torch.float64 else torch.float32), 1e-6

    def grad_dtype(self, position, dtype):
        # grad_p accumulates in float32 and is returned in p's dtype
        return dtype if position == 0 or dtype == torch.float64 else torch.float32

    def backward_args(self, args, device):
        x, p, eps = args
        grad = torch.rand(x.shape[0], x.shape[1], device=device)
        return [(grad, x.detach(), p.detach(), eps, True), (grad, x.detach(), p.detach(), eps, False)]

    def shape_strategy(self):
        return st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 9), st.integers(1, 9))


# --- what is special about gem --------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_to_x_only(backend, device):
    x, p = make_inputs((2, 3, 4, 4), torch.float32, device)
    x.requires_grad_()
    fgreid_ops.gem(x, p, backend=backend).sum().backward()
    expected = torch.autograd.grad(gem_reference(x, p).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_is_zero_below_eps(backend, device):
    x, p = make_inputs((2, 4, 5, 3), torch.float32, device, p_shape=(4,), low=-0.5)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(fgreid_ops.gem(x, p, backend=backend).sum(), x)
    assert torch.all(gx[x.detach() < 1e-6] == 0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_module_compiles_fullgraph(backend, device):
    torch._dynamo.reset()
    module = GeM(p=3.0, backend=backend).to(device)
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    for shape in [(2, 4, 5, 3), (3, 4, 6, 2)]:
        x, _ = make_inputs(shape, torch.float32, device)
        x.requires_grad_()
        out = compiled(x)
        torch.testing.assert_close(out, module(x))
        out.sum().backward()
        gx = x.grad.clone()
        x.grad = None
        module(x).sum().backward()
        torch.testing.assert_close(gx, x.grad)


@given(
    n=st.integers(1, 3), c=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 9),
    p_value=st.floats(1.0, 8.0), per_channel=st.booleans(), eps=st.sampled_from([1e-6, 1e-3, 0.3]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_hypothesis_p_and_eps(backend, device, n, c, h, w, p_value, per_channel, eps, dtype, layout, seed):
    x, _ = make_inputs((n, c, h, w), dtype, device, low=-0.5, high=3.0, seed=seed)
    p = torch.full((c,) if per_channel else (1,), p_value, dtype=torch.float32, device=device)
    x = to_layout(x, layout).requires_grad_()
    out = fgreid_ops.gem(x, p, eps, backend=backend)
    assert_close(out, expected_forward(x.detach(), p, eps), dtype)
    grad = torch.ones_like(out)
    (gx,) = torch.autograd.grad(out, x, grad)
    xr = x.detach().double().requires_grad_()
    (gxr,) = torch.autograd.grad(gem_reference(xr, p.double(), eps), xr, grad.double())
    assert_close(gx, gxr, dtype, grad=True)


# --- bad input ---------------------------------------------------------------------------------

def test_device_mismatch_names_argument():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="expected p on the same device as x"):
        fgreid_ops.gem(x, torch.tensor([3.0], device="meta"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        fgreid_ops.gem(torch.rand(1, 1, 2, 2), 3.0, backend="fortran")


def test_nan_propagates():
    x = torch.rand(1, 2, 3, 3)
    x[0, 1, 1, 1] = float("nan")
    for backend in ["cpu"] + (["triton"] if fgreid_ops._backend.triton_available("cpu") else []):
        out = fgreid_ops.gem(x, 3.0, backend=backend)
        assert torch.isnan(out[0, 1]) and not torch.isnan(out[0, 0])


# --- module and fast-reid compatibility ---------------------------------------------------------

def test_module_loads_fast_reid_state_dict():
    module = GeM()
    module.load_state_dict({"p": torch.tensor([3.0])})
    assert list(module.state_dict()) == ["p"] and module.p.shape == (1,)
    x = torch.rand(2, 8, 6, 4)
    fast_reid = F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(3.0), 1).pow(1.0 / 3.0)
    torch.testing.assert_close(module(x), fast_reid.flatten(1))
    torch.testing.assert_close(GeM(flatten=False)(x), fast_reid)


def test_module_learn_p_and_reference_switch():
    module = GeM(p=2.5, learn_p=False)
    assert not module.p.requires_grad
    x = torch.rand(2, 3, 4, 4)
    with fgreid_ops.use_reference():
        ref = module(x)
    torch.testing.assert_close(module(x), ref)
