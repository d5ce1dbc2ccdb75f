// OFF on CUDA (docs/ops.md#off): out = [Sx(a), Sy(a), b - a] with 3x3 Sobel cross-correlation, zero padding.
//
// Each block loads a tile of one plane plus a one-pixel halo into shared memory (converted to
// float, zeros outside the plane) and computes the tile from there, so every input element is
// read from DRAM once. Small planes (ResNet's 7x7 ... 28x28) are not tiled: a block takes several
// whole planes, so its threads stay busy. Inputs are addressed with their strides (planes as
// [B0, B1, C, H, W], see off_checks.h), so segment views are read in place; outputs are contiguous.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/off_checks.h"
#include "fgreid_ops/sobel.h"

namespace fgreid_ops {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kTileElems = 1024;  // outputs per block
constexpr int64_t kMaxTileSide = 64;
constexpr int kMaxPlanesPerBlock = 32;

struct Tiling {
  int tile_h, tile_w, planes_per_block;
  int64_t tiles_h, tiles_w, blocks;
};

Tiling make_tiling(int64_t planes, int64_t H, int64_t W) {
  Tiling t;
  if (H <= kMaxTileSide && W <= kMaxTileSide && H * W <= kTileElems) {
    t.tile_h = static_cast<int>(H);
    t.tile_w = static_cast<int>(W);
    t.planes_per_block = static_cast<int>(std::min<int64_t>(kMaxPlanesPerBlock, kTileElems / (H * W)));
  } else {
    const int64_t tw = std::min(W, kMaxTileSide);
    t.tile_w = static_cast<int>(tw);
    t.tile_h = static_cast<int>(std::min({H, kMaxTileSide, std::max<int64_t>(1, kTileElems / tw)}));
    t.planes_per_block = 1;
  }
  t.tiles_h = (H + t.tile_h - 1) / t.tile_h;
  t.tiles_w = (W + t.tile_w - 1) / t.tile_w;
  const int64_t groups = (planes + t.planes_per_block - 1) / t.planes_per_block;
  t.blocks = groups * t.tiles_h * t.tiles_w;
  TORCH_CHECK(t.blocks <= std::numeric_limits<int32_t>::max(), "fgreid_ops.off: input too large for one launch (",
              t.blocks, " blocks)");
  return t;
}

template <typename acc_t>
size_t smem_bytes(const Tiling& t, int tiles_per_plane) {
  return static_cast<size_t>(t.planes_per_block) * (t.tile_h + 2) * (t.tile_w + 2) * tiles_per_plane *
         sizeof(acc_t);
}

// Where a block's tile lies: planes [p0, p0 + np), rows [i0, i0 + th), columns [j0, j0 + tw).
struct BlockTile {
  int64_t p0, i0, j0;
  int np, th, tw;

  __device__ BlockTile(const Tiling& t, int64_t planes, int64_t H, int64_t W) {
    const int64_t tiles = t.tiles_h * t.tiles_w;
    const int64_t block = blockIdx.x;
    const int64_t tile = block % tiles;
    p0 = (block / tiles) * t.planes_per_block;
    i0 = (tile / t.tiles_w) * t.tile_h;
    j0 = (tile % t.tiles_w) * t.tile_w;
    np = static_cast<int>(min(static_cast<int64_t>(t.planes_per_block), planes - p0));
    th = static_cast<int>(min(static_cast<int64_t>(t.tile_h), H - i0));
    tw = static_cast<int>(min(static_cast<int64_t>(t.tile_w), W - j0));
  }
};

// Loads the halo'd tile of plane k (global offset base[k], base < 0: absent, zeros) into
// dst[k * (th + 2) * (tw + 2) + ...]; out-of-plane pixels are the zero padding.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_halo_tiles(const scalar_t* __restrict__ src, const int64_t* base,
                                                const BlockTile& bt, int64_t H, int64_t W, int64_t sh,
                                                int64_t sw, int64_t plane_shift, acc_t* dst) {
  const int pw = bt.tw + 2, pad = (bt.th + 2) * pw;
  for (int idx = threadIdx.x; idx < bt.np * pad; idx += blockDim.x) {
    const int k = idx / pad, r = idx - k * pad, li = r / pw, lj = r - li * pw;
    const int64_t gi = bt.i0 + li - 1, gj = bt.j0 + lj - 1;
    acc_t v = acc_t(0);
    if (base[k] >= 0 && gi >= 0 && gi < H && gj >= 0 && gj < W) {
      v = static_cast<acc_t>(src[base[k] + plane_shift + gi * sh + gj * sw]);
    }
    dst[idx] = v;
  }
}

// The 3x3 window whose top-left corner is s (row pitch pw) in a zero-padded tile.
template <typename acc_t>
__device__ __forceinline__ Window3x3<acc_t> tile_window(const acc_t* s, int pw) {
  return {s[0], s[1], s[2], s[pw], s[pw + 1], s[pw + 2], s[2 * pw], s[2 * pw + 1], s[2 * pw + 2]};
}

struct ForwardArgs {
  int64_t planes, B1, C, H, W;
  PlaneStrides sa, sb;
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    off_forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                       scalar_t* __restrict__ out, ForwardArgs p, Tiling t) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ int64_t a_base[kMaxPlanesPerBlock], b_base[kMaxPlanesPerBlock], o_base[kMaxPlanesPerBlock];
  const BlockTile bt(t, p.planes, p.H, p.W);
  const int64_t HW = p.H * p.W;
  for (int k = threadIdx.x; k < bt.np; k += blockDim.x) {
    const int64_t plane = bt.p0 + k, c = plane % p.C, q = plane / p.C, n1 = q % p.B1, n0 = q / p.B1;
    a_base[k] = n0 * p.sa.b0 + n1 * p.sa.b1 + c * p.sa.c;
    b_base[k] = n0 * p.sb.b0 + n1 * p.sb.b1 + c * p.sb.c;
    o_base[k] = (q * 3 * p.C + c) * HW;
  }
  __syncthreads();
  load_halo_tiles(a, a_base, bt, p.H, p.W, p.sa.h, p.sa.w, 0, tile);
  __syncthreads();
  const int pw = bt.tw + 2, pad = (bt.th + 2) * pw, area = bt.th * bt.tw;
  for (int idx = threadIdx.x; idx < bt.np * area; idx += blockDim.x) {
    const int k = idx / area, r = idx - k * area, li = r / bt.tw, lj = r - li * bt.tw;
    const acc_t* s = tile + k * pad + li * pw + lj;
    const int64_t gi = bt.i0 + li, gj = bt.j0 + lj;
    const int64_t o = o_base[k] + gi * p.W + gj;
    const acc_t bv = static_cast<acc_t>(b[b_base[k] + gi * p.sb.h + gj * p.sb.w]);
    const Window3x3<acc_t> w = tile_window(s, pw);
    out[o] = static_cast<scalar_t>(sobel_x(w));
    out[o + p.C * HW] = static_cast<scalar_t>(sobel_y(w));
    out[o + 2 * p.C * HW] = static_cast<scalar_t>(bv - s[pw + 1]);
  }
}

struct BackwardArgs {
  int64_t planes, B1in, B1out, shift, C, H, W;
  PlaneStrides sg;
};

// grad plane (n, t, c) = -Sx(g_x) - Sy(g_y) - g_t from pair (n, t) when t < B1in, plus g_t of
// pair (n, t - shift) when shift >= 0 (see OffBackwardGeometry); the adjoint stencils are -Sx
// and -Sy (sobel.h).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    off_backward_kernel(const scalar_t* __restrict__ g, scalar_t* __restrict__ grad, BackwardArgs p, Tiling t) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int64_t g_base[kMaxPlanesPerBlock], e_base[kMaxPlanesPerBlock];
  const BlockTile bt(t, p.planes, p.H, p.W);
  const int pw = bt.tw + 2, pad = (bt.th + 2) * pw, area = bt.th * bt.tw;
  acc_t* tile_x = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* tile_y = tile_x + bt.np * pad;
  const PlaneStrides& s = p.sg;
  for (int k = threadIdx.x; k < bt.np; k += blockDim.x) {
    const int64_t plane = bt.p0 + k, c = plane % p.C, q = plane / p.C, tt = q % p.B1out, n = q / p.B1out;
    g_base[k] = tt < p.B1in ? n * s.b0 + tt * s.b1 + c * s.c : -1;
    e_base[k] = (p.shift >= 0 && tt >= p.shift) ? n * s.b0 + (tt - p.shift) * s.b1 + (2 * p.C + c) * s.c : -1;
  }
  __syncthreads();
  load_halo_tiles(g, g_base, bt, p.H, p.W, s.h, s.w, 0, tile_x);
  load_halo_tiles(g, g_base, bt, p.H, p.W, s.h, s.w, p.C * s.c, tile_y);
  __syncthreads();
  const int64_t HW = p.H * p.W;
  for (int idx = threadIdx.x; idx < bt.np * area; idx += blockDim.x) {
    const int k = idx / area, r = idx - k * area, li = r / bt.tw, lj = r - li * bt.tw;
    const int64_t gi = bt.i0 + li, gj = bt.j0 + lj, hw = gi * s.h + gj * s.w;
    acc_t v = acc_t(0);
    if (g_base[k] >= 0) {
      const int off = k * pad + li * pw + lj;
      const acc_t gt = static_cast<acc_t>(g[g_base[k] + 2 * p.C * s.c + hw]);
      v = -gt - (sobel_x(tile_window(tile_x + off, pw)) + sobel_y(tile_window(tile_y + off, pw)));
    }
    if (e_base[k] >= 0) v += static_cast<acc_t>(g[e_base[k] + hw]);
    grad[(bt.p0 + k) * HW + gi * p.W + gj] = static_cast<scalar_t>(v);
  }
}

at::Tensor run_forward(const OffForwardGeometry& g) {
  const c10::cuda::CUDAGuard guard(g.a.device());
  at::Tensor out = at::empty(g.out_shape, g.a.options());
  if (out.numel() == 0) return out;
  const ForwardArgs args{g.B0 * g.B1 * g.C, g.B1, g.C, g.H, g.W, g.sa, g.sb};
  const Tiling t = make_tiling(args.planes, g.H, g.W);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.a.scalar_type(), "off_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    off_forward_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(t.blocks), kThreads, smem_bytes<acc_t>(t, 1), stream>>>(
            g.a.const_data_ptr<scalar_t>(), g.b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
            args, t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor run_backward(const OffBackwardGeometry& g) {
  const c10::cuda::CUDAGuard guard(g.grad_out.device());
  at::Tensor grad = at::empty(g.out_shape, g.grad_out.options());
  if (grad.numel() == 0) return grad;
  const BackwardArgs args{g.B0 * g.B1out * g.C, g.B1in, g.B1out, g.shift, g.C, g.H, g.W, g.sg};
  const Tiling t = make_tiling(args.planes, g.H, g.W);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.grad_out.scalar_type(), "off_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    off_backward_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(t.blocks), kThreads, smem_bytes<acc_t>(t, 2), stream>>>(
            g.grad_out.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), args, t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CUDA, m) { register_off_kernels<run_forward, run_backward>(m); }

}  // namespace fgreid_ops
