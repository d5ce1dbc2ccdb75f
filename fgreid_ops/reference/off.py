import torch
import torch.nn.functional as F

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))


def off_reference(a: torch.Tensor, b: torch.Tensor | None = None, *, stride: int | None = None) -> torch.Tensor:
    """Optical-flow-guided feature (SPEC §2): ``cat([Sx(a), Sy(a), b - a], dim=-3)`` for a, b of
    shape [..., C, H, W], with Sx, Sy the depthwise 3x3 Sobel filters applied as F.conv2d
    (cross-correlation, zero padding 1). ``off_reference(x, stride=d)`` on x [N, T, C, H, W] is
    ``off_reference(x[:, :-d], x[:, d:])``. Computed in float32 for half/bfloat16 (float64 stays
    float64) and returned in a's dtype."""
    if b is None:
        a, b = a[:, :-stride], a[:, stride:]
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    *lead, C, H, W = a.shape
    af = a.reshape(-1, C, H, W).to(compute)
    bf = b.reshape(-1, C, H, W).to(compute)
    kx = torch.tensor(SOBEL_X, dtype=compute, device=a.device).expand(C, 1, 3, 3)
    ky = torch.tensor(SOBEL_Y, dtype=compute, device=a.device).expand(C, 1, 3, 3)
    sx = F.conv2d(af, kx, padding=1, groups=C)
    sy = F.conv2d(af, ky, padding=1, groups=C)
    out = torch.cat([sx, sy, bf - af], dim=1)
    return out.to(a.dtype).reshape(*lead, 3 * C, H, W)

__all__ = ["off_reference"]
