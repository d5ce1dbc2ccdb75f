// Small device helpers shared by the CUDA kernels.
#pragma once

namespace fgreid_ops {

constexpr int kWarpSize = 32;

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

}  // namespace fgreid_ops
