import torch



def gem_reference(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GeM pooling (SPEC §1): y[n,c] = (mean_hw clamp(x, min=eps) ** p) ** (1/p), computed in
    float32 for half/bfloat16 input (float64 stays float64) and returned in x's dtype.
    p has shape [1] or [C]."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    pf = p.to(compute).reshape(1, -1)
    y = xf.clamp(min=eps).pow(pf[..., None, None]).mean(dim=(-2, -1)).pow(1.0 / pf)
    return y.to(x.dtype)

__all__ = ["gem_reference"]
