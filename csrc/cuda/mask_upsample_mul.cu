// Fused localization on CUDA (docs/ops.md#mask_upsample_mul): out = feat * up(mask) or its mean over H x W, where up is
// F.interpolate(mask, (H, W), mode, align_corners=False) evaluated per output pixel from the
// (small, cached) mask with ATen's source indices and weights: the upsampled mask is never stored.
//
// Forward: one thread per output pixel and group of channels (a shared mask is interpolated once
// for kChannelsPerThread channels); with pool, one warp per (n, c) row and a shuffle reduction.
// Backward, deterministic without atomics: the mask gradient is gathered per source pixel (i, j)
// over the output rows/columns whose taps read it (found by binary search: the taps are monotone
// in the output coordinate), in a fixed order. A shared mask first needs G = sum_c g * feat per
// output pixel: summed over fixed chunks of channels, then the chunks in order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>

#include "fgreid_ops/cuda_utils.cuh"
#include "fgreid_ops/mask_upsample_mul_checks.h"
#include "fgreid_ops/registration.h"
#include "fgreid_ops/upsample_index.h"

namespace fgreid_ops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kChannelsPerThread = 8;  // forward / grad_feat with a shared mask
constexpr int64_t kChannelChunk = 32;      // channels per partial sum of G with a shared mask

template <typename acc_t>
struct Geometry {
  int64_t N, C, Cm, H, W, h, w;
  acc_t sy, sx;  // in / out, for bilinear
  bool linear;
  int64_t HW;    // H * W
  acc_t inv_hw;  // 1 / (H * W), the pooling scale
};

template <typename acc_t>
__device__ __forceinline__ LinearTap<acc_t> tap(const Geometry<acc_t>& g, bool along_y, int64_t d) {
  const int64_t in = along_y ? g.h : g.w, out = along_y ? g.H : g.W;
  if (g.linear) return linear_tap<acc_t>(along_y ? g.sy : g.sx, d, in, out);
  const int64_t i = nearest_src(d, in, out);
  return {i, i, acc_t(1), acc_t(0)};
}

// up(mask)[y, x] for one mask plane (h x w, contiguous), blending x before y as ATen does.
template <typename acc_t>
__device__ __forceinline__ acc_t up_value(const acc_t* plane, const Geometry<acc_t>& g, int64_t y, int64_t x) {
  if (!g.linear) return plane[nearest_src(y, g.h, g.H) * g.w + nearest_src(x, g.w, g.W)];
  const LinearTap<acc_t> ty = linear_tap<acc_t>(g.sy, y, g.h, g.H);
  const LinearTap<acc_t> tx = linear_tap<acc_t>(g.sx, x, g.w, g.W);
  const acc_t* r0 = plane + ty.i0 * g.w;
  const acc_t* r1 = plane + ty.i1 * g.w;
  const acc_t a = r0[tx.i0] * tx.w0 + r0[tx.i1] * tx.w1;
  const acc_t b = r1[tx.i0] * tx.w0 + r1[tx.i1] * tx.w1;
  return a * ty.w0 + b * ty.w1;
}

// The output coordinates [begin, end) whose taps read source index i: i0(d) <= i <= i1(d). Both
// taps are non-decreasing in d, so the set is one interval.
template <typename acc_t>
__device__ __forceinline__ void reading_range(const Geometry<acc_t>& g, bool along_y, int64_t i, int64_t& begin,
                                              int64_t& end) {
  const int64_t out = along_y ? g.H : g.W;
  int64_t lo = 0, hi = out;
  while (lo < hi) {  // first d with i1(d) >= i
    const int64_t mid = (lo + hi) / 2;
    if (tap(g, along_y, mid).i1 >= i) hi = mid; else lo = mid + 1;
  }
  begin = lo;
  hi = out;
  while (lo < hi) {  // first d with i0(d) > i
    const int64_t mid = (lo + hi) / 2;
    if (tap(g, along_y, mid).i0 > i) hi = mid; else lo = mid + 1;
  }
  end = lo;
}

template <typename acc_t>
__device__ __forceinline__ acc_t weight_of(const LinearTap<acc_t>& t, int64_t i) {
  return (t.i0 == i ? t.w0 : acc_t(0)) + (t.i1 == i ? t.w1 : acc_t(0));
}

// The upstream gradient at (row = n * C + c, pixel p): grad_out there, or grad_out[row] / (H W)
// with pool.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t grad_at(const scalar_t* grad, bool pool, acc_t inv_hw, int64_t row, int64_t HW,
                                         int64_t p) {
  return pool ? static_cast<acc_t>(grad[row]) * inv_hw : static_cast<acc_t>(grad[row * HW + p]);
}

// out[n, c, p] = v(n, c, p) * up(mask)[n, c or 0, p] with v = grad_at(src): feat (forward) or the
// upstream gradient (backward: grad_feat). One thread per pixel and group of `cpt` channels.
template <typename scalar_t, typename acc_t>
__global__ void scale_by_mask_kernel(const scalar_t* __restrict__ src, bool pool, acc_t inv_hw,
                                     const acc_t* __restrict__ mask, scalar_t* __restrict__ out, Geometry<acc_t> g,
                                     int64_t cpt, int64_t total) {
  const int64_t HW = g.H * g.W, groups = (g.C + cpt - 1) / cpt;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = t % HW, rest = t / HW, n = rest / groups;
    const int64_t c0 = (rest % groups) * cpt, c1 = c0 + cpt < g.C ? c0 + cpt : g.C;
    const int64_t y = p / g.W, x = p % g.W;
    acc_t m = g.Cm == 1 ? up_value(mask + n * g.h * g.w, g, y, x) : acc_t(0);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t row = n * g.C + c;
      if (g.Cm != 1) m = up_value(mask + row * g.h * g.w, g, y, x);
      out[row * HW + p] = static_cast<scalar_t>(grad_at<scalar_t, acc_t>(src, pool, inv_hw, row, HW, p) * m);
    }
  }
}

// out[n, c] = sum_p feat[n, c, p] * up(mask)[p] / (H W): one warp per (n, c) row.
template <typename scalar_t, typename acc_t>
__global__ void pool_kernel(const scalar_t* __restrict__ feat, const acc_t* __restrict__ mask,
                            scalar_t* __restrict__ out, Geometry<acc_t> g, acc_t inv_hw) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= g.N * g.C) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t HW = g.H * g.W, n = row / g.C;
  const acc_t* plane = mask + (g.Cm == 1 ? n : row) * g.h * g.w;
  const scalar_t* f = feat + row * HW;
  const acc_t sum = warp_sum(lane_sum<acc_t>(
      HW, lane, [&](int64_t p) { return static_cast<acc_t>(f[p]) * up_value(plane, g, p / g.W, p % g.W); }));
  if (lane == 0) out[row] = static_cast<scalar_t>(sum * inv_hw);
}

// Shared mask: partial[n, s, p] = sum over the channels c of chunk s, in order, of g * feat;
// also writes grad_feat = g * up(mask) when asked.
template <typename scalar_t, typename acc_t>
__global__ void channel_chunk_sum_kernel(const scalar_t* __restrict__ grad, bool pool, acc_t inv_hw,
                                         const scalar_t* __restrict__ feat, const acc_t* __restrict__ mask,
                                         scalar_t* __restrict__ grad_feat, acc_t* __restrict__ partial,
                                         Geometry<acc_t> g, int64_t chunks, int64_t total) {
  const int64_t HW = g.H * g.W;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = t % HW, rest = t / HW, s = rest % chunks, n = rest / chunks;
    const int64_t c0 = s * kChannelChunk, c1 = c0 + kChannelChunk < g.C ? c0 + kChannelChunk : g.C;
    const acc_t m = grad_feat ? up_value(mask + n * g.h * g.w, g, p / g.W, p % g.W) : acc_t(0);
    acc_t sum = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t row = n * g.C + c;
      const acc_t v = grad_at<scalar_t, acc_t>(grad, pool, inv_hw, row, HW, p);
      sum += v * static_cast<acc_t>(feat[row * HW + p]);
      if (grad_feat) grad_feat[row * HW + p] = static_cast<scalar_t>(v * m);
    }
    partial[t] = sum;
  }
}

// G[n, p] = sum_s partial[n, s, p], s in order (in blocks combined pairwise: C may be long).
template <typename acc_t>
__global__ void chunk_reduce_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ G, int64_t chunks,
                                    int64_t HW, int64_t total) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / HW, p = t % HW;
    BlockedSum<acc_t> sum;
    for (int64_t s = 0; s < chunks; ++s) sum.add(partial[(n * chunks + s) * HW + p]);
    G[t] = sum.total();
  }
}

// grad_mask[plane, i, j] = sum_{y reading i} w_y * sum_{x reading j} w_x * G[plane, y, x], where
// G is the buffer `shared_G` ([N, H W], shared mask) or g * feat of the plane (per-channel mask).
// For a per-channel mask the thread that owns (y, x) (i0(y) = i, i0(x) = j) also writes
// grad_feat there, so g and feat are streamed once.
template <typename scalar_t, typename acc_t>
__global__ void grad_mask_kernel(const acc_t* __restrict__ shared_G, const scalar_t* __restrict__ grad, bool pool,
                                 acc_t inv_hw, const scalar_t* __restrict__ feat, const acc_t* __restrict__ mask,
                                 scalar_t* __restrict__ grad_feat, acc_t* __restrict__ grad_mask, Geometry<acc_t> g,
                                 int64_t total) {
  const int64_t HW = g.H * g.W;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = t % g.w, i = (t / g.w) % g.h, plane = t / (g.h * g.w);
    int64_t y0, y1, x0, x1;
    reading_range(g, true, i, y0, y1);
    reading_range(g, false, j, x0, x1);
    const acc_t* mplane = mask + plane * g.h * g.w;
    // Blocked sums: one mask cell may gather from a long row or column of feat cells.
    BlockedSum<acc_t> sum;
    for (int64_t y = y0; y < y1; ++y) {
      const LinearTap<acc_t> ty = tap(g, true, y);
      BlockedSum<acc_t> row_sum;
      for (int64_t x = x0; x < x1; ++x) {
        const LinearTap<acc_t> tx = tap(g, false, x);
        const int64_t p = y * g.W + x;
        acc_t value;
        if (shared_G) {
          value = shared_G[plane * HW + p];
        } else {
          const acc_t v = grad_at<scalar_t, acc_t>(grad, pool, inv_hw, plane, HW, p);
          value = v * static_cast<acc_t>(feat[plane * HW + p]);
          if (grad_feat && ty.i0 == i && tx.i0 == j) {
            grad_feat[plane * HW + p] = static_cast<scalar_t>(v * up_value(mplane, g, y, x));
          }
        }
        row_sum.add(weight_of(tx, j) * value);
      }
      sum.add(weight_of(ty, i) * row_sum.total());
    }
    grad_mask[t] = sum.total();
  }
}

unsigned int blocks_for(int64_t total) { return grid_size(total, kThreads); }

template <typename acc_t>
Geometry<acc_t> geometry(const at::Tensor& feat, const at::Tensor& mask, bool linear) {
  Geometry<acc_t> g;
  g.N = feat.size(0), g.C = feat.size(1), g.H = feat.size(2), g.W = feat.size(3);
  g.Cm = mask.size(1), g.h = mask.size(2), g.w = mask.size(3);
  g.sy = linear_scale<acc_t>(g.h, g.H);
  g.sx = linear_scale<acc_t>(g.w, g.W);
  g.linear = linear;
  g.HW = g.H * g.W;
  g.inv_hw = acc_t(1) / static_cast<acc_t>(g.HW);
  return g;
}

// out = src * up(mask) at every pixel; src is feat, or the gradient (with row_values one value per
// (n, c) row times scale: 1 / (H W) with pool, 1 for a gradient constant over each plane).
template <typename scalar_t, typename acc_t>
void launch_scale_by_mask(const scalar_t* src, bool row_values, acc_t scale, const acc_t* mask, scalar_t* out,
                          const Geometry<acc_t>& g, cudaStream_t stream) {
  const int64_t cpt = g.Cm == 1 ? kChannelsPerThread : 1;
  const int64_t total = g.N * ((g.C + cpt - 1) / cpt) * g.HW;
  scale_by_mask_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(src, row_values, scale, mask, out, g,
                                                                                     cpt, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mask_upsample_mul_cuda(const at::Tensor& feat_in, const at::Tensor& mask_in, std::string_view mode,
                                  bool pool) {
  const c10::cuda::CUDAGuard guard(feat_in.device());
  MaskUpsampleMulForward f = prepare_mask_upsample_mul(feat_in, mask_in, mode, pool);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.feat.scalar_type(), "mask_upsample_mul_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry<acc_t> g = geometry<acc_t>(f.feat, f.mask, f.linear);
    const scalar_t* fd = f.feat.const_data_ptr<scalar_t>();
    const acc_t* md = f.mask.const_data_ptr<acc_t>();
    scalar_t* od = f.out.mutable_data_ptr<scalar_t>();
    if (!pool) return launch_scale_by_mask(fd, false, g.inv_hw, md, od, g, stream);
    pool_kernel<scalar_t, acc_t><<<grid_size(g.N * g.C, kWarpsPerBlock, INT32_MAX), kThreads, 0, stream>>>(
        fd, md, od, g, g.inv_hw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return f.out;
}

std::tuple<at::Tensor, at::Tensor> mask_upsample_mul_backward_cuda(const at::Tensor& grad_out_in,
                                                                   const at::Tensor& feat_in,
                                                                   const at::Tensor& mask_in, std::string_view mode,
                                                                   bool pool, bool need_grad_feat,
                                                                   bool need_grad_mask) {
  const c10::cuda::CUDAGuard guard(feat_in.device());
  MaskUpsampleMulBackward b = prepare_mask_upsample_mul_backward(grad_out_in, feat_in, mask_in, mode, pool,
                                                                 need_grad_feat, need_grad_mask,
                                                                 /*reads_grad_strides=*/true);
  const at::Tensor& feat = b.feat;
  const at::Tensor& mask = b.mask;
  // A gradient that is one value per (n, c) plane (the expand of .mean((2, 3)) or .sum()) is read
  // as [N, C] rows, as with pool but with a scale of 1: its [N, C, H, W] expand is never copied.
  const bool constant_planes = !pool && (grad_out_in.size(2) == 1 || grad_out_in.stride(2) == 0) &&
                               (grad_out_in.size(3) == 1 || grad_out_in.stride(3) == 0);
  const bool row_grad = pool || constant_planes;
  const at::Tensor grad = (constant_planes ? b.grad_out.select(3, 0).select(2, 0) : b.grad_out).contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.feat.scalar_type(), "mask_upsample_mul_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry<acc_t> g = geometry<acc_t>(feat, mask, b.linear);
    const int64_t N = g.N, C = g.C, HW = g.HW;
    const acc_t inv_hw = pool ? g.inv_hw : acc_t(1);
    at::Tensor& grad_mask = b.grad_mask;
    const scalar_t* gd = grad.const_data_ptr<scalar_t>();
    const scalar_t* fd = b.feat.const_data_ptr<scalar_t>();
    const acc_t* md = mask.const_data_ptr<acc_t>();
    scalar_t* gfd = need_grad_feat ? b.grad_feat.mutable_data_ptr<scalar_t>() : nullptr;
    if (!need_grad_mask) {
      if (gfd) launch_scale_by_mask(gd, row_grad, inv_hw, md, gfd, g, stream);
      return;
    }
    acc_t* gmd = grad_mask.mutable_data_ptr<acc_t>();
    const int64_t mask_total = grad_mask.numel();
    if (g.Cm != 1) {
      grad_mask_kernel<scalar_t, acc_t><<<blocks_for(mask_total), kThreads, 0, stream>>>(
          nullptr, gd, row_grad, inv_hw, fd, md, gfd, gmd, g, mask_total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int64_t chunks = (C + kChannelChunk - 1) / kChannelChunk;
    at::Tensor partial = at::empty({N, chunks, HW}, mask.options());
    channel_chunk_sum_kernel<scalar_t, acc_t><<<blocks_for(partial.numel()), kThreads, 0, stream>>>(
        gd, row_grad, inv_hw, fd, md, gfd, partial.mutable_data_ptr<acc_t>(), g, chunks, partial.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor G = partial;
    if (chunks > 1) {
      G = at::empty({N, HW}, mask.options());
      chunk_reduce_kernel<acc_t><<<blocks_for(G.numel()), kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), G.mutable_data_ptr<acc_t>(), chunks, HW, G.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_mask_kernel<scalar_t, acc_t><<<blocks_for(mask_total), kThreads, 0, stream>>>(
        G.const_data_ptr<acc_t>(), gd, row_grad, inv_hw, fd, md, nullptr, gmd, g, mask_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mask_upsample_mul_gradients(b, mask_in);
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CUDA, m) { register_forward_backward<&mask_upsample_mul_cuda, &mask_upsample_mul_backward_cuda>(m, "mask_upsample_mul"); }

}  // namespace fgreid_ops
