"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in plain PyTorch, dense and in float32.

A line-by-line transcription of the `re_ranking` that torchreid, fast-reid and
reid-strong-baseline ship, with float32 where they use float16 and a stable sort where they use
numpy's default quicksort. It holds several [N, N] matrices (N = Q + G) and loops over rows in
Python: use it to check the kernels on small N, not on a real gallery."""

import torch


def half_k(k1: int) -> int:
    """round(k1 / 2) with ties to even, as numpy.around: the k of the expansion candidates."""
    return round(k1 / 2)


def _reciprocal(order: torch.Tensor, i: int, k: int) -> torch.Tensor:
    """R(i, k): the j among the k + 1 first of order[i] that have i among their own k + 1 first."""
    forward = order[i, : k + 1]
    backward = order[forward, : k + 1]
    return forward[(backward == i).any(1)]


def rerank_reference(q_feats: torch.Tensor, g_feats: torch.Tensor, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3) -> torch.Tensor:
    """[Q, G] float32 re-ranked distances.

    d = squared Euclidean distance between the rows of cat(q_feats, g_feats), as
    (||x_i||^2 + ||x_j||^2) - 2 x_i.x_j; d' = each row of d divided by its maximum (0 where
    that maximum is 0); rows ranked by d', ties to the lower index. V[i] = exp(-d'[i, s])
    normalized over the expanded k-reciprocal set S(i); with k2 > 1, V[i] = mean of V over the
    k2 first of i's ranking; J = 1 - m / (2 - m), m[i, j] = sum_k min(V[i, k], V[j, k]);
    result = (1 - lambda_value) J + lambda_value d', query rows by gallery columns."""
    x = torch.cat([q_feats.detach(), g_feats.detach()]).to(torch.float32)
    num_query, n = q_feats.shape[0], x.shape[0]
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :]) - 2 * (x @ x.T)
    row_max = d.amax(1, keepdim=True)
    d = torch.where(row_max > 0, d / torch.where(row_max > 0, row_max, 1), 0)
    order = torch.sort(d, dim=1, stable=True).indices

    h = half_k(k1)
    V = torch.zeros(n, n, dtype=torch.float32)
    for i in range(n):
        r = _reciprocal(order, i, k1)
        members = set(r.tolist())
        expansion = [r]
        for c in r.tolist():
            rc = _reciprocal(order, c, h)
            if 3 * len(members.intersection(rc.tolist())) > 2 * len(rc):
                expansion.append(rc)
        s = torch.unique(torch.cat(expansion))
        weight = torch.exp(-d[i, s])
        V[i, s] = weight / weight.sum()
    if k2 != 1:
        V = V[order[:, :k2]].mean(1)

    jaccard = torch.empty(num_query, n - num_query, dtype=torch.float32)
    for i in range(num_query):
        m = torch.minimum(V[i][None, :], V[num_query:]).sum(1)
        jaccard[i] = 1 - m / (2 - m)
    return (1 - lambda_value) * jaccard + lambda_value * d[:num_query, num_query:]


__all__ = ["rerank_reference"]
