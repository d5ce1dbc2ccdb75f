"""k-reciprocal re-ranking on GPU (docs/ops.md#rerank): the launcher of the kNN stage,
fgreid::rerank_knn_triton (the same result as the CPU fgreid::rerank_knn).

Each program computes one [BLOCK_M, BLOCK_N] tile of d = (|x_i|^2 + |x_j|^2) - 2 x_i.x_j with
tl.dot (IEEE float32, no TF32), packs every entry into one int64 key (order of d in the high
32 bits, NaN last and -0 == +0; the column in the low 32 bits, so equal distances rank by the
lower index), sorts the keys of each row and keeps the k first, and stores the row's max. A
torch.topk over the per-tile lists of a block of rows then gives each row's k nearest exactly:
keys are distinct, so the selection has no ties. The sparse stages and the blend are in
fgreid_ops/ops/rerank.py (CPU kernels for the former; plain PyTorch on the device for the
latter)."""

import torch
import triton
import triton.language as tl

from ..checks.rerank import check_knn_inputs
from ._utils import grid, launcher

_INT64_MAX = tl.constexpr(2**63 - 1)  # a global read inside a jit function must be a constexpr
# Bytes of per-tile key lists held at once (one block of rows); bounds the kNN stage's memory.
_KEY_BUDGET = 128 * 2**20


@triton.jit
def _rerank_knn_tile_kernel(
    x_ptr, sq_ptr, keys_ptr, max_ptr, N, D, stride_x, row_start, rows, num_tiles,
    K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """keys[r, t, :K] = the K smallest (order(d[i, j]) << 32 | j) over the columns j of tile t,
    ascending; max[r, t] = max_j d[i, j] over the tile (NaN ignored), for i = row_start + r."""
    pid_m = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    i = row_start + r
    j = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = r < rows
    col_ok = j < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        kd = d0 + tl.arange(0, BLOCK_D)
        in_d = kd < D
        a = tl.load(x_ptr + i[:, None] * stride_x + kd[None, :], mask=row_ok[:, None] & in_d[None, :], other=0.0)
        b = tl.load(x_ptr + j[None, :] * stride_x + kd[:, None], mask=col_ok[None, :] & in_d[:, None], other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
    sq_i = tl.load(sq_ptr + i, mask=row_ok, other=0.0)
    sq_j = tl.load(sq_ptr + j, mask=col_ok, other=0.0)
    d = (sq_i[:, None] + sq_j[None, :]) - 2.0 * acc
    d = d + 0.0  # -0 -> +0: the two rank as equal, as on CPU
    bits = d.to(tl.int32, bitcast=True)
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in d as a signed integer
    order = tl.where(d != d, 0x7FFFFFFF, order)
    key = (order.to(tl.int64) << 32) | j[None, :]
    key = tl.where(col_ok[None, :], key, _INT64_MAX)
    key = tl.sort(key, dim=1)
    c = tl.arange(0, BLOCK_N)
    out = keys_ptr + r[:, None] * (num_tiles * K) + tile * K + c[None, :]
    tl.store(out, key, mask=row_ok[:, None] & (c < K)[None, :])
    finite = col_ok[None, :] & (d == d)
    row_max = tl.max(tl.where(finite, d, float("-inf")), axis=1)
    tl.store(max_ptr + r * num_tiles + tile, row_max, mask=row_ok)


def _key_rows(num_tiles: int, k: int) -> int:
    return max(1, _KEY_BUDGET // (num_tiles * k * 8))


@launcher(check_knn_inputs)
def rerank_knn_triton(feats, sqnorms, k):
    x = feats.contiguous()
    N, D = x.shape
    block_n = max(64, triton.next_power_of_2(k))
    block_m = 16 if block_n > 128 else 32
    num_tiles = triton.cdiv(N, block_n)
    index = torch.empty(N, k, dtype=torch.int64, device=x.device)
    row_max = torch.empty(N, dtype=torch.float32, device=x.device)
    step = _key_rows(num_tiles, k)
    for r0 in range(0, N, step):
        rows = min(step, N - r0)
        keys = torch.empty(rows, num_tiles * k, dtype=torch.int64, device=x.device)
        tile_max = torch.empty(rows, num_tiles, dtype=torch.float32, device=x.device)
        _rerank_knn_tile_kernel[grid((rows, block_m), (N, block_n))](
            x, sqnorms.contiguous(), keys, tile_max, N, D, x.stride(0), r0, rows, num_tiles,
            K=k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=32,
        )
        # tiles narrower than k (the last one) padded their lists with INT64_MAX
        best = torch.topk(keys, k, dim=1, largest=False, sorted=True).values
        index[r0:r0 + rows] = best & 0xFFFFFFFF
        row_max[r0:r0 + rows] = tile_max.amax(1)
    return index, row_max
