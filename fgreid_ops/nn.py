"""nn.Module wrappers of the ops."""

import numbers

import torch
from torch import nn

from . import _backend
from . import _checks as checks
from .ops.gem import gem
from .ops.batch_hard_triplet import batch_hard_triplet


def _number(op, arg, value, positive=False):
    """value as a float: a Python or numpy number or a one-element tensor (not a str or bool)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be a number, got {type(value).__name__} {value!r:.40}")
    value = float(value)
    if positive and not value > 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} > 0, got {value}")
    return value


def _flag(op, arg, value):
    if not isinstance(value, bool):
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be a bool, got {type(value).__name__}")
    return value


def _backend_name(op, backend):
    if backend is not None and backend not in (*_backend.BACKENDS, "auto"):
        raise ValueError(f"fgreid_ops.{op}: expected backend to be one of {list(_backend.BACKENDS)} or None, got {backend!r}")
    return backend


class GeM(nn.Module):
    """Generalized-mean pooling, [N, C, H, W] -> [N, C] (CUHS eq. 16).

    A drop-in for fast-reid's ``GeneralizedMeanPoolingP``: the exponent is the parameter ``p``
    of shape [1] (or [num_channels] when given), so a fast-reid state_dict loads unchanged.
    fast-reid's module returns [N, C, 1, 1]; this one returns [N, C] (``flatten=False`` keeps
    the 4-D shape).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True,
                 num_channels: int | None = None, flatten: bool = True, backend: str | None = None):
        super().__init__()
        op = "GeM"
        p = _number(op, "p", p, positive=True)
        eps = _number(op, "eps", eps, positive=True)
        if num_channels is not None and (isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1):
            raise ValueError(f"fgreid_ops.{op}: expected num_channels to be an int >= 1 or None, got {num_channels!r}")
        shape = (num_channels,) if num_channels else (1,)
        self.p = nn.Parameter(torch.full(shape, p), requires_grad=_flag(op, "learn_p", learn_p))
        self.eps = eps
        self.flatten = _flag(op, "flatten", flatten)
        self.backend = _backend_name(op, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = gem(x, self.p, self.eps, backend=self.backend)
        return y if self.flatten else y[:, :, None, None]

    def extra_repr(self) -> str:
        return f"p={self.p.detach().flatten().tolist()[:4]}, eps={self.eps}, learn_p={self.p.requires_grad}"


class TripletLoss(nn.Module):
    """Triplet loss with batch-hard mining (Hermans et al. 2017), a drop-in for fast-reid's
    ``triplet_loss(embedding, targets, margin, norm_feat, hard_mining)``: the same number on the
    same input, computed by :func:`fgreid_ops.batch_hard_triplet` without the B×B matrix.

    - ``margin > 0``: mean of relu(d_ap − d_an + margin) (fast-reid's margin_ranking_loss);
      ``margin`` <= 0 or None: mean of softplus(d_ap − d_an) (its soft_margin_loss: fast-reid
      tests ``margin > 0``, so a negative margin is a soft margin too). fast-reid
      computes log(1 + exp(·)) and, where that overflows to inf, falls back to margin 0.3;
      softplus here does not overflow, so that fallback never applies.
    - ``norm_feat``: L2-normalize first (fast-reid divides by |x| + 1e-12, here by
      max(|x|, 1e-12): equal up to 1e-12 relative).
    - ``hard_mining=False`` is fast-reid's softmax-weighted mining, kept for compatibility in
      plain PyTorch: it needs the full distance matrix.
    - Under torch.distributed with more than one rank, ``gather=True`` (default, as fast-reid)
      takes the references from every rank (fgreid_ops.distributed), with the gradient of the
      gathered rows returned to the rank that owns them.

    Unlike fast-reid it accepts identities with unequal counts in a batch.
    """

    def __init__(self, margin: float | None = 0.3, norm_feat: bool = False, hard_mining: bool = True,
                 distance: str = "euclidean", gather: bool = True, backend: str | None = None):
        super().__init__()
        op = "TripletLoss"
        self.margin = None if margin is None else _number(op, "margin", margin)
        self.norm_feat = _flag(op, "norm_feat", norm_feat)
        self.hard_mining = _flag(op, "hard_mining", hard_mining)
        checks.check_choice(op, "distance", distance, ("euclidean", "sqeuclidean", "cosine"))
        self.distance = distance
        self.gather = _flag(op, "gather", gather)
        self.backend = _backend_name(op, backend)

    def forward(self, embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from . import distributed

        ref_emb = ref_labels = None
        if self.gather and distributed.world_size() > 1:
            ref_emb, ref_labels = distributed.all_gather_embeddings(embedding, targets)
        # fast-reid: margin > 0 is the margin ranking loss, anything else the soft margin
        margin = self.margin if self.margin is not None and self.margin > 0 else None
        if not self.hard_mining:
            _check_weighted_inputs(embedding, targets)
            return _weighted_triplet(embedding, targets, ref_emb, ref_labels, margin, self.norm_feat)
        return batch_hard_triplet(embedding, targets, margin, ref_emb=ref_emb, ref_labels=ref_labels,
                                  distance=self.distance, normalize=self.norm_feat, backend=self.backend)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, norm_feat={self.norm_feat}, hard_mining={self.hard_mining}, distance={self.distance!r}"


def _check_weighted_inputs(embedding, targets):
    """The checks batch_hard_triplet makes, for the plain-PyTorch weighted path."""
    op = "TripletLoss"
    checks.check_tensor(op, "embedding", embedding)
    checks.check_dim(op, "embedding", embedding, 2, "(B, D)")
    checks.check_float_dtype(op, "embedding", embedding)
    checks.check_nonempty(op, "embedding", embedding)
    checks.check_tensor(op, "targets", targets)
    if targets.dtype != torch.int64:
        raise TypeError(f"fgreid_ops.{op}: expected targets to be int64, got {targets.dtype}")
    checks.check_same_device(op, "targets", targets, "embedding", embedding)
    if tuple(targets.shape) != (embedding.shape[0],):
        raise ValueError(f"fgreid_ops.{op}: expected targets of shape [{embedding.shape[0]}] (one per row of embedding), "
                         f"got {list(targets.shape)}")


def _weighted_triplet(emb, labels, ref_emb, ref_labels, margin, norm_feat):
    """fast-reid's weighted_example_mining: d_ap and d_an are softmax(±d)-weighted means over the
    positives and negatives (full B×M matrix, plain PyTorch, euclidean distance)."""
    import torch.nn.functional as F

    x = F.normalize(emb, dim=1) if norm_feat else emb
    y = x if ref_emb is None else (F.normalize(ref_emb, dim=1) if norm_feat else ref_emb)
    ref_labels = labels if ref_labels is None else ref_labels
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :] - 2 * x @ y.T
    dist = sq.clamp(min=1e-12).sqrt()
    is_pos = (labels[:, None] == ref_labels[None, :]).to(dist.dtype)
    is_neg = 1 - is_pos

    def softmax_weights(d, mask):
        max_v = (d * mask).amax(dim=1, keepdim=True)
        e = torch.exp(d - max_v)
        return e * mask / ((e * mask).sum(dim=1, keepdim=True) + 1e-6)

    d_ap = (dist * is_pos * softmax_weights(dist * is_pos, is_pos)).sum(1)
    d_an = (dist * is_neg * softmax_weights(-dist * is_neg, is_neg)).sum(1)
    if margin:
        return F.relu(d_ap - d_an + margin).mean()
    return F.softplus(d_ap - d_an).mean()
