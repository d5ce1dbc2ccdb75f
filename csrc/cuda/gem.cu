// GeM pooling on CUDA (docs/ops.md#gem). One warp per (n, c) row: lanes stride over H*W, fp32 (fp64
// for double) accumulation over blocks of kLaneBlock steps, the blocks combined pairwise (a long
// row keeps float32 accuracy), then a warp-shuffle reduction; the backward writes grad_x and reduces
// sum(t log x) for grad_p in one more pass over the (cached) row. Input is made contiguous NCHW first.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "fgreid_ops/cuda_utils.cuh"
#include "fgreid_ops/gem_checks.h"
#include "fgreid_ops/registration.h"

namespace fgreid_ops {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpsPerBlock * kWarpSize;

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t clamped(scalar_t raw, acc_t eps) {
  const acc_t v = static_cast<acc_t>(raw);
  return v < eps ? eps : v;
}

// Calls body(row) for every (n, c) row of this warp: one warp per row, grid-stride over rows (the
// whole warp takes the same rows, so its shuffles see every lane).
template <typename Body>
__device__ __forceinline__ void for_each_warp_row(int64_t rows, const Body& body) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    body(row);
  }
}

// This lane's share of sum_hw max(x, eps)^p over one row.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t lane_pow_sum(const scalar_t* xr, int64_t HW, int lane, acc_t p, acc_t eps) {
  return lane_sum<acc_t>(HW, lane, [&](int64_t i) { return exp(p * log(clamped(xr[i], eps))); });
}

template <typename scalar_t, typename acc_t>
__global__ void gem_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ p,
                                   scalar_t* __restrict__ out, int64_t rows, int64_t C,
                                   int64_t HW, acc_t eps) {
  const int lane = threadIdx.x % kWarpSize;
  for_each_warp_row(rows, [&](int64_t row) {
    const acc_t p_c = p[row % C];
    const acc_t sum = warp_sum(lane_pow_sum(x + row * HW, HW, lane, p_c, eps));
    if (lane == 0) out[row] = static_cast<scalar_t>(pow(sum / static_cast<acc_t>(HW), acc_t(1) / p_c));
  });
}

// With t = max(x, eps)^p, s = sum_hw t, m = s / HW, y = m^(1/p): grad_x = g y / s * t / x where
// x >= eps, and grad_p_rows = g y (-log(m) / p^2 + sum(t log x) / (p s)). s is recomputed from x
// (first loop) rather than read from the forward output, which is rounded to x's dtype.
template <typename scalar_t, typename acc_t>
__global__ void gem_backward_kernel(const scalar_t* __restrict__ grad_out,
                                    const scalar_t* __restrict__ x, const acc_t* __restrict__ p,
                                    scalar_t* __restrict__ grad_x, acc_t* __restrict__ grad_p_rows,
                                    int64_t rows, int64_t C, int64_t HW, acc_t eps) {
  const int lane = threadIdx.x % kWarpSize;
  for_each_warp_row(rows, [&](int64_t row) {
    const acc_t p_c = p[row % C];
    const scalar_t* xr = x + row * HW;
    const acc_t s = warp_sum_all(lane_pow_sum(xr, HW, lane, p_c, eps));
    const acc_t log_m = log(s / static_cast<acc_t>(HW));
    const acc_t g_y = static_cast<acc_t>(grad_out[row]) * exp(log_m / p_c);
    const acc_t coef = g_y / s;
    scalar_t* gxr = grad_x + row * HW;
    acc_t sum_t_log_x = lane_sum<acc_t>(HW, lane, [&](int64_t i) {
      const acc_t raw = static_cast<acc_t>(xr[i]);
      const acc_t v = raw < eps ? eps : raw;
      const acc_t log_v = log(v);
      const acc_t t = exp(p_c * log_v);
      gxr[i] = static_cast<scalar_t>(raw >= eps ? coef * t / v : acc_t(0));
      return t * log_v;
    });
    if (grad_p_rows == nullptr) return;
    sum_t_log_x = warp_sum(sum_t_log_x);
    if (lane == 0) grad_p_rows[row] = g_y * (-log_m / (p_c * p_c) + sum_t_log_x / (p_c * s));
  });
}

unsigned int num_blocks(int64_t rows) { return grid_size(rows, kWarpsPerBlock, std::numeric_limits<int32_t>::max()); }

at::Tensor gem_cuda(const at::Tensor& x_in, const at::Tensor& p, double eps) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  GemForward f = prepare_gem(x_in, p, eps, /*reads_channels_last=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "gem_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gem_forward_kernel<scalar_t, acc_t><<<num_blocks(f.rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        f.x.const_data_ptr<scalar_t>(), f.p_acc.const_data_ptr<acc_t>(), f.out.mutable_data_ptr<scalar_t>(), f.rows,
        f.C, f.HW, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return f.out;
}

// The kernel walks contiguous NCHW; grad_x then follows the layout rule of the CPU kernel and the
// fake: channels_last in, channels_last out.
std::tuple<at::Tensor, at::Tensor> gem_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                     const at::Tensor& p, double eps, bool need_grad_p) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  GemBackward b = prepare_gem_backward(grad_out, x_in, p, eps, need_grad_p, /*reads_channels_last=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "gem_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* grad_p_rows = need_grad_p ? b.grad_p_rows.mutable_data_ptr<acc_t>() : nullptr;
    gem_backward_kernel<scalar_t, acc_t><<<num_blocks(b.rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        b.grad_out.const_data_ptr<scalar_t>(), b.x.const_data_ptr<scalar_t>(), b.p_acc.const_data_ptr<acc_t>(),
        b.grad_x.mutable_data_ptr<scalar_t>(), grad_p_rows, b.rows, b.C, b.HW, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor grad_x = is_channels_last_4d(x_in) ? b.grad_x.contiguous(at::MemoryFormat::ChannelsLast) : b.grad_x;
  return {grad_x, b.grad_p_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CUDA, m) { register_forward_backward<&gem_cuda, &gem_backward_cuda>(m, "gem"); }

}  // namespace fgreid_ops
