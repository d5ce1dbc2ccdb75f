"""Checks of fgreid::batch_hard_triplet_mine (csrc/include/fgreid_ops/batch_hard_triplet_checks.h)
and of the loss arguments of the public function."""

import torch

from .. import _checks as checks

OP = "batch_hard_triplet"
DISTANCES = ("euclidean", "sqeuclidean", "cosine")
REDUCTIONS = ("mean", "sum", "none")


def _check_labels(arg, labels, emb_arg, emb):
    checks.check_tensor(OP, arg, labels)
    checks.check_dim(OP, arg, labels, 1, "(B,)")
    if labels.dtype != torch.int64:
        raise TypeError(f"fgreid_ops.{OP}: expected {arg} to be int64, got {labels.dtype}")
    checks.check_same_device(OP, arg, labels, "emb", emb)
    if labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"fgreid_ops.{OP}: expected {arg} of shape [{emb.shape[0]}] (one per row of {emb_arg}), "
            f"got {list(labels.shape)}"
        )


def check_mine_inputs(emb, labels, ref_emb, ref_labels, distance):
    """The checks of the mining op (same messages as batch_hard_triplet_checks.h)."""
    checks.check_tensor(OP, "emb", emb)
    checks.check_dim(OP, "emb", emb, 2, "(B, D)")
    checks.check_float_dtype(OP, "emb", emb)
    checks.check_nonempty_batch(OP, "emb", emb)
    checks.check_nonempty(OP, "emb", emb)
    _check_labels("labels", labels, "emb", emb)
    checks.check_tensor(OP, "ref_emb", ref_emb)
    checks.check_dim(OP, "ref_emb", ref_emb, 2, "(M, D)")
    checks.check_same_dtype(OP, "ref_emb", ref_emb, "emb", emb)
    checks.check_same_device(OP, "ref_emb", ref_emb, "emb", emb)
    checks.check_nonempty_batch(OP, "ref_emb", ref_emb)
    if ref_emb.shape[1] != emb.shape[1]:
        raise ValueError(f"fgreid_ops.{OP}: expected ref_emb of width D={emb.shape[1]} (as emb), got {ref_emb.shape[1]}")
    _check_labels("ref_labels", ref_labels, "ref_emb", ref_emb)
    checks.check_choice(OP, "distance", distance, DISTANCES)


def check_mine_backward_inputs(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance, need_ref_grad):
    """What the backward launch indexes by: [B] vectors beside emb [B, D] and ref_emb [M, D]."""
    op = "batch_hard_triplet_mine_backward"
    checks.check_tensor(op, "emb", emb)
    checks.check_dim(op, "emb", emb, 2, "(B, D)")
    checks.check_float_dtype(op, "emb", emb)
    checks.check_tensor(op, "ref_emb", ref_emb)
    checks.check_dim(op, "ref_emb", ref_emb, 2, "(M, D)")
    checks.check_same_dtype(op, "ref_emb", ref_emb, "emb", emb)
    checks.check_same_device(op, "ref_emb", ref_emb, "emb", emb)
    if ref_emb.shape[1] != emb.shape[1]:
        raise ValueError(f"fgreid_ops.{op}: expected ref_emb of width D={emb.shape[1]} (as emb), got {ref_emb.shape[1]}")
    B = emb.shape[0]
    for arg, t in (("grad_d_ap", grad_d_ap), ("grad_d_an", grad_d_an), ("idx_p", idx_p), ("idx_n", idx_n),
                   ("d_ap", d_ap), ("d_an", d_an)):
        checks.check_tensor(op, arg, t)
        checks.check_same_device(op, arg, t, "emb", emb)
        if tuple(t.shape) != (B,):
            raise ValueError(f"fgreid_ops.{op}: expected {arg} of shape [B]=[{B}], got {list(t.shape)}")
    for arg, t in (("grad_d_ap", grad_d_ap), ("grad_d_an", grad_d_an), ("d_ap", d_ap), ("d_an", d_an)):
        checks.check_float_dtype(op, arg, t)
    for arg, t in (("idx_p", idx_p), ("idx_n", idx_n)):
        if t.dtype != torch.int64:
            raise TypeError(f"fgreid_ops.{op}: expected {arg} to be int64, got {t.dtype}")
    checks.check_choice(op, "distance", distance, DISTANCES)


def check_loss_args(margin, reduction, normalize, return_indices):
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0):
        raise ValueError(f"fgreid_ops.{OP}: expected margin to be a number >= 0 or None, got {margin!r}")
    checks.check_choice(OP, "reduction", reduction, REDUCTIONS)
    for name, value in (("normalize", normalize), ("return_indices", return_indices)):
        if not isinstance(value, bool):
            raise TypeError(f"fgreid_ops.{OP}: expected {name} to be a bool, got {type(value).__name__}")
