"""nn.Module wrappers of the ops."""

import torch
from torch import nn

from .ops.gem import gem


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
        shape = (num_channels,) if num_channels else (1,)
        self.p = nn.Parameter(torch.full(shape, float(p)), requires_grad=learn_p)
        self.eps = eps
        self.flatten = flatten
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = gem(x, self.p, self.eps, backend=self.backend)
        return y if self.flatten else y[:, :, None, None]

    def extra_repr(self) -> str:
        return f"p={self.p.detach().flatten().tolist()[:4]}, eps={self.eps}, learn_p={self.p.requires_grad}"
