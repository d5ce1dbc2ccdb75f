// GeM pooling on CUDA (docs/ops.md#gem). One warp per (n, c) row: lanes stride over H*W, fp32 (fp64
// for double) accumulation, warp-shuffle reduction; the backward writes grad_x and reduces
// sum(t log x) for grad_p in one more pass over the (cached) row. Input is made contiguous NCHW first.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/gem_checks.h"
#include "fgreid_ops/cuda_utils.cuh"

namespace fgreid_ops {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t clamped(scalar_t raw, acc_t eps) {
  const acc_t v = static_cast<acc_t>(raw);
  return v < eps ? eps : v;
}

template <typename scalar_t, typename acc_t>
__global__ void gem_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ p,
                                   scalar_t* __restrict__ out, int64_t rows, int64_t C,
                                   int64_t HW, acc_t eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const acc_t p_c = p[row % C];
  const scalar_t* xr = x + row * HW;
  acc_t sum = 0;
  for (int64_t i = lane; i < HW; i += kWarpSize) {
    sum += exp(p_c * log(clamped(xr[i], eps)));
  }
  sum = warp_sum(sum);
  if (lane == 0) out[row] = static_cast<scalar_t>(pow(sum / static_cast<acc_t>(HW), acc_t(1) / p_c));
}

// With t = max(x, eps)^p, s = sum_hw t, m = s / HW, y = m^(1/p): grad_x = g y / s * t / x where
// x >= eps, and grad_p_rows = g y (-log(m) / p^2 + sum(t log x) / (p s)). s is recomputed from x
// (first loop) rather than read from the forward output, which is rounded to x's dtype.
template <typename scalar_t, typename acc_t>
__global__ void gem_backward_kernel(const scalar_t* __restrict__ grad_out,
                                    const scalar_t* __restrict__ x, const acc_t* __restrict__ p,
                                    scalar_t* __restrict__ grad_x, acc_t* __restrict__ grad_p_rows,
                                    int64_t rows, int64_t C, int64_t HW, acc_t eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const acc_t p_c = p[row % C];
  const scalar_t* xr = x + row * HW;
  acc_t s = 0;
  for (int64_t i = lane; i < HW; i += kWarpSize) s += exp(p_c * log(clamped(xr[i], eps)));
  s = warp_sum_all(s);
  const acc_t log_m = log(s / static_cast<acc_t>(HW));
  const acc_t g_y = static_cast<acc_t>(grad_out[row]) * exp(log_m / p_c);
  const acc_t coef = g_y / s;
  scalar_t* gxr = grad_x + row * HW;
  acc_t sum_t_log_x = 0;
  for (int64_t i = lane; i < HW; i += kWarpSize) {
    const acc_t raw = static_cast<acc_t>(xr[i]);
    const acc_t v = raw < eps ? eps : raw;
    const acc_t log_v = log(v);
    const acc_t t = exp(p_c * log_v);
    gxr[i] = static_cast<scalar_t>(raw >= eps ? coef * t / v : acc_t(0));
    sum_t_log_x += t * log_v;
  }
  if (grad_p_rows == nullptr) return;
  sum_t_log_x = warp_sum(sum_t_log_x);
  if (lane == 0) grad_p_rows[row] = g_y * (-log_m / (p_c * p_c) + sum_t_log_x / (p_c * s));
}

at::Tensor per_channel(const at::Tensor& p, int64_t C, at::ScalarType acc) {
  return p.to(acc).expand({C}).contiguous();
}

unsigned int num_blocks(int64_t rows) {
  return static_cast<unsigned int>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

at::Tensor gem_cuda(const at::Tensor& x_in, const at::Tensor& p, double eps) {
  check_gem_inputs(x_in, p, eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor out = at::empty({N, C}, x.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor pc = per_channel(p, C, c10::CppTypeToScalarType<acc_t>::value);
    gem_forward_kernel<scalar_t, acc_t><<<num_blocks(N * C), kWarpsPerBlock * kWarpSize, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), pc.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(),
        N * C, C, HW, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gem_backward_cuda(const at::Tensor& grad_out_in,
                                                     const at::Tensor& x_in, const at::Tensor& p,
                                                     double eps,
                                                     bool need_grad_p) {
  check_gem_inputs(x_in, p, eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_out = grad_out_in.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  // grad_x follows the layout rule of the CPU kernel and the fake: channels_last in,
  // channels_last out; every other layout gives a contiguous gradient.
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_p_rows = empty_grad_p_rows(x, need_grad_p);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor pc = per_channel(p, C, c10::CppTypeToScalarType<acc_t>::value);
    gem_backward_kernel<scalar_t, acc_t><<<num_blocks(N * C), kWarpsPerBlock * kWarpSize, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), pc.const_data_ptr<acc_t>(),
        grad_x.mutable_data_ptr<scalar_t>(),
        need_grad_p ? grad_p_rows.mutable_data_ptr<acc_t>() : nullptr, N * C, C, HW,
        static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (is_channels_last_4d(x_in)) grad_x = grad_x.contiguous(at::MemoryFormat::ChannelsLast);
  return {grad_x, grad_p_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CUDA, m) {
  m.impl("gem", &gem_cuda);
  m.impl("gem_backward", &gem_backward_cuda);
}

}  // namespace fgreid_ops
