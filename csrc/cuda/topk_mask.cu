// Top-k attention exploration on CUDA (docs/ops.md#topk_mask, CUHS eq. 5-6). Three launches:
//   1. partial channel sums of f1: one thread per (n, chunk of 64 channels, hw) for NCHW
//      (coalesced over hw), one warp per (n, hw) for channels_last (coalesced over c). No
//      atomics, so A is the same on every run.
//   2. one block per sample: A = sum of the partials in chunk order, then an MSB radix select
//      on the order keys of A finds the k-th largest key T; positions with key > T are zeroed,
//      and of those equal to T the lowest flat indices, counted with a block-wide ballot scan.
//   3. out = f2 * mask with 16-byte vector loads where the layout allows; with pool, the masked
//      mean over H x W instead (one warp per (n, c) row, or one thread per (n, c) for
//      channels_last), the product never written.
// Contiguous and channels_last inputs are read in place; other strides are copied first. The
// gradient is read through its strides (expanded gradients of .mean() or .sum() are not copied).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <torch/library.h>

#include <climits>
#include <cstdint>

#include "fgreid_ops/cuda_utils.cuh"
#include "fgreid_ops/order_key.h"
#include "fgreid_ops/registration.h"
#include "fgreid_ops/topk_mask_checks.h"

namespace fgreid_ops {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kChannelChunk = 64;
constexpr int kThreads = 256;
constexpr int kSumWarpsPerBlock = 8;
constexpr int kSelectThreads = 256;
constexpr int kSelectWarps = kSelectThreads / kWarpSize;
constexpr int kRadixBins = 256;

// partial[n, j, hw] = sum_{c in chunk j} f1[n, c, hw] for contiguous NCHW f1; one thread each.
template <typename scalar_t, typename acc_t>
__global__ void partial_sum_nchw_kernel(const scalar_t* __restrict__ f1, acc_t* __restrict__ partial,
                                        int64_t total, int64_t C, int64_t HW, int64_t chunks) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t hw = t % HW, task = t / HW;
  const int64_t n = task / chunks, c0 = (task % chunks) * kChannelChunk;
  const int64_t cn = C - c0 < kChannelChunk ? C - c0 : kChannelChunk;
  const scalar_t* x = f1 + (n * C + c0) * HW + hw;
  // Four independent sums keep four loads in flight per thread.
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t c = 0;
  for (; c + 4 <= cn; c += 4) {
    s0 += static_cast<acc_t>(x[c * HW]);
    s1 += static_cast<acc_t>(x[(c + 1) * HW]);
    s2 += static_cast<acc_t>(x[(c + 2) * HW]);
    s3 += static_cast<acc_t>(x[(c + 3) * HW]);
  }
  for (; c < cn; ++c) s0 += static_cast<acc_t>(x[c * HW]);
  partial[t] = (s0 + s1) + (s2 + s3);
}

// attention[n, hw] = sum_c f1[n, hw, c] for channels_last f1; one warp per position.
template <typename scalar_t, typename acc_t>
__global__ void channel_sum_nhwc_kernel(const scalar_t* __restrict__ f1, acc_t* __restrict__ attention,
                                        int64_t positions, int64_t C) {
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * kSumWarpsPerBlock + threadIdx.x / kWarpSize;
  if (pos >= positions) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const scalar_t* x = f1 + pos * C;
  const acc_t sum = warp_sum(lane_sum<acc_t>(C, lane, [&](int64_t c) { return static_cast<acc_t>(x[c]); }));
  if (lane == 0) attention[pos] = sum;
}

// One block per sample, 0 < k < HW <= INT_MAX. mask[n, i] = 0 for the k positions of largest
// A (ties: lower i first; NaN largest), 1 elsewhere.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSelectThreads)
select_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ attention, scalar_t* __restrict__ mask,
              int HW, int64_t chunks, int k) {
  using key_t = decltype(order_key(acc_t(0)));
  __shared__ int hist[kRadixBins];
  __shared__ int warp_counts[kSelectWarps];
  __shared__ int s_bin, s_remaining;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int64_t n = blockIdx.x;
  const acc_t* p = partial + n * chunks * HW;
  acc_t* a = attention + n * HW;
  for (int i = tid; i < HW; i += kSelectThreads) {
    CascadeSum<acc_t> s;  // pairwise over the chunks: C may be long
    for (int64_t j = 0; j < chunks; ++j) s.add(p[j * HW + i]);
    a[i] = s.total();
  }
  __syncthreads();  // makes the block's global writes of a visible to the whole block

  // Radix select from the most significant byte: after each pass, prefix holds the top bytes of
  // the k-th largest key and remaining how many keys with that prefix are still to be taken.
  key_t prefix = 0, prefix_mask = 0;
  int remaining = k;
  for (int shift = static_cast<int>(sizeof(key_t)) * 8 - 8; shift >= 0; shift -= 8) {
    for (int b = tid; b < kRadixBins; b += kSelectThreads) hist[b] = 0;
    __syncthreads();
    for (int i = tid; i < HW; i += kSelectThreads) {
      const key_t key = order_key(a[i]);
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[static_cast<int>((key >> shift) & 0xff)], 1);
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns bins 255 - 8l ... 248 - 8l (largest first); a warp scan finds the bin where
      // the running count from the top reaches `remaining`.
      int counts[8];
      int lane_total = 0;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        counts[q] = hist[kRadixBins - 1 - (lane * 8 + q)];
        lane_total += counts[q];
      }
      int inclusive = lane_total;
#pragma unroll
      for (int offset = 1; offset < kWarpSize; offset *= 2) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += v;
      }
      const unsigned reached = __ballot_sync(0xffffffffu, inclusive >= remaining);
      if (lane == __ffs(reached) - 1) {
        int cumulative = inclusive - lane_total;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (cumulative + counts[q] >= remaining) {
            s_bin = kRadixBins - 1 - (lane * 8 + q);
            s_remaining = remaining - cumulative;
            break;
          }
          cumulative += counts[q];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<key_t>(s_bin) << shift;
    prefix_mask |= static_cast<key_t>(0xff) << shift;
    remaining = s_remaining;
    __syncthreads();  // everyone has read s_bin before the next pass rewrites it
  }

  // prefix is now the k-th largest key T: keys above T are zeroed, and the first `remaining`
  // keys equal to T in index order.
  int equal_before_tile = 0;
  for (int base = 0; base < HW; base += kSelectThreads) {
    const int i = base + tid;
    const bool valid = i < HW;
    const key_t key = valid ? order_key(a[i]) : key_t(0);
    const bool equal = valid && key == prefix;
    const unsigned ballot = __ballot_sync(0xffffffffu, equal);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = equal_before_tile + __popc(ballot & ((1u << lane) - 1u));
    int tile_total = 0;
    for (int w = 0; w < kSelectWarps; ++w) {
      if (w < warp) before += warp_counts[w];
      tile_total += warp_counts[w];
    }
    if (valid) {
      const bool zero = key > prefix || (equal && before < remaining);
      mask[n * HW + i] = static_cast<scalar_t>(zero ? 0 : 1);
    }
    equal_before_tile += tile_total;
    __syncthreads();  // warp_counts is rewritten by the next tile
  }
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// out = x * mask, the mask [N, 1, H, W] broadcast over channels, VEC elements per step.
// NCHW: `inner` divides by the vectors per row (HW / VEC) and `channels` by C;
// channels_last: `inner` divides by the vectors per position (C / VEC).
template <typename scalar_t, int VEC, bool CHANNELS_LAST, typename index_t>
__global__ void masked_multiply_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ mask,
                                       scalar_t* __restrict__ out, index_t total_vec,
                                       IntDivider<index_t> inner, IntDivider<index_t> channels) {
  using acc_t = at::opmath_type<scalar_t>;
  using pack_t = Pack<scalar_t, VEC>;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t v = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total_vec; v += stride) {
    const int64_t e = static_cast<int64_t>(v) * VEC;
    const pack_t xv = *reinterpret_cast<const pack_t*>(x + e);
    pack_t ov;
    if constexpr (CHANNELS_LAST) {
      const acc_t m = static_cast<acc_t>(mask[inner.div(v)]);
#pragma unroll
      for (int q = 0; q < VEC; ++q) ov.v[q] = static_cast<scalar_t>(static_cast<acc_t>(xv.v[q]) * m);
    } else {
      const auto row_col = inner.divmod(v);
      const index_t n = channels.div(row_col.div);
      const int64_t m_offset = (static_cast<int64_t>(n) * inner.divisor + row_col.mod) * VEC;
      const pack_t mv = *reinterpret_cast<const pack_t*>(mask + m_offset);
#pragma unroll
      for (int q = 0; q < VEC; ++q) {
        ov.v[q] = static_cast<scalar_t>(static_cast<acc_t>(xv.v[q]) * static_cast<acc_t>(mv.v[q]));
      }
    }
    *reinterpret_cast<pack_t*>(out + e) = ov;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename scalar_t, int VEC, bool CHANNELS_LAST, typename index_t>
void launch_multiply(const scalar_t* x, const scalar_t* m, scalar_t* o, int64_t total_vec, int64_t inner,
                     int64_t C, cudaStream_t stream) {
  const unsigned int grid = grid_size(total_vec, kThreads, int64_t(1) << 30);
  masked_multiply_kernel<scalar_t, VEC, CHANNELS_LAST, index_t><<<grid, kThreads, 0, stream>>>(
      x, m, o, static_cast<index_t>(total_vec), IntDivider<index_t>(static_cast<index_t>(inner)),
      IntDivider<index_t>(static_cast<index_t>(C)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC, bool CHANNELS_LAST>
void launch_multiply_indexed(const scalar_t* x, const scalar_t* m, scalar_t* o, int64_t total_vec, int64_t inner,
                             int64_t C, cudaStream_t stream) {
  if (total_vec * VEC <= INT32_MAX) {
    launch_multiply<scalar_t, VEC, CHANNELS_LAST, uint32_t>(x, m, o, total_vec, inner, C, stream);
  } else {
    launch_multiply<scalar_t, VEC, CHANNELS_LAST, int64_t>(x, m, o, total_vec, inner, C, stream);
  }
}

// x and out share their layout (contiguous or channels_last); mask is contiguous [N, 1, H, W].
template <typename scalar_t>
void masked_multiply(const at::Tensor& x, const at::Tensor& mask, at::Tensor& out, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3), total = x.numel();
  if (total == 0) return;
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  const scalar_t* md = mask.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  const bool aligned = aligned16(xd) && aligned16(od) && aligned16(md);
  if (is_channels_last_4d(x)) {
    if (aligned && C % VEC == 0) {
      launch_multiply_indexed<scalar_t, VEC, true>(xd, md, od, total / VEC, C / VEC, C, stream);
    } else {
      launch_multiply_indexed<scalar_t, 1, true>(xd, md, od, total, C, C, stream);
    }
  } else if (aligned && HW % VEC == 0) {
    launch_multiply_indexed<scalar_t, VEC, false>(xd, md, od, total / VEC, HW / VEC, C, stream);
  } else {
    launch_multiply_indexed<scalar_t, 1, false>(xd, md, od, total, HW, C, stream);
  }
}

// out[n, c] = mean_hw x[n, c, hw] * mask[n, hw] for contiguous NCHW x; one warp per row.
template <typename scalar_t>
__global__ void masked_mean_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ mask,
                                        scalar_t* __restrict__ out, int64_t rows, int64_t C, int64_t HW) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSumWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const scalar_t* xr = x + row * HW;
  const scalar_t* m = mask + (row / C) * HW;
  const acc_t sum = warp_sum(lane_sum<acc_t>(
      HW, lane, [&](int64_t i) { return static_cast<acc_t>(xr[i]) * static_cast<acc_t>(m[i]); }));
  if (lane == 0) out[row] = static_cast<scalar_t>(sum / static_cast<acc_t>(HW));
}

// The same for channels_last x; one thread per (n, c), coalesced over c.
template <typename scalar_t>
__global__ void masked_mean_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ mask,
                                        scalar_t* __restrict__ out, int64_t rows, int64_t C, int64_t HW) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int64_t n = row / C, c = row % C;
  const scalar_t* xn = x + n * HW * C + c;
  const scalar_t* m = mask + n * HW;
  BlockedSum<acc_t> sum;  // HW may be long
  for (int64_t i = 0; i < HW; ++i) sum.add(static_cast<acc_t>(xn[i * C]) * static_cast<acc_t>(m[i]));
  out[row] = static_cast<scalar_t>(sum.total() / static_cast<acc_t>(HW));
}

// grad_f2[n, c, hw] = (g[n, c] / HW, rounded to the dtype as autograd's mean backward) * mask[n, hw].
template <typename scalar_t>
__global__ void pooled_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ mask,
                                       scalar_t* __restrict__ out, int64_t total, int64_t C, int64_t HW,
                                       int64_t sn, int64_t sc) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t hw = e % HW, row = e / HW, n = row / C, c = row % C;
    const scalar_t v = static_cast<scalar_t>(static_cast<acc_t>(g[n * sn + c * sc]) / static_cast<acc_t>(HW));
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(v) * static_cast<acc_t>(mask[n * HW + hw]));
  }
}

// grad_f2 = grad_out * mask into contiguous NCHW, grad_out read through its strides (stride-0
// expanded gradients hit the same cache lines).
template <typename scalar_t>
__global__ void masked_multiply_strided_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ mask,
                                               scalar_t* __restrict__ out, int64_t total, int64_t C, int64_t H,
                                               int64_t W, int64_t sn, int64_t sc, int64_t sh, int64_t sw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t x = e % W, y = (e / W) % H, row = e / (H * W), n = row / C, c = row % C;
    const acc_t v = static_cast<acc_t>(g[n * sn + c * sc + y * sh + x * sw]);
    out[e] = static_cast<scalar_t>(v * static_cast<acc_t>(mask[(n * H + y) * W + x]));
  }
}

unsigned int grid_for(int64_t total) { return grid_size(total, kThreads, int64_t(1) << 30); }

template <typename scalar_t>
void masked_mean(const at::Tensor& x, const at::Tensor& mask, at::Tensor& out, cudaStream_t stream) {
  const int64_t rows = x.size(0) * x.size(1), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  const scalar_t* md = mask.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  if (is_channels_last_4d(x)) {
    masked_mean_nhwc_kernel<scalar_t><<<grid_for(rows), kThreads, 0, stream>>>(xd, md, od, rows, C, HW);
  } else {
    const int64_t blocks = (rows + kSumWarpsPerBlock - 1) / kSumWarpsPerBlock;
    masked_mean_nchw_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kSumWarpsPerBlock * kWarpSize, 0, stream>>>(
        xd, md, od, rows, C, HW);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void build_mask(const at::Tensor& f1, int64_t k, at::Tensor& mask, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = f1.size(0), C = f1.size(1), HW = f1.size(2) * f1.size(3);
  const auto acc_options = f1.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const scalar_t* x = f1.const_data_ptr<scalar_t>();
  at::Tensor partial;
  int64_t chunks = 1;
  if (is_channels_last_4d(f1)) {
    partial = at::empty({N, 1, HW}, acc_options);
    const int64_t positions = N * HW;
    channel_sum_nhwc_kernel<scalar_t, acc_t><<<grid_size(positions, kSumWarpsPerBlock, INT_MAX),
                                               kSumWarpsPerBlock * kWarpSize, 0, stream>>>(x, partial.mutable_data_ptr<acc_t>(), positions, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    chunks = (C + kChannelChunk - 1) / kChannelChunk;
    partial = at::empty({N, chunks, HW}, acc_options);
    const int64_t total = N * chunks * HW;
    partial_sum_nchw_kernel<scalar_t, acc_t><<<grid_size(total, kThreads, INT_MAX), kThreads, 0, stream>>>(
        x, partial.mutable_data_ptr<acc_t>(), total, C, HW, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor attention = at::empty({N, HW}, acc_options);
  select_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(N), kSelectThreads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), attention.mutable_data_ptr<acc_t>(), mask.mutable_data_ptr<scalar_t>(),
      static_cast<int>(HW), chunks, static_cast<int>(k));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> topk_mask_cuda(const at::Tensor& f1, const at::Tensor& f2, int64_t k,
                                                  bool pool) {
  const c10::cuda::CUDAGuard guard(f1.device());
  TopkMaskForward t = prepare_topk_mask(f1, f2, k, pool);
  const int64_t N = f2.size(0), HW = f2.size(2) * f2.size(3);
  TORCH_CHECK_VALUE(HW <= INT_MAX && N <= INT_MAX,
                    "fgreid_ops.topk_mask: expected f1 with N and H*W below 2^31 on CUDA, got ", f1.sizes());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f2.scalar_type(), "topk_mask_cuda", [&] {
    if (k == 0 || k >= HW) {
      t.mask.fill_(k == 0 ? 1 : 0);
    } else {
      build_mask<scalar_t>(t.f1, k, t.mask, stream);
    }
    if (pool) {
      masked_mean<scalar_t>(t.f2, t.mask, t.out, stream);
    } else {
      masked_multiply<scalar_t>(t.f2, t.mask, t.out, stream);
    }
  });
  return {t.out, t.mask};
}

// grad_out is [N, C, H, W], or [N, C] (the gradient of the pooled output) with pool.
at::Tensor topk_mask_backward_cuda(const at::Tensor& grad_out, const at::Tensor& mask, bool pool) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  TopkMaskBackward t = prepare_topk_mask_backward(grad_out, mask, pool);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool in_place_layout = grad_out.is_contiguous() || is_channels_last_4d(grad_out);
  const int64_t total = t.grad_f2.numel();
  if (total == 0) return t.grad_f2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "topk_mask_backward_cuda", [&] {
    const scalar_t* gd = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* md = t.mask.const_data_ptr<scalar_t>();
    scalar_t* od = t.grad_f2.mutable_data_ptr<scalar_t>();
    if (pool) {
      pooled_backward_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
          gd, md, od, total, grad_out.size(1), t.mask.size(2) * t.mask.size(3), grad_out.stride(0), grad_out.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else if (in_place_layout) {
      masked_multiply<scalar_t>(grad_out, t.mask, t.grad_f2, stream);
    } else {
      masked_multiply_strided_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
          gd, md, od, total, grad_out.size(1), grad_out.size(2), grad_out.size(3), grad_out.stride(0),
          grad_out.stride(1), grad_out.stride(2), grad_out.stride(3));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return t.grad_f2;
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CUDA, m) { register_forward_backward<&topk_mask_cuda, &topk_mask_backward_cuda>(m, "topk_mask"); }

}  // namespace fgreid_ops
