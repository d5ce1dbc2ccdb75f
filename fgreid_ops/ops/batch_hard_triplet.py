"""Batch-hard triplet loss (docs/ops.md#batch_hard_triplet): the public function, the fakes and
autograd of the mining op.

The registered op fgreid::batch_hard_triplet_mine (CPU C++) / _mine_triton (Triton) streams the
references, finds each anchor's hardest positive and negative and returns their distances and
indices, never the B×M distance matrix. Its backward op uses the saved indices: O(B·D) work,
reaching emb and ref_emb through the selected pairs only. The margin, the soft margin and the
reduction act on the [B] distance vectors in plain PyTorch."""

import torch
import torch.nn.functional as F

from .. import _backend, _registry
from .. import _checks as checks
from ..checks.batch_hard_triplet import OP, check_loss_args, check_mine_backward_inputs, check_mine_inputs
from ..reference.batch_hard_triplet import batch_hard_triplet_reference


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

    Choices docs/ops.md leaves open: an anchor without a negative, or (with a separate reference set)
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
    checks.check_tensor(OP, "emb", emb)
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError(f"fgreid_ops.{OP}: expected ref_emb and ref_labels to be given together")
    self_ref = ref_emb is None
    b_emb, b_labels = (emb, labels) if self_ref else (ref_emb, ref_labels)
    check_mine_inputs(emb, labels, b_emb, b_labels, distance)
    check_loss_args(margin, reduction, normalize, return_indices)
    backend = _backend.resolve(MINE, emb.device.type, backend)
    if backend == "reference":  # the whole loss from the distance matrix, not a mining reference
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
    d_ap, d_an, idx_p, idx_n = _backend.kernel(MINE, backend)(a, labels, b, b_labels, distance)
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


def _fake_backward(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance, need_ref_grad):
    check_mine_backward_inputs(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance, need_ref_grad)
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


MINE = _registry.register(_registry.OpDef(
    name="batch_hard_triplet_mine", op="batch_hard_triplet", check=check_mine_inputs, fake=_fake_mine,
    reference=None,
    signature="(Tensor emb, Tensor labels, Tensor ref_emb, Tensor ref_labels, str distance)"
              " -> (Tensor d_ap, Tensor d_an, Tensor idx_p, Tensor idx_n)",
    # The GPU kernel is Triton; there is no CUDA C++ one.
    cpp=("cpu",), triton="batch_hard_triplet",
    backward=_registry.Backward(
        fake=_fake_backward, setup_context=_setup_context, make=_make_backward,
        signature="(Tensor grad_d_ap, Tensor grad_d_an, Tensor emb, Tensor ref_emb, Tensor idx_p, Tensor idx_n,"
                  " Tensor d_ap, Tensor d_an, str distance, bool need_ref_grad) -> (Tensor grad_emb, Tensor grad_ref)",
        double=_registry.no_double_backward,
    ),
))

__all__ = ["batch_hard_triplet"]
