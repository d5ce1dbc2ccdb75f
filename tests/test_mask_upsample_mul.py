import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import fgreid_ops
from fgreid_ops.ops.mask_upsample_mul import MASK_UPSAMPLE_MUL
from fgreid_ops.reference import mask_upsample_mul_reference

from op_battery import OpTester
from grad_layouts import GRAD_LAYOUTS, copies_of_shape, grad_like
from helpers import DTYPES, LAYOUTS, assert_close, kernel_backends, to_layout

# This op has C++ kernels only (CPU and CUDA); there is no Triton variant.
BACKENDS = [b for b in kernel_backends() if b.values[0] != "triton"]
MODES = ["bilinear", "nearest"]
# (H, W, h, w): mask upsampled, downsampled, and up along one axis / down along the other.
SIZES = [(6, 5, 3, 2), (4, 3, 9, 7), (5, 8, 5, 3)]


def make_inputs(N, C, H, W, h, w, per_channel, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype).to(device)
    mask = torch.rand(N, C if per_channel else 1, h, w, generator=g, dtype=torch.float64).to(dtype).to(device)
    return feat, mask


def expected(feat, mask, mode, pool):
    return mask_upsample_mul_reference(feat.double(), mask.double(), mode, pool).to(feat.dtype)


def interpolate(mask, size, mode):
    return F.interpolate(mask, size=size, mode=mode, align_corners=False if mode == "bilinear" else None)


# --- reference: known values -------------------------------------------------------------------

def test_reference_known_values():
    mask = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    feat = torch.ones(1, 2, 4, 4)
    nearest = mask.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).expand(1, 2, 4, 4)
    torch.testing.assert_close(mask_upsample_mul_reference(feat, mask, "nearest"), nearest)
    # bilinear, align_corners=False: src = (x + 0.5) / 2 - 0.5, clamped at 0 -> weights on [0, 1]
    row = mask_upsample_mul_reference(torch.ones(1, 1, 1, 4), torch.tensor([[[[0.0, 1.0]]]]))
    torch.testing.assert_close(row, torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))
    # a constant mask scales, and pool takes the spatial mean
    feat = torch.arange(24.0).reshape(1, 2, 3, 4)
    out = mask_upsample_mul_reference(feat, torch.full((1, 1, 2, 2), 0.5), pool=True)
    torch.testing.assert_close(out, 0.5 * feat.mean(dim=(2, 3)))


def test_reference_is_interpolate_times_feat():
    feat, mask = make_inputs(2, 3, 7, 5, 3, 4, True, torch.float64, "cpu")
    for mode in MODES:
        torch.testing.assert_close(mask_upsample_mul_reference(feat, mask, mode), feat * interpolate(mask, (7, 5), mode))


# --- kernels vs reference ----------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["mask1", "maskC"])
@pytest.mark.parametrize("pool", [False, True], ids=["map", "pool"])
def test_forward_non_contiguous(backend, device, layout, per_channel, pool):
    feat, mask = make_inputs(2, 4, 6, 5, 3, 4, per_channel, torch.float32, device)
    feat = to_layout(feat, layout)
    mask = to_layout(mask, "strided")
    out = fgreid_ops.mask_upsample_mul(feat, mask, "bilinear", pool, backend=backend)
    assert_close(out, expected(feat, mask, "bilinear", pool), torch.float32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("C", [5, 16])  # 16: ATen's vector loop over channels (8 or 16 lanes)
@pytest.mark.parametrize("mask_layout", ["mask1", "maskC", "maskC-channels_last"])
@pytest.mark.parametrize("size", [(112, 112, 14, 14), (56, 80, 7, 7), (100, 60, 14, 14), (6, 5, 3, 2), (4, 3, 9, 7),
                                  (56, 56, 7, 7)], ids=str)
def test_upsampled_mask_equals_interpolate_fp32(mode, C, mask_layout, size):
    """With feat = 1 the output is the upsampled mask itself. Nearest is a gather: bit-exact.
    Bilinear uses ATen's indices and weights and follows its CPU kernel's choice of formula (x then
    y blends, or the four-tap sum for H + W <= 128 or a channels_last mask of > 3 channels, in the
    order of its scalar or vector loop); with the same FMA contraction as ATen's AVX2 build the
    fp32 result is bit-identical (asserted where ATen runs its AVX2 kernels); elsewhere within 2 ulp."""
    H, W, h, w = size
    _, mask = make_inputs(2, C, H, W, h, w, mask_layout != "mask1", torch.float32, "cpu")
    if mask_layout == "maskC-channels_last":
        mask = mask.contiguous(memory_format=torch.channels_last)
    out = fgreid_ops.mask_upsample_mul(torch.ones(2, C, H, W), mask, mode, backend="cpu")
    want = interpolate(mask, (H, W), mode).expand(2, C, H, W)
    if mode == "nearest" or torch.backends.cpu.get_cpu_capability() == "AVX2":
        assert torch.equal(out, want)
    else:
        # another association of the blends (ATen's scalar or AVX-512 loops) differs by a few ulp
        # of the blended values, not of the result: absolute, scaled by the mask's magnitude
        ulp = torch.finfo(torch.float32).eps * float(mask.abs().max())
        torch.testing.assert_close(out, want, rtol=2.5e-7, atol=4 * ulp)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["mask1", "maskC"])
@pytest.mark.parametrize("wrt", ["feat", "mask"])
def test_gradient_to_one_input(backend, device, per_channel, wrt):
    feat, mask = make_inputs(2, 3, 5, 4, 3, 3, per_channel, torch.float32, device)
    target = feat if wrt == "feat" else mask
    target.requires_grad_()
    (got,) = torch.autograd.grad(fgreid_ops.mask_upsample_mul(feat, mask, backend=backend).sum(), target)
    (want,) = torch.autograd.grad(mask_upsample_mul_reference(feat, mask).sum(), target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True], ids=["mask1", "maskC"])
@pytest.mark.parametrize("pool", [False, True], ids=["map", "pool"])
def test_mask_gradient_is_deterministic(per_channel, pool):
    """The mask gradient sums over channels, x and y in a fixed order whatever the thread count."""
    feat, mask = make_inputs(3, 40, 33, 47, 7, 7, per_channel, torch.float32, "cpu")
    grad = torch.randn((3, 40) if pool else (3, 40, 33, 47))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(torch.ops.fgreid.mask_upsample_mul_backward(grad, feat, mask, "bilinear", pool, True, True))
    finally:
        torch.set_num_threads(threads)
    for gf, gm in results[1:]:
        assert torch.equal(gf, results[0][0]) and torch.equal(gm, results[0][1])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["mask1", "maskC"])
@pytest.mark.parametrize("pool", [False, True], ids=["map", "pool"])
def test_opcheck_modes_and_pool(backend, device, per_channel, pool):
    feat, mask = make_inputs(2, 3, 5, 4, 3, 2, per_channel, torch.float32, device)
    op = torch.ops.fgreid.mask_upsample_mul
    torch.library.opcheck(op, (feat, mask, "bilinear", pool))
    torch.library.opcheck(op, (to_layout(feat, "channels_last"), mask, "nearest", pool))
    torch.library.opcheck(op, (feat.clone().requires_grad_(), mask.clone().requires_grad_(), "bilinear", pool))
    grad = torch.rand((2, 3) if pool else (2, 3, 5, 4), device=device)
    backward = torch.ops.fgreid.mask_upsample_mul_backward
    for need in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(backward, (grad, feat, mask, "bilinear", pool, *need))


@given(
    n=st.integers(1, 3), c=st.integers(1, 6), H=st.integers(1, 12), W=st.integers(1, 12),
    h=st.integers(1, 12), w=st.integers(1, 12), per_channel=st.booleans(), mode=st.sampled_from(MODES),
    pool=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_hypothesis_sizes_modes_pool(backend, device, n, c, H, W, h, w, per_channel, mode, pool, dtype, layout, seed):
    feat, mask = make_inputs(n, c, H, W, h, w, per_channel, dtype, device, seed=seed)
    feat = to_layout(feat, layout).requires_grad_()
    mask.requires_grad_()
    out = fgreid_ops.mask_upsample_mul(feat, mask, mode, pool, backend=backend)
    assert_close(out, expected(feat.detach(), mask.detach(), mode, pool), dtype)
    grad = torch.ones_like(out)
    gf, gm = torch.autograd.grad(out, (feat, mask), grad)
    fr = feat.detach().double().requires_grad_()
    mr = mask.detach().double().requires_grad_()
    gfr, gmr = torch.autograd.grad(mask_upsample_mul_reference(fr, mr, mode, pool), (fr, mr), grad.double())
    assert_close(gf, gfr, dtype, grad=True)
    assert_close(gm, gmr, dtype, grad=True)


# A per-channel mask with at least 16 float32 (8 float64) channels takes the CPU kernel's lane
# blocks on small planes (csrc/cpu/mask_upsample_mul.cpp, use_lane_blocks): 16 or 8 planes at a
# time, the channels left over one by one; each plane's result must be the one-by-one path's.
LANE_SIZES = [(7, 7, 14, 14), (28, 28, 14, 14), *SIZES, (1, 4096, 1, 1)]  # the last: 8192 x-taps per cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pool", [False, True], ids=["map", "pool"])
@pytest.mark.parametrize("size", LANE_SIZES, ids=str)
def test_cpu_lane_blocks_forward_backward_match_one_plane_at_a_time(dtype, mode, pool, size):
    H, W, h, w = size
    C = 21  # one float32 lane block (two float64 ones), then 5 channels one by one
    feat, mask = make_inputs(2, C, H, W, h, w, True, dtype, "cpu")
    feat = feat.abs()  # positive terms: the long sums do not cancel, so the float64 comparison stays tight
    mask = mask.contiguous(memory_format=torch.channels_last)  # ATen's four-tap formula at every size
    grad = torch.rand((2, C) if pool else (2, C, H, W), generator=torch.Generator().manual_seed(1), dtype=dtype) + 0.5
    backward = torch.ops.fgreid.mask_upsample_mul_backward
    out = fgreid_ops.mask_upsample_mul(feat, mask, mode, pool, backend="cpu")
    grad_feat, grad_mask = backward(grad, feat, mask, mode, pool, True, True)
    fr, mr = feat.double().requires_grad_(), mask.double().requires_grad_()
    want = mask_upsample_mul_reference(fr, mr, mode, pool)
    grad_feat_want, grad_mask_want = torch.autograd.grad(want, (fr, mr), grad.double())
    assert_close(out, want.detach(), dtype)
    assert_close(grad_feat, grad_feat_want, dtype, grad=True)
    assert_close(grad_mask, grad_mask_want, dtype, grad=True)
    # 7 channels per call: all one by one. The mask gradient does not depend on the mask, nor
    # nearest on ATen's four-tap order (which follows the channel's place among C): bit for bit.
    chunks = [backward(grad[:, c:c + 7], feat[:, c:c + 7], mask[:, c:c + 7], mode, pool, True, True)
              for c in range(0, C, 7)]
    assert torch.equal(grad_mask, torch.cat([gm for _, gm in chunks], 1))
    if mode == "nearest":
        assert torch.equal(grad_feat, torch.cat([gf for gf, _ in chunks], 1))
        parts = [fgreid_ops.mask_upsample_mul(feat[:, c:c + 7], mask[:, c:c + 7], mode, pool) for c in range(0, C, 7)]
        assert torch.equal(out, torch.cat(parts, 1))


# --- bad input ---------------------------------------------------------------------------------

def _inputs(feat_shape=(2, 3, 4, 4), mask_shape=(2, 1, 2, 2), mode="bilinear", feat_dtype=torch.float32,
            mask_dtype=torch.float32):
    return torch.ones(feat_shape, dtype=feat_dtype), torch.ones(mask_shape, dtype=mask_dtype), mode


MASK_SHAPE = "mask of shape [N, 1, h, w] or [N, C, h, w] with N=2, C=3"
BAD_INPUTS = [
    ("feat to be 4-D", lambda: _inputs(feat_shape=(2, 3, 4)), ValueError),
    ("mask to be 4-D", lambda: _inputs(mask_shape=(2, 2, 2)), ValueError),
    ("feat to be float32", lambda: _inputs(feat_dtype=torch.int64, mask_dtype=torch.int64), TypeError),
    ("mask to have the same dtype as feat", lambda: _inputs(mask_dtype=torch.float64), TypeError),
    ("mode to be one of ['bilinear', 'nearest'], got 'bicubic'", lambda: _inputs(mode="bicubic"), ValueError),
    ("mode to be one of", lambda: _inputs(mode="nearest-exact"), ValueError),
    (MASK_SHAPE, lambda: _inputs(mask_shape=(2, 2, 2, 2)), ValueError),  # channels neither 1 nor C
    (MASK_SHAPE, lambda: _inputs(mask_shape=(3, 1, 2, 2)), ValueError),  # batch mismatch
    ("feat to have a non-empty batch", lambda: _inputs(feat_shape=(0, 3, 4, 4), mask_shape=(0, 1, 2, 2)), ValueError),
    ("feat to be non-empty", lambda: _inputs(feat_shape=(2, 3, 0, 4)), ValueError),
    ("mask to be non-empty", lambda: _inputs(mask_shape=(2, 1, 2, 0)), ValueError),
    ("feat to be a torch.Tensor", lambda: ([[1.0]], torch.ones(2, 1, 2, 2), "bilinear"), TypeError),
    ("mask to be a torch.Tensor", lambda: (torch.ones(2, 3, 4, 4), 0.5, "bilinear"), TypeError),
]
TENSOR_ONLY = [row for row in BAD_INPUTS if "torch.Tensor" not in row[0]]


def _pattern(message):
    return "fgreid_ops.mask_upsample_mul: expected " + re.escape(message)


@pytest.mark.parametrize("message,make,error", TENSOR_ONLY, ids=[f"{i}:{m[:30]}" for i, (m, _, _) in enumerate(TENSOR_ONLY)])
@pytest.mark.parametrize("pool", [False, True], ids=["map", "pool"])
def test_bad_input_raises_in_kernel_fake_and_backward(message, make, error, pool):
    feat, mask, mode = make()
    with pytest.raises(error, match=_pattern(message)):
        torch.ops.fgreid.mask_upsample_mul(feat, mask, mode, pool)  # the C++ checks
    with pytest.raises(error, match=_pattern(message)):
        torch.ops.fgreid.mask_upsample_mul(feat.to("meta"), mask.to("meta"), mode, pool)  # the fake
    grad = torch.ones(feat.shape[:2] if pool else feat.shape, dtype=feat.dtype)
    with pytest.raises(error, match=_pattern(message)):
        torch.ops.fgreid.mask_upsample_mul_backward(grad, feat, mask, mode, pool, True, True)


def test_backward_rejects_wrong_grad_shape():
    feat, mask, _ = _inputs()
    with pytest.raises(ValueError, match=re.escape("expected grad_out of shape [2, 3], got [2, 3, 4, 4]")):
        torch.ops.fgreid.mask_upsample_mul_backward(torch.ones(2, 3, 4, 4), feat, mask, "bilinear", True, True, True)
    with pytest.raises(ValueError, match=re.escape("expected grad_out of shape [2, 3, 4, 4], got [2, 3]")):
        torch.ops.fgreid.mask_upsample_mul_backward(torch.ones(2, 3), feat, mask, "bilinear", False, True, True)


def test_device_mismatch_names_argument():
    with pytest.raises(ValueError, match="expected mask on the same device as feat"):
        fgreid_ops.mask_upsample_mul(torch.rand(2, 3, 4, 4), torch.rand(2, 1, 2, 2, device="meta"))


def test_unknown_backend_and_no_triton():
    feat, mask, _ = _inputs()
    with pytest.raises(ValueError, match="backend"):
        fgreid_ops.mask_upsample_mul(feat, mask, backend="fortran")
    with pytest.raises((ValueError, RuntimeError), match="[Tt]riton"):
        fgreid_ops.mask_upsample_mul(feat, mask, backend="triton")


def test_nan_stays_local():
    feat, mask = make_inputs(1, 2, 8, 8, 4, 4, False, torch.float32, "cpu")
    feat[0, 1, 3, 3] = float("nan")
    out = fgreid_ops.mask_upsample_mul(feat, mask, pool=True)
    assert torch.isnan(out[0, 1]) and not torch.isnan(out[0, 0])


def test_reference_switch():
    feat, mask = make_inputs(2, 3, 6, 5, 3, 2, True, torch.float32, "cpu")
    with fgreid_ops.use_reference():
        ref = fgreid_ops.mask_upsample_mul(feat, mask, "nearest", True)
    torch.testing.assert_close(fgreid_ops.mask_upsample_mul(feat, mask, "nearest", True), ref)


# --- the generic battery (tests/op_battery.py) ---------------------------------------------------

def _case(mode, per_channel, pool, size):
    return f"{mode}-{'maskC' if per_channel else 'mask1'}-{'pool' if pool else 'map'}-{'x'.join(map(str, size))}"


def _parse(case):
    mode, mask, pool, size = case.split("-")
    return mode, mask == "maskC", pool == "pool", tuple(int(v) for v in size.split("x"))


CASES = [_case(m, pc, pool, size) for m in MODES for pc in (False, True) for pool in (False, True) for size in SIZES]


class TestMaskUpsampleMul(OpTester):
    op_def = MASK_UPSAMPLE_MUL
    backends = BACKENDS
    cases = CASES
    grad_cases = [c for c in CASES if _parse(c)[3] in SIZES[:2]]
    shape = (2, 3)  # N, C; H, W, h, w come from the case
    shapes = [(2, 3, 6, 5, 3, 3), (3, 3, 8, 4, 5, 2)]
    grad_inputs = (0, 1)
    bad_inputs = [(m, (lambda make=make: (*make(), False)), e) for m, make, e in BAD_INPUTS]
    kernel_checked = len(TENSOR_ONLY)  # the rows naming torch.Tensor come last

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        mode, per_channel, pool, size = _parse(case)
        if purpose == "gradcheck":  # small: upsampling, or downsampling a strided feat
            size = (4, 3, 3, 2) if size[0] >= size[2] else (3, 4, 5, 6)
            shape = (2, 2)
        if len(shape) == 6:  # the compile shapes: N, C, H, W, h, w
            shape, size = shape[:2], shape[2:]
        feat, mask = make_inputs(*shape, *size, per_channel, dtype, device, seed=seed)
        if purpose == "gradcheck" and size[0] == 3:
            feat = to_layout(feat, "strided")
        return feat, mask, mode, pool

    def backward_args(self, args, device):
        feat, mask, mode, pool = args
        feat, mask = feat.detach(), mask.detach()
        grad = torch.rand(tuple(feat.shape[:2]) if pool else tuple(feat.shape), device=device)
        return [(grad, feat, mask, mode, pool, *need) for need in [(True, True), (True, False), (False, True)]]

    def shape_strategy(self):
        return st.tuples(st.integers(1, 3), st.integers(1, 6))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["mask1", "maskC"])
@pytest.mark.parametrize("pool", [False, True], ids=["map", "pool"])
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
def test_backward_grad_layouts(backend, device, dtype, per_channel, pool, grad_layout):
    # the gradients the models send: GAP's and sum's expands, a broadcast, a permuted one
    H, W, h, w = SIZES[1]
    feat, mask = make_inputs(2, 3, H, W, h, w, per_channel, dtype, device)
    feat.requires_grad_()
    mask.requires_grad_()
    out = fgreid_ops.mask_upsample_mul(feat, mask, "bilinear", pool, backend=backend)
    grad = grad_like(out, grad_layout, torch.Generator().manual_seed(4))
    gf, gm = torch.autograd.grad(out, (feat, mask), grad)
    fr = feat.detach().double().requires_grad_()
    mr = mask.detach().double().requires_grad_()
    gfr, gmr = torch.autograd.grad(mask_upsample_mul_reference(fr, mr, "bilinear", pool), (fr, mr), grad.double())
    assert_close(gf, gfr, dtype, grad=True)
    assert_close(gm, gmr, dtype, grad=True)


def test_cpu_backward_does_not_copy_expanded_grads():
    H, W, h, w = SIZES[1]
    feat, mask = make_inputs(2, 3, H, W, h, w, False, torch.float32, "cpu")
    feat.requires_grad_()
    mask.requires_grad_()
    for pool in (False, True):
        out = fgreid_ops.mask_upsample_mul(feat, mask, "bilinear", pool, backend="cpu")
        for grad_layout in ["mean_expand", "sum_expand", "broadcast", "permuted"]:
            grad = grad_like(out, grad_layout)
            copies = copies_of_shape(lambda: torch.autograd.grad(out, (feat, mask), grad, retain_graph=True),
                                     "fgreid::mask_upsample_mul_backward", grad.shape)
            assert not copies, (pool, grad_layout, copies)
