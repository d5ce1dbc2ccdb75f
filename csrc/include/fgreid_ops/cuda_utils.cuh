// Small device helpers shared by the CUDA kernels.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fgreid_ops/blocked_sum.h"

namespace fgreid_ops {

constexpr int kWarpSize = 32;

// Blocks for `work` items of `per_block` each, capped for grid-stride kernels: gridDim.x is
// at most 2^31 - 1, and past ~2^20 blocks a grid-stride loop is as fast.
inline unsigned int grid_size(int64_t work, int64_t per_block, int64_t max_blocks = int64_t(1) << 20) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min((work + per_block - 1) / per_block, max_blocks)));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// The sum over the warp, returned to every lane.
template <typename T>
__device__ __forceinline__ T warp_sum_all(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Strided steps per lane summed into one running value before it joins the lane's CascadeSum.
constexpr int64_t kLaneBlock = kSumBlock / kWarpSize;

// One lane's share of a warp-strided sum: term(i) over i = lane, lane + 32, ... < n, in blocks of
// kLaneBlock steps combined pairwise, so that a long row keeps float32 accuracy.
template <typename acc_t, typename Term>
__device__ __forceinline__ acc_t lane_sum(int64_t n, int lane, const Term& term) {
  CascadeSum<acc_t> sum;
  for (int64_t i0 = lane; i0 < n; i0 += kLaneBlock * kWarpSize) {
    const int64_t i1 = i0 + kLaneBlock * kWarpSize < n ? i0 + kLaneBlock * kWarpSize : n;
    acc_t block = 0;
    for (int64_t i = i0; i < i1; i += kWarpSize) block += term(i);
    sum.add(block);
  }
  return sum.total();
}

}  // namespace fgreid_ops
