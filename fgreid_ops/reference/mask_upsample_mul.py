import torch
import torch.nn.functional as F

MODES = ("bilinear", "nearest")


def mask_upsample_mul_reference(feat: torch.Tensor, mask: torch.Tensor, mode: str = "bilinear",
                                pool: bool = False) -> torch.Tensor:
    """Fused localization (SPEC §3, Yin et al. eq. 3): out = feat * up(mask) with
    up = F.interpolate(mask, size=(H, W), mode=mode, align_corners=False) ("nearest" is the legacy
    nearest mode, which takes no align_corners), broadcast over channels for a [N, 1, h, w] mask.
    pool=True returns the mean over H×W, [N, C]. Computed in float32 for half/bfloat16 (float64
    stays float64) and returned in feat's dtype."""
    compute = torch.float64 if feat.dtype == torch.float64 else torch.float32
    align = False if mode == "bilinear" else None
    up = F.interpolate(mask.to(compute), size=feat.shape[-2:], mode=mode, align_corners=align)
    out = feat.to(compute) * up
    if pool:
        out = out.mean(dim=(-2, -1))
    return out.to(feat.dtype)

__all__ = ["mask_upsample_mul_reference"]
