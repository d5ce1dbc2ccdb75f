import torch


def topk_mask_reference(f1: torch.Tensor, f2: torch.Tensor, k: int):
    """Top-k attention exploration (SPEC §4, CUHS eq. 5-6), in plain PyTorch.

    A[n] = sum_c f1[n, c] (float32 accumulation; float64 for float64 input). mask[n] is 1
    everywhere except 0 at the k positions of largest A[n]; ties go to the lower flat index
    h*W + w, and NaN counts as larger than every number (as in torch.sort). out = f2 * mask,
    the mask broadcast over channels. Returns (out, mask) with mask of shape [N, 1, H, W] in
    f2's dtype. k = 0 gives the identity, k >= H*W zeroes everything.

    torch.topk does not promise which of equal values it returns, so the tie rule is made
    explicit with a stable descending sort: equal values keep their index order.
    """
    N, _, H, W = f1.shape
    compute = torch.float64 if f1.dtype == torch.float64 else torch.float32
    attention = f1.detach().to(compute).sum(dim=1).reshape(N, H * W)
    k = min(k, H * W)
    order = torch.sort(attention, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.ones(N, H * W, dtype=f2.dtype, device=f2.device)
    mask.scatter_(1, order, 0)
    mask = mask.reshape(N, 1, H, W)
    return f2 * mask, mask

__all__ = ["topk_mask_reference"]
