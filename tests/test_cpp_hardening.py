"""Regression tests of the C++ kernels against hostile calls of the registered ops: argument checks
of forward and backward ops (calls that crashed run in a subprocess), aliased arguments, long
reductions against float64, the triplet miner's self-reference and inf handling, and results that
do not depend on ATen's CPU capability."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fgreid_ops
from fgreid_ops.reference.batch_hard_triplet import batch_hard_triplet_reference

from helpers import requires_cuda

ops = torch.ops.fgreid
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code, **env):
    """Runs code in a fresh interpreter (a crash there does not take pytest down)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )


# --- calls that crashed the process -------------------------------------------------------------

def test_calls_that_crashed_raise_in_a_subprocess():
    result = _run_python("""
        import torch, fgreid_ops
        ops = torch.ops.fgreid
        cases = {
            "gem_backward": lambda: ops.gem_backward(
                torch.ones(1), torch.ones(1, 2**26, 1, 1), torch.tensor([3.0]), 1e-6, False),
            "triplet_backward_empty_ref": lambda: ops.batch_hard_triplet_mine_backward(
                torch.ones(3), torch.ones(3), torch.rand(3, 4), torch.rand(0, 4), torch.full((3,), -1),
                torch.full((3,), -1), torch.zeros(3), torch.zeros(3), "euclidean", True),
        }
        for name, call in cases.items():
            try:
                out = call()
                print(name, "returned", [tuple(t.shape) for t in out])
            except (ValueError, TypeError, RuntimeError) as e:
                print(name, "raised", str(e).splitlines()[0])
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gem_backward raised fgreid_ops.gem: expected grad_out of shape [N, C]=[1, 67108864]" in result.stdout
    # every index is -1: no row of the empty ref_emb is read; the gradients are zero
    assert "triplet_backward_empty_ref returned [(3, 4), (0, 4)]" in result.stdout


def test_triplet_backward_with_no_pairs_gives_zero_gradients():
    emb = torch.rand(3, 4)
    emb[0, 0] = float("inf")  # a missing pair contributes nothing, not 0 * inf
    none = torch.full((3,), -1)
    grad_emb, grad_ref = ops.batch_hard_triplet_mine_backward(
        torch.ones(3), torch.ones(3), emb, torch.rand(2, 4), none, none, torch.zeros(3), torch.zeros(3),
        "euclidean", True)
    assert torch.equal(grad_emb, torch.zeros(3, 4))
    assert torch.equal(grad_ref, torch.zeros(2, 4))


def _triplet_backward_args(**change):
    args = dict(grad_d_ap=torch.ones(3), grad_d_an=torch.ones(3), emb=torch.rand(3, 4), ref_emb=torch.rand(5, 4),
                idx_p=torch.tensor([0, 1, 2]), idx_n=torch.tensor([3, 4, -1]), d_ap=torch.ones(3),
                d_an=torch.ones(3), distance="euclidean", need_ref_grad=True)
    args.update(change)
    return tuple(args.values())


def _gem_backward_args(**change):
    args = dict(grad_out=torch.ones(2, 3), x=torch.rand(2, 3, 4, 4), p=torch.tensor([3.0]), eps=1e-6,
                need_grad_p=True)
    args.update(change)
    return tuple(args.values())


def _mask_backward_args(**change):
    args = dict(grad_out=torch.ones(2, 3, 4, 4), feat=torch.rand(2, 3, 4, 4), mask=torch.rand(2, 1, 2, 2),
                mode="bilinear", pool=False, need_grad_feat=True, need_grad_mask=True)
    args.update(change)
    return tuple(args.values())


BAD_BACKWARD_CALLS = [
    (ops.gem_backward, _gem_backward_args(grad_out=torch.ones(2, 2)), ValueError,
     r"fgreid_ops.gem: expected grad_out of shape \[N, C\]=\[2, 3\], got \[2, 2\]"),
    (ops.gem_backward, _gem_backward_args(grad_out=torch.ones(6)), ValueError, "expected grad_out of shape"),
    (ops.gem_backward, _gem_backward_args(grad_out=torch.ones(2, 3, dtype=torch.int64)), TypeError,
     "fgreid_ops.gem: expected grad_out to be float32"),
    (ops.gem_backward, _gem_backward_args(eps=-1.0), ValueError, "fgreid_ops.gem: expected eps > 0"),
    (ops.mask_upsample_mul_backward, _mask_backward_args(grad_out=torch.ones(2, 3, 4, 5)), ValueError,
     "fgreid_ops.mask_upsample_mul: expected grad_out of shape"),
    (ops.mask_upsample_mul_backward, _mask_backward_args(grad_out=torch.ones(2, 3, 4, 4, dtype=torch.int32)),
     TypeError, "fgreid_ops.mask_upsample_mul: expected grad_out to be float32"),
    (ops.mask_upsample_mul_backward, _mask_backward_args(mode="area"), ValueError, "expected mode to be one of"),
    (ops.topk_mask_backward, (torch.ones(2, 3, 4, 4), torch.ones(2, 1, 4, 5)), ValueError,
     "fgreid_ops.topk_mask_backward: expected mask of shape"),
    (ops.off_segment_backward, (torch.ones(1, 1, 3, 2, 2), 2**62), ValueError,
     r"fgreid_ops.off: expected stride <= \d+ \(grad_x of T = 1 \+ stride frames under 2\^48 bytes\)"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(idx_p=torch.tensor([0, 5, 1])), ValueError,
     r"fgreid_ops.batch_hard_triplet: expected idx_p in \[-1, M\)=\[-1, 5\) .*got 5 at 1"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(idx_n=torch.tensor([0, -2, 1])), ValueError,
     "expected idx_n in"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(idx_p=torch.tensor([0, 1, 2], dtype=torch.int32)),
     TypeError, "expected idx_p to be int64"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(grad_d_ap=torch.ones(4)), ValueError,
     r"expected grad_d_ap of shape \[3\]"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(d_an=torch.ones(3, dtype=torch.int64)),
     TypeError, "expected d_an to be float32"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(ref_emb=torch.rand(5, 4, dtype=torch.float64)),
     TypeError, "expected ref_emb to have the same dtype as emb"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(ref_emb=torch.rand(5, 3)), ValueError,
     "expected ref_emb of width D=4"),
    (ops.batch_hard_triplet_mine_backward, _triplet_backward_args(distance="l1"), ValueError,
     "expected distance to be one of"),
]


@pytest.mark.parametrize("op,args,error,message", BAD_BACKWARD_CALLS)
def test_backward_ops_check_their_arguments(op, args, error, message):
    with pytest.raises(error, match=message):
        op(*args)


def _evaluate_count_args():
    dist = torch.rand(2, 4)
    q_pids, g_pids = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    offsets, index = ops.evaluate_matches(q_pids, g_pids, torch.tensor([0, 0]), torch.tensor([1, 1, 1, 1]), None)
    match_dist = torch.stack([dist[i, index[offsets[i]:offsets[i + 1]]] for i in range(2)]).flatten()
    return dist, q_pids, g_pids, offsets, index, match_dist


def test_evaluate_count_rejects_counts_that_alias_an_input():
    dist, q_pids, g_pids, offsets, index, match_dist = _evaluate_count_args()
    with pytest.raises(ValueError, match="fgreid_ops.evaluate_count: expected counts .* not to share memory with "
                                         "match_index"):
        ops.evaluate_count(dist, q_pids, g_pids, 0, offsets, index, match_dist, None, index)
    with pytest.raises(ValueError, match="expected g_start in"):
        ops.evaluate_count(dist, q_pids, g_pids, 2**63 - 2, offsets, index, match_dist, None,
                           torch.zeros_like(index))


def test_evaluate_finalize_rejects_negative_counts():
    _, _, _, offsets, index, match_dist = _evaluate_count_args()
    with pytest.raises(ValueError, match="fgreid_ops.evaluate_finalize: expected counts >= 0, got -3 at 1"):
        ops.evaluate_finalize(offsets, index, match_dist, torch.tensor([0, -3, 0, 0]))


# A meta tensor among CPU ones sends the call to the op's fake (the Meta kernel outranks CPU in the
# dispatcher), so the C++ checks never run: the fakes in fgreid_ops/ops must check the devices.
@pytest.mark.parametrize("call", [
    lambda: ops.gem_backward(*_gem_backward_args(grad_out=torch.ones(2, 3, device="meta"))),
    lambda: ops.mask_upsample_mul_backward(*_mask_backward_args(grad_out=torch.ones(2, 3, 4, 4, device="meta"))),
], ids=["gem_backward", "mask_upsample_mul_backward"])
def test_meta_grad_mixed_with_cpu_inputs_raises(call):
    with pytest.raises((ValueError, RuntimeError), match="expected grad_out on the same device as"):
        call()


# --- aliasing ------------------------------------------------------------------------------------

def test_aliased_arguments_give_the_result_of_copies():
    a = torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(ops.off(a, a), ops.off(a, a.clone()), rtol=0, atol=0)
    feat = torch.rand(2, 3, 8, 8)
    mask = feat[:, :1, ::2, ::2]  # a view of feat's storage
    for pool in (False, True):
        torch.testing.assert_close(ops.mask_upsample_mul(feat, mask, "bilinear", pool),
                                   ops.mask_upsample_mul(feat, mask.clone(), "bilinear", pool), rtol=0, atol=0)
    f = torch.rand(2, 3, 4, 4)
    out, m = ops.topk_mask(f, f, 3)
    out_c, m_c = ops.topk_mask(f, f.clone(), 3)
    assert torch.equal(out, out_c) and torch.equal(m, m_c)
    emb = torch.rand(40, 8)
    labels = torch.arange(40) % 5
    same = ops.batch_hard_triplet_mine(emb, labels, emb, labels, "euclidean")
    copy = ops.batch_hard_triplet_mine(emb, labels, emb.clone(), labels.clone(), "euclidean")
    for s, c in zip(same, copy):
        torch.testing.assert_close(s, c, rtol=1e-6, atol=1e-6)


# --- batch-hard triplet ----------------------------------------------------------------------------

def test_triplet_same_ref_emb_with_other_ref_labels_is_not_self_reference():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(200, 32, generator=g)
    labels = torch.randint(0, 20, (200,), generator=g)
    ref_labels = torch.randint(0, 20, (200,), generator=g)
    got, ip, iN = fgreid_ops.batch_hard_triplet(emb, labels, ref_emb=emb, ref_labels=ref_labels,
                                                return_indices=True, backend="cpu")
    want, wip, win = batch_hard_triplet_reference(emb, labels, ref_emb=emb, ref_labels=ref_labels,
                                                  return_indices=True)
    assert torch.equal(ip, wip) and torch.equal(iN, win)
    # The kernel's selected distances are |a - b| (exactly 1e-6 for an anchor paired with its own
    # row, which is a negative wherever ref_labels differ), the reference's sqrt(|a|^2 + |b|^2 -
    # 2 a.b) with its cancellation: the losses agree to that rounding (the bug was 1.3% off).
    torch.testing.assert_close(got, want, rtol=5e-4, atol=0)
    # the same labels as another tensor object: still the self-referenced batch
    got_self = fgreid_ops.batch_hard_triplet(emb, labels, ref_emb=emb, ref_labels=labels.clone(), backend="cpu")
    torch.testing.assert_close(got_self, batch_hard_triplet_reference(emb, labels), rtol=1e-5, atol=1e-5)


def test_triplet_inf_embedding_gives_nan_like_the_reference():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(16, 8, generator=g)
    labels = torch.arange(16) % 4
    emb[3, 2] = float("inf")
    got = fgreid_ops.batch_hard_triplet(emb, labels, reduction="none", backend="cpu")
    want = batch_hard_triplet_reference(emb, labels, reduction="none")
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got.isnan().sum() > 1  # other anchors, which mine row 3 as a NaN pair, are NaN too


# --- long reductions ---------------------------------------------------------------------------------

LONG = 2**26


def _gem_float64(x, p, eps=1e-6):
    """GeM of each (n, c) row in float64, in chunks (x is large)."""
    rows = x.flatten(2)
    total = torch.zeros(rows.shape[:2], dtype=torch.float64)
    for chunk in rows.split(2**22, dim=2):
        total += chunk.double().clamp_min(eps).pow(p).sum(2)
    return (total / rows.shape[2]) ** (1 / p)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gem_over_a_long_row_keeps_float32_accuracy(layout):
    g = torch.Generator().manual_seed(0)
    # float32 in and out: one running float32 sum per vector lane was 3e-4 off here, 9% for
    # channels_last (one sum per channel); the pairwise sums are ~1e-7 off.
    if layout == "contiguous":
        x = torch.rand(1, 1, 2**13, 2**13, generator=g) * 0.2 + 0.6
    else:  # channels_last walks positions, summing per channel
        x = torch.rand(1, 2, 2**12, 2**13, generator=g) * 0.2 + 0.6
        x = x.contiguous(memory_format=torch.channels_last)
    assert x.numel() == LONG
    p = torch.tensor([3.0])
    y = ops.gem(x, p, 1e-6)
    torch.testing.assert_close(y.double(), _gem_float64(x, 3.0), rtol=1e-5, atol=0)
    # the backward's two sums, s and sum t log x, both enter grad_p (whose two terms nearly cancel)
    _, grad_p_rows = ops.gem_backward(torch.ones_like(y), x, p, 1e-6, True)
    rows = x.flatten(2)
    s = torch.zeros(rows.shape[:2], dtype=torch.float64)
    s_log = torch.zeros_like(s)
    for chunk in rows.split(2**22, dim=2):
        v = chunk.double().clamp_min(1e-6)
        s += v.pow(3).sum(2)
        s_log += (v.pow(3) * v.log()).sum(2)
    m = s / rows.shape[2]
    grad_p64 = m ** (1 / 3) * (-m.log() / 9 + s_log / (3 * s))
    torch.testing.assert_close(grad_p_rows.double(), grad_p64, rtol=1e-3, atol=0)


def test_mask_upsample_mul_pool_over_a_long_plane_keeps_float32_accuracy():
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(1, 1, 2**13, 2**13, generator=g) * 0.2 + 0.6
    mask = torch.full((1, 1, 4, 4), 0.75)  # upsamples to 0.75 everywhere
    got = ops.mask_upsample_mul(feat, mask, "bilinear", True)
    want = sum(chunk.double().sum() for chunk in feat.flatten().split(2**22)) / feat.numel() * 0.75
    torch.testing.assert_close(got.double().flatten(), want.reshape(1), rtol=1e-5, atol=0)


# The adjoint of the upsampling sums, per mask cell, over the channels that share the mask and
# over the feat cells that read the cell: with a 1 x 1 mask, grad_mask is sum(grad_out * feat), one
# sum of 2^26 terms (one float32 running sum of them stops growing at 2^24 times a term).
@pytest.mark.parametrize("feat_shape, mask_channels, mode", [
    ((1, LONG, 1, 1), 1, "nearest"),          # over channels (a shared mask)
    ((1, 1, 1, LONG), 1, "bilinear"),         # along one row (the x-adjoint)
    ((1, 1, LONG, 1), 1, "nearest"),          # along one column (the y-adjoint)
    ((1, 2, LONG // 2, 1), 2, "bilinear"),    # a mask per channel: the y-adjoint of each plane
])
def test_mask_upsample_mul_grad_mask_over_long_sums_keeps_float32_accuracy(feat_shape, mask_channels, mode):
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(feat_shape, generator=g) * 0.2 + 0.6
    mask = torch.full((1, mask_channels, 1, 1), 0.5)
    grad_out = torch.ones(1, 1, 1, 1).expand(feat_shape)  # read in place, one value per plane
    _, grad_mask = ops.mask_upsample_mul_backward(grad_out, feat, mask, mode, False, False, True)
    planes = feat.flatten(2) if mask_channels > 1 else feat.flatten(1)[:, None]
    want = sum(chunk.double().sum(-1) for chunk in planes.split(2**22, dim=-1))
    torch.testing.assert_close(grad_mask.double().flatten(), want.flatten(), rtol=1e-5, atol=0)


def test_mask_upsample_mul_grad_mask_over_long_channels_with_a_dense_grad():
    g = torch.Generator().manual_seed(1)
    feat = torch.rand(1, 2**24, 2, 2, generator=g) * 0.2 + 0.6
    grad_out = torch.rand(feat.shape, generator=g) * 0.2 + 0.6
    _, grad_mask = ops.mask_upsample_mul_backward(grad_out, feat, torch.full((1, 1, 1, 1), 0.5), "nearest", False,
                                                  False, True)
    want = sum((gc.double() * fc.double()).sum() for gc, fc in zip(grad_out.split(2**20, 1), feat.split(2**20, 1)))
    torch.testing.assert_close(grad_mask.double().flatten(), want.reshape(1), rtol=1e-5, atol=0)


def test_triplet_distance_over_a_long_embedding_keeps_float32_accuracy():
    g = torch.Generator().manual_seed(0)
    emb = torch.rand(1, LONG, generator=g) + 1.0
    ref = torch.rand(1, LONG, generator=g)
    labels, ref_labels = torch.tensor([0]), torch.tensor([1])
    for distance in ("sqeuclidean", "euclidean"):
        _, d_an, _, idx_n = ops.batch_hard_triplet_mine(emb, labels, ref, ref_labels, distance)
        assert idx_n.tolist() == [0]
        sq = sum((a.double() - b.double()).pow(2).sum() for a, b in zip(emb.split(2**22, 1), ref.split(2**22, 1)))
        want = sq if distance == "sqeuclidean" else sq.sqrt()
        torch.testing.assert_close(d_an.double(), want.reshape(1), rtol=1e-5, atol=0)


def test_topk_mask_pooled_selects_as_unpooled_over_long_channels():
    # A = sum over 2^24 channels per position; the pooled kernel sums the channel chunks in the
    # unpooled kernel's pairwise order, so both keep the same positions (position 3 is largest by
    # a relative 1e-4 in float64, which a running sum of the chunks could lose)
    g = torch.Generator().manual_seed(0)
    f1 = torch.rand(1, 2**24, 2, 2, generator=g) * 0.2 + 0.6
    f1[:, :, 1, 1] += 0.7 * 1e-4 + (f1[:, :, 0, 0].double().mean() - f1[:, :, 1, 1].double().mean()).float()
    a = sum(chunk.double().sum(1) for chunk in f1.split(2**20, 1)).flatten()
    assert a.argmax().item() == 3
    _, mask = ops.topk_mask(f1, f1, 1, False)
    _, pooled_mask = ops.topk_mask(f1, f1, 1, True)
    assert mask.flatten().tolist() == [1, 1, 1, 0]
    assert torch.equal(pooled_mask, mask)


# The same long sums on the GPU kernels (CUDA C++ and Triton; bench/gpu_check.py runs them): the
# Triton interpreter is too slow for 2^26 terms on CPU.
GPU_BACKENDS = [pytest.param(b, marks=[requires_cuda, pytest.mark.cuda]) for b in ("cuda", "triton")]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gem_over_a_long_row_keeps_float32_accuracy_on_gpu(backend):
    x = torch.rand(1, 1, 2**13, 2**13, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.6
    y = fgreid_ops.gem(x.cuda(), 3.0, backend=backend)
    torch.testing.assert_close(y.double().cpu().flatten(), _gem_float64(x, 3.0).flatten(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_topk_mask_pooled_mean_over_a_long_plane_on_gpu(backend):
    # one channel, k = H W: the pooled output is the plane's mean, one sum of 2^26 terms
    f = torch.rand(1, 1, 2**13, 2**13, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.6
    op = ops.topk_mask if backend == "cuda" else ops.topk_mask_triton
    pooled, _ = op(f.cuda(), f.cuda(), LONG, True)
    want = sum(chunk.double().sum() for chunk in f.flatten().split(2**22)) / LONG
    torch.testing.assert_close(pooled.double().cpu().flatten(), want.reshape(1), rtol=1e-5, atol=0)


@pytest.mark.cuda
@requires_cuda
def test_mask_upsample_mul_grad_mask_over_long_channels_on_gpu():
    feat = torch.rand(1, LONG, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.6
    grad_out = torch.ones(1, 1, 1, 1).expand(feat.shape)
    _, grad_mask = ops.mask_upsample_mul_backward(grad_out.cuda(), feat.cuda(), torch.full((1, 1, 1, 1), 0.5).cuda(),
                                                  "nearest", False, False, True)
    want = sum(chunk.double().sum() for chunk in feat.flatten().split(2**22))
    torch.testing.assert_close(grad_mask.double().cpu().flatten(), want.reshape(1), rtol=1e-5, atol=0)


@pytest.mark.cuda
@requires_cuda
def test_triplet_distance_over_a_long_embedding_on_triton_gpu():
    g = torch.Generator().manual_seed(0)
    emb, ref = torch.rand(1, LONG, generator=g) + 1.0, torch.rand(1, LONG, generator=g)
    _, d_an, _, idx_n = ops.batch_hard_triplet_mine_triton(emb.cuda(), torch.tensor([0]).cuda(), ref.cuda(),
                                                           torch.tensor([1]).cuda(), "sqeuclidean")
    assert idx_n.tolist() == [0]
    want = sum((a.double() - b.double()).pow(2).sum() for a, b in zip(emb.split(2**22, 1), ref.split(2**22, 1)))
    torch.testing.assert_close(d_an.double().cpu(), want.reshape(1), rtol=1e-5, atol=0)


# --- independence of ATen's CPU capability -------------------------------------------------------------

_CAPABILITY_SCRIPT = """
    import hashlib, torch, fgreid_ops
    ops = torch.ops.fgreid
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 37, 9, 11, generator=g)
    cl = x.contiguous(memory_format=torch.channels_last)
    p = torch.tensor([3.0])
    emb = torch.randn(70, 16, generator=g)
    labels = torch.arange(70) % 7
    outs = {
        "gem": ops.gem(x, p, 1e-6), "gem_cl": ops.gem(cl, p, 1e-6),
        "gem_backward": ops.gem_backward(torch.ones(2, 37), x, p, 1e-6, True)[0],
        "off": ops.off(x, x.flip(0)), "off_backward": ops.off_backward(torch.rand(2, 36, 9, 11, generator=g)),
        "mask": ops.mask_upsample_mul(x, torch.rand(2, 1, 3, 4, generator=g), "bilinear", False),
        "mask_pool": ops.mask_upsample_mul(x, torch.rand(2, 37, 3, 4, generator=g), "nearest", True),
        "mask_backward": ops.mask_upsample_mul_backward(torch.rand(2, 37, 9, 11, generator=g), x,
                                                        torch.rand(2, 1, 3, 4, generator=g), "bilinear", False,
                                                        True, True)[1],
        "topk": ops.topk_mask(x, x, 7)[1], "topk_cl": ops.topk_mask(cl, cl, 7)[1],
        "triplet": torch.cat([t.double() for t in ops.batch_hard_triplet_mine(emb, labels, emb, labels, "euclidean")]),
        "evaluate": torch.cat(ops.evaluate(torch.rand(5, 30, generator=g), torch.arange(5) % 3, torch.arange(30) % 3,
                                           torch.zeros(5, dtype=torch.long), torch.ones(30, dtype=torch.long),
                                           None)[1:]),
    }
    torch.save(outs, OUT)
"""


def test_kernel_results_do_not_depend_on_the_aten_cpu_capability(tmp_path):
    results = {}
    for capability in ("default", "avx2"):
        out = tmp_path / f"{capability}.pt"
        run = _run_python(f"OUT = {str(out)!r}\n" + textwrap.dedent(_CAPABILITY_SCRIPT),
                          ATEN_CPU_CAPABILITY=capability)
        assert run.returncode == 0, run.stderr[-2000:]
        results[capability] = torch.load(out)
    for name, value in results["default"].items():
        other = results["avx2"][name]
        if value.dtype in (torch.int64, torch.bool) or name.startswith("topk"):
            assert torch.equal(value, other), name  # selections and indices: exactly the same
        else:
            torch.testing.assert_close(value, other, rtol=1e-6, atol=1e-6, msg=name)
