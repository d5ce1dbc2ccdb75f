"""Batch-hard triplet loss (SPEC §5): the public function, the fakes and autograd of the mining op.

The registered op fgreid::batch_hard_triplet_mine (CPU C++) / _mine_triton (Triton) streams the
references, finds each anchor's hardest positive and negative and returns their distances and
indices, never the B×M distance matrix. Its backward op uses the saved indices: O(B·D) work,
reaching emb and ref_emb through the selected pairs only. The margin, the soft margin and the
reduction act on the [B] distance vectors in plain PyTorch."""

import torch
import torch.nn.functional as F

from .. import _backend
from .. import _checks as checks
from ._register import register_with_backward
from ..reference.batch_hard_triplet import batch_hard_triplet_reference

_OP = "batch_hard_triplet"
DISTANCES = ("euclidean", "sqeuclidean", "cosine")
REDUCTIONS = ("mean", "sum", "none")

# The GPU kernel is Triton; there is no CUDA C++ one.
_backend.GPU_DEFAULT.setdefault(_OP, "triton")


def _check_labels(arg, labels, emb_arg, emb):
    checks.check_tensor(_OP, arg, labels)
    checks.check_dim(_OP, arg, labels, 1, "(B,)")
    if labels.dtype != torch.int64:
        raise TypeError(f"fgreid_ops.{_OP}: expected {arg} to be int64, got {labels.dtype}")
    checks.check_same_device(_OP, arg, labels, "emb", emb)
    if labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"fgreid_ops.{_OP}: expected {arg} of shape [{emb.shape[0]}] (one per row of {emb_arg}), "
            f"got {list(labels.shape)}"
        )


def check_mine_inputs(emb, labels, ref_emb, ref_labels, distance):
    """The checks of the mining op (same messages as csrc/include/fgreid_ops/batch_hard_triplet_checks.h)."""
    checks.check_tensor(_OP, "emb", emb)
    checks.check_dim(_OP, "emb", emb, 2, "(B, D)")
    checks.check_float_dtype(_OP, "emb", emb)
    checks.check_nonempty_batch(_OP, "emb", emb)
    checks.check_nonempty(_OP, "emb", emb)
    _check_labels("labels", labels, "emb", emb)
    checks.check_tensor(_OP, "ref_emb", ref_emb)
    checks.check_dim(_OP, "ref_emb", ref_emb, 2, "(M, D)")
    if ref_emb.dtype != emb.dtype:
        raise TypeError(f"fgreid_ops.{_OP}: expected ref_emb to have the dtype of emb ({emb.dtype}), got {ref_emb.dtype}")
    checks.check_same_device(_OP, "ref_emb", ref_emb, "emb", emb)
    checks.check_nonempty_batch(_OP, "ref_emb", ref_emb)
    if ref_emb.shape[1] != emb.shape[1]:
        raise ValueError(f"fgreid_ops.{_OP}: expected ref_emb of width D={emb.shape[1]} (as emb), got {ref_emb.shape[1]}")
    _check_labels("ref_labels", ref_labels, "ref_emb", ref_emb)
    checks.check_choice(_OP, "distance", distance, DISTANCES)


def _check_loss_args(margin, reduction, normalize, return_indices):
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0):
        raise ValueError(f"fgreid_ops.{_OP}: expected margin to be a number >= 0 or None, got {margin!r}")
    checks.check_choice(_OP, "reduction", reduction, REDUCTIONS)
    for name, value in (("normalize", normalize), ("return_indices", return_indices)):
        if not isinstance(value, bool):
            raise TypeError(f"fgreid_ops.{_OP}: expected {name} to be a bool, got {type(value).__name__}")


def batch_hard_triplet(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = 0.3,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    distance: str = "euclidean",
    normalize: bool = False,
    reduction: str = "mean",
    return_indices: bool = False,
    backend: str | None = None,
):
    """Batch-hard triplet loss (Hermans et al. 2017; CUHS eq. 13) without the B×M distance matrix.

    For anchor i (a row of emb) and the references (ref_emb, or emb itself when None):

        d_ap = max_{j: ref_labels[j] == labels[i]} d(a_i, b_j)     (the anchor itself included
        d_an = min_{j: ref_labels[j] != labels[i]} d(a_i, b_j)      when emb is its own reference)
        loss_i = relu(d_ap − d_an + margin), or softplus(d_ap − d_an) if margin is 0 or None

    with d = sqrt(max(|a|² + |b|² − 2a·b, 1e-12)) ("euclidean", as fast-reid), its square clamped
    at 0 ("sqeuclidean") or 1 − cos(a, b) ("cosine"). normalize=True L2-normalizes the rows
    first (x / max(|x|, 1e-12), as F.normalize). reduction: "mean" (over all B anchors, as
    fast-reid), "sum" or "none" ([B]).

    Choices SPEC leaves open: an anchor without a negative, or (with a separate reference set)
    without a positive, contributes 0 and gets index -1. Ties go to the lower reference index.
    A NaN distance wins the search, so NaN embeddings give a NaN loss, as in the dense version.
    The search compares |a|² + |b|² − 2a·b with float32 accumulation (float64 for float64
    input); the two selected distances are then computed in that precision as |a − b|², so a
    pair of equal rows (the anchor and itself) has d = 1e-6 and gradient exactly 0.
    Identities may have any number of samples.

    Args:
        emb: [B, D] anchors, float32/float16/bfloat16/float64, any strides.
        labels: [B] int64 identities.
        margin: float >= 0, or None (soft margin).
        ref_emb, ref_labels: optional reference set [M, D] and [M] (a cross-batch memory, or
            every rank's batch: see fgreid_ops.distributed). Gradients reach ref_emb when it
            requires grad, through the selected rows only.
        return_indices: also return (idx_p, idx_n), [B] int64 indices into the references of
            the hardest positive and negative (-1 where none), like a batch-hard miner.
        backend: None (auto), "reference", "cpu" or "triton". There is no CUDA C++ kernel:
            CUDA tensors use Triton.

    Returns the loss in emb's dtype (scalar, or [B] for reduction="none"), or
    (loss, idx_p, idx_n) with return_indices=True.
    """
    checks.check_tensor(_OP, "emb", emb)
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError(f"fgreid_ops.{_OP}: expected ref_emb and ref_labels to be given together")
    self_ref = ref_emb is None
    b_emb, b_labels = (emb, labels) if self_ref else (ref_emb, ref_labels)
    check_mine_inputs(emb, labels, b_emb, b_labels, distance)
    _check_loss_args(margin, reduction, normalize, return_indices)
    if backend == "cuda":
        raise ValueError(f"fgreid_ops.{_OP}: there is no CUDA C++ kernel; CUDA tensors use backend='triton' (or None)")
    backend = _backend.resolve(_OP, emb.device.type, backend)
    if backend == "reference":
        return batch_hard_triplet_reference(
            emb, labels, margin, ref_emb=ref_emb, ref_labels=ref_labels, distance=distance,
            normalize=normalize, reduction=reduction, return_indices=return_indices,
        )

    a, b = emb, b_emb
    if normalize or distance == "cosine":
        # in float32 for half input: the search and the distances then see the same rows
        compute = torch.float64 if emb.dtype == torch.float64 else torch.float32
        a = F.normalize(emb.to(compute), dim=1)
        b = a if self_ref else F.normalize(b_emb.to(compute), dim=1)
    mine = torch.ops.fgreid.batch_hard_triplet_mine_triton if backend == "triton" else torch.ops.fgreid.batch_hard_triplet_mine
    d_ap, d_an, idx_p, idx_n = mine(a, labels, b, b_labels, distance)
    # d_ap = -inf / d_an = +inf for anchors without a positive / negative: their loss is 0
    loss = F.relu(d_ap - d_an + margin) if margin else F.softplus(d_ap - d_an)
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    loss = loss.to(emb.dtype)
    return (loss, idx_p, idx_n) if return_indices else loss


def _acc_dtype(emb):
    return torch.float64 if emb.dtype == torch.float64 else torch.float32


def _fake_mine(emb, labels, ref_emb, ref_labels, distance):
    check_mine_inputs(emb, labels, ref_emb, ref_labels, distance)
    B = emb.shape[0]
    d_ap = emb.new_empty((B,), dtype=_acc_dtype(emb))
    d_an = emb.new_empty((B,), dtype=_acc_dtype(emb))
    return d_ap, d_an, emb.new_empty((B,), dtype=torch.int64), emb.new_empty((B,), dtype=torch.int64)


def check_mine_backward_inputs(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance):
    """The checks of the mining op's backward: emb [B, D] and ref_emb [M, D] as in the forward,
    every [B] vector on emb's device (the distances float, the indices int64)."""
    op = f"{_OP}_mine_backward"
    checks.check_tensor(op, "emb", emb)
    checks.check_dim(op, "emb", emb, 2, "(B, D)")
    checks.check_float_dtype(op, "emb", emb)
    checks.check_tensor(op, "ref_emb", ref_emb)
    checks.check_dim(op, "ref_emb", ref_emb, 2, "(M, D)")
    if ref_emb.dtype != emb.dtype:
        raise TypeError(f"fgreid_ops.{op}: expected ref_emb to have the dtype of emb ({emb.dtype}), got {ref_emb.dtype}")
    checks.check_same_device(op, "ref_emb", ref_emb, "emb", emb)
    checks.check_nonempty_batch(op, "ref_emb", ref_emb)
    if ref_emb.shape[1] != emb.shape[1]:
        raise ValueError(f"fgreid_ops.{op}: expected ref_emb of width D={emb.shape[1]} (as emb), got {ref_emb.shape[1]}")
    B = emb.shape[0]
    for arg, t in (("grad_d_ap", grad_d_ap), ("grad_d_an", grad_d_an), ("d_ap", d_ap), ("d_an", d_an)):
        checks.check_grad(op, arg, t, "emb", emb, (B,))
    for arg, t in (("idx_p", idx_p), ("idx_n", idx_n)):
        checks.check_index(op, arg, t, "emb", emb, B)
    checks.check_choice(op, "distance", distance, DISTANCES)


def _fake_backward(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance, need_ref_grad):
    check_mine_backward_inputs(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance)
    grad_ref = ref_emb.new_empty(ref_emb.shape if need_ref_grad else (0,))
    return emb.new_empty(emb.shape), grad_ref


def _setup_context(ctx, inputs, output):
    emb, _, ref_emb, _, distance = inputs
    d_ap, d_an, idx_p, idx_n = output
    ctx.save_for_backward(emb, ref_emb, idx_p, idx_n, d_ap, d_an)
    ctx.distance = distance
    ctx.mark_non_differentiable(idx_p, idx_n)


def _make_backward(backward_op):
    def backward(ctx, grad_d_ap, grad_d_an, _grad_idx_p, _grad_idx_n):
        emb, ref_emb, idx_p, idx_n, d_ap, d_an = ctx.saved_tensors
        if grad_d_ap is None:
            grad_d_ap = torch.zeros_like(d_ap)
        if grad_d_an is None:
            grad_d_an = torch.zeros_like(d_an)
        need_ref_grad = ctx.needs_input_grad[2]
        grad_emb, grad_ref = backward_op(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an,
                                         ctx.distance, need_ref_grad)
        return grad_emb, None, grad_ref if need_ref_grad else None, None, None

    return backward


register_with_backward(("batch_hard_triplet_mine", "batch_hard_triplet_mine_triton"), _fake_mine, _fake_backward, _make_backward,
                       _setup_context, second_derivative=False)
