// Fused localization on CPU (docs/ops.md#mask_upsample_mul): out = feat * up(mask), up = F.interpolate(mask, (H, W),
// mode, align_corners=False), or its spatial mean with pool=True, without materializing up(mask).
//
// The resize is separable and the kernels follow ATen's order of operations: each needed source
// row of a mask plane is first resized along x (`hz`, h x W values), then output rows are blended
// along y, one tile of rows at a time (`tile`, <= kTileElems values, cache resident), and the tile is
// applied to a block of channels. Where ATen's CPU kernel sums four weighted taps instead (small
// outputs), so does the tile. The backward recomputes the tile; the mask gradient is the adjoint
// of the resize, accumulated in a fixed order (a shared mask: channels, x, y; a per-channel mask:
// y, then x) whatever the thread count, so it is deterministic. Small planes of a per-channel mask
// go 16 float32 planes at a time, interleaved, each with the arithmetic it gets alone (use_lane_blocks).
// feat is read as contiguous NCHW (other layouts are copied first); out and grad_feat are contiguous.
// grad_out is read through its strides: a plane that is one value (the expanded gradient of
// .mean((2, 3)) or .sum()) takes the pool path's per-plane coefficient, other layouts are gathered
// one tile of rows at a time.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "fgreid_ops/blocked_sum.h"
#include "fgreid_ops/fast_math.h"
#include "fgreid_ops/grad_planes.h"
#include "fgreid_ops/mask_upsample_mul_checks.h"
#include "fgreid_ops/registration.h"
#include "fgreid_ops/upsample_index.h"

namespace fgreid_ops {
namespace {

constexpr int64_t kTileElems = 4096;
constexpr int64_t kMaxChannelBlock = 128;
constexpr int64_t kGrainElems = 32768;  // at::internal::GRAIN_SIZE

// The taps of one output axis: value[d] = w0[d] * src[i0[d]] + w1[d] * src[i1[d]] (bilinear) or
// src[i0[d]] (nearest).
template <typename acc_t>
struct Axis {
  std::vector<int64_t> i0, i1;
  std::vector<acc_t> w0, w1;

  Axis(int64_t in, int64_t out, bool linear) : i0(out), i1(out), w0(out), w1(out) {
    const acc_t scale = linear_scale<acc_t>(in, out);
    for (int64_t d = 0; d < out; ++d) {
      if (linear) {
        const LinearTap<acc_t> t = linear_tap<acc_t>(scale, d, in, out);
        i0[d] = t.i0, i1[d] = t.i1, w0[d] = t.w0, w1[d] = t.w1;
      } else {
        i0[d] = i1[d] = nearest_src(d, in, out);
        w0[d] = 1, w1[d] = 0;
      }
    }
  }
};

// dst = a * wa + b * wb: the y-blend of two x-resized rows, in ATen's order.
template <typename acc_t>
FGREID_CPU_CLONES void blend(const acc_t* a, const acc_t* b, acc_t wa, acc_t wb, acc_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dst[k] = a[k] * wa + b[k] * wb;
}

// dst[x] = src[i0[x]] * w0[x] + src[i1[x]] * w1[x]. Cloned like `blend` so that the AVX2 build
// contracts it to FMAs as ATen's AVX2 upsample kernel does: fp32 results then equal
// F.interpolate's bit for bit on ATen's separable path.
template <typename acc_t>
FGREID_CPU_CLONES void resize_row(const acc_t* src, const int64_t* i0, const int64_t* i1, const acc_t* w0,
                                  const acc_t* w1, acc_t* dst, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = src[i0[x]] * w0[x] + src[i1[x]] * w1[x];
}

// ATen's small-output kernel: dst[x] = r0[i0] w00 + r0[i1] w01 + r1[i0] w10 + r1[i1] w11 with the
// weights multiplied first (w00 = wy0 * wx0, ...), summed left to right in its scalar loop and
// right to left (`nested`) in its vectorized loop over channels. With Lanes > 1 the rows hold
// Lanes interleaved planes (see use_lane_blocks), and each lane gets what Lanes = 1 computes.
template <int64_t Lanes, typename acc_t>
FGREID_CPU_CLONES void four_taps(const acc_t* r0, const acc_t* r1, acc_t wy0, acc_t wy1, const int64_t* i0,
                                 const int64_t* i1, const acc_t* w0, const acc_t* w1, acc_t* dst, int64_t n,
                                 bool nested) {
  for (int64_t x = 0; x < n; ++x) {
    const acc_t w00 = wy0 * w0[x], w01 = wy0 * w1[x], w10 = wy1 * w0[x], w11 = wy1 * w1[x];
    const acc_t *a = r0 + i0[x] * Lanes, *b = r0 + i1[x] * Lanes, *c = r1 + i0[x] * Lanes, *d = r1 + i1[x] * Lanes;
    acc_t* out = dst + x * Lanes;
    // Both forms as ATen's AVX2 build contracts them, spelled out: which product of a sum gcc
    // fuses into an FMA otherwise depends on the surrounding code. (Without hardware FMA, the
    // default clone calls libm's fma; ATen's non-AVX2 kernels round differently anyway.)
    if (nested) {
#pragma omp simd
      for (int64_t l = 0; l < Lanes; ++l) {
        out[l] = std::fma(a[l], w00, std::fma(b[l], w01, std::fma(d[l], w11, c[l] * w10)));
      }
    } else {
#pragma omp simd
      for (int64_t l = 0; l < Lanes; ++l) {
        out[l] = std::fma(d[l], w11, std::fma(c[l], w10, std::fma(a[l], w00, b[l] * w01)));
      }
    }
  }
}

template <typename acc_t>
void axpy(acc_t alpha, const acc_t* x, acc_t* y, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] += alpha * x[k];
}

// The y-adjoint's sums out[i, :] = sum over the rows y that read source row i (in y order) of
// w(y) t[y, :], fed a tile of rows at a time: each out row sums at most kSumBlock rows in place,
// then that block moves into a pairwise sum (only where the upsampling factor passes kSumBlock).
template <typename acc_t>
class ColumnAdjointSums {
 public:
  ColumnAdjointSums(int64_t h, int64_t len) : len_(len), rows_in_block_(h, 0), blocks_(h) {}

  // Starts the sums into out (h x len, zeroed by the caller).
  void start(acc_t* out) {
    out_ = out;
    std::fill(rows_in_block_.begin(), rows_in_block_.end(), 0);
  }

  void add(acc_t weight, const acc_t* row, int64_t i) {
    acc_t* dst = out_ + i * len_;
    if (rows_in_block_[i] == kSumBlock) {
      if (!blocks_[i]) blocks_[i] = std::make_unique<CascadeSums<acc_t>>(len_);
      blocks_[i]->add(dst);
      std::fill(dst, dst + len_, acc_t(0));
      rows_in_block_[i] = 0;
    }
    axpy(weight, row, dst, len_);
    ++rows_in_block_[i];
  }

  // Writes the totals of the rows that took more than one block.
  void finish() {
    for (size_t i = 0; i < blocks_.size(); ++i) {
      if (!blocks_[i]) continue;
      acc_t* dst = out_ + static_cast<int64_t>(i) * len_;
      blocks_[i]->add(dst);
      for (int64_t k = 0; k < len_; ++k) dst[k] = blocks_[i]->total(k);
      blocks_[i].reset();
    }
  }

 private:
  int64_t len_;
  acc_t* out_ = nullptr;
  std::vector<int64_t> rows_in_block_;
  std::vector<std::unique_ptr<CascadeSums<acc_t>>> blocks_;
};

template <typename acc_t>
struct Resize {
  int64_t h, w, H, W, tile_rows;
  bool linear, four_tap;
  int64_t vector_channels = 0;  // mask channels that ATen's four-tap kernel handles in vector registers
  Axis<acc_t> ys, xs;
  std::vector<char> row_used;  // source rows that some output row reads
  // The x-taps grouped by source column (CSR): column j receives weight tap_w[k] from output
  // x = tap_x[k] for k in [tap_start[j], tap_start[j + 1]), in increasing x (w0 before w1).
  // Gathering per column keeps the adjoint's sums in registers; scattering into t[i(x)] stalled
  // on store-to-load forwarding.
  std::vector<int64_t> tap_start, tap_x;
  std::vector<acc_t> tap_w;

  Resize(int64_t h_, int64_t w_, int64_t H_, int64_t W_, bool linear_, bool four_tap_, int64_t mask_channels)
      : h(h_), w(w_), H(H_), W(W_), tile_rows(std::max<int64_t>(1, kTileElems / W_)), linear(linear_),
        four_tap(linear_ && four_tap_), ys(h_, H_, linear_), xs(w_, W_, linear_), row_used(h_, 0), tap_start(w_ + 1, 0) {
    for (int64_t y = 0; y < H; ++y) row_used[ys.i0[y]] = row_used[ys.i1[y]] = 1;
    static const int64_t vector_bytes = at::get_cpu_capability() == "AVX512" ? 64 : 32;
    const int64_t lanes = vector_bytes / static_cast<int64_t>(sizeof(acc_t));
    vector_channels = mask_channels - mask_channels % lanes;
    const int taps = linear ? 2 : 1;
    for (int64_t x = 0; x < W; ++x) {
      ++tap_start[xs.i0[x] + 1];
      if (taps == 2) ++tap_start[xs.i1[x] + 1];
    }
    for (int64_t j = 0; j < w; ++j) tap_start[j + 1] += tap_start[j];
    tap_x.resize(tap_start[w]);
    tap_w.resize(tap_start[w]);
    std::vector<int64_t> next(tap_start.begin(), tap_start.end() - 1);
    for (int64_t x = 0; x < W; ++x) {
      tap_x[next[xs.i0[x]]] = x, tap_w[next[xs.i0[x]]++] = xs.w0[x];
      if (taps == 2) tap_x[next[xs.i1[x]]] = x, tap_w[next[xs.i1[x]]++] = xs.w1[x];
    }
  }

  // hz[i, x] = the x-resized source row i of one mask plane (h x w, contiguous).
  void resize_rows(const acc_t* plane, acc_t* hz) const {
    if (four_tap) return;
    for (int64_t i = 0; i < h; ++i) {
      if (!row_used[i]) continue;
      const acc_t* src = plane + i * w;
      acc_t* dst = hz + i * W;
      if (linear) {
        resize_row(src, xs.i0.data(), xs.i1.data(), xs.w0.data(), xs.w1.data(), dst, W);
      } else {
        for (int64_t x = 0; x < W; ++x) dst[x] = src[xs.i0[x]];
      }
    }
  }

  // tile[(y - y0) * W + x] = up(mask)[y, x] for y in [y0, y1), from hz (or the plane itself).
  // `channel` is the plane's channel in the mask, which decides ATen's summation order.
  void fill_tile(const acc_t* plane, int64_t channel, const acc_t* hz, int64_t y0, int64_t y1, acc_t* tile) const {
    if (four_tap) return fill_direct<1>(plane, channel < vector_channels, y0, y1, tile);
    for (int64_t y = y0; y < y1; ++y) {
      acc_t* dst = tile + (y - y0) * W;
      const acc_t* a = hz + ys.i0[y] * W;
      if (linear) {
        blend(a, hz + ys.i1[y] * W, ys.w0[y], ys.w1[y], dst, W);
      } else {
        std::copy(a, a + W, dst);
      }
    }
  }

  // Whether fill_direct computes the resize: the four-tap sum and nearest read the plane itself.
  bool direct() const { return four_tap || !linear; }

  // fill_tile for Lanes interleaved planes (value k of lane l at k * Lanes + l) where direct():
  // each lane gets its plane's fill_tile. `nested` as four_taps.
  template <int64_t Lanes>
  void fill_direct(const acc_t* planes, bool nested, int64_t y0, int64_t y1, acc_t* tile) const {
    for (int64_t y = y0; y < y1; ++y) {
      acc_t* dst = tile + (y - y0) * W * Lanes;
      if (four_tap) {
        four_taps<Lanes>(planes + ys.i0[y] * w * Lanes, planes + ys.i1[y] * w * Lanes, ys.w0[y], ys.w1[y],
                         xs.i0.data(), xs.i1.data(), xs.w0.data(), xs.w1.data(), dst, W, nested);
        continue;
      }
      const acc_t* src = planes + ys.i0[y] * w * Lanes;
      for (int64_t x = 0; x < W; ++x) std::copy_n(src + xs.i0[x] * Lanes, Lanes, dst + x * Lanes);
    }
  }

  // Adjoint of the x-resize for one row: t[j] = sum_x [i(x) = j] w(x) g[x], x in order. A
  // cell read by more than kSumBlock columns sums in blocks; the common few taps take the plain
  // loop (the same result, without BlockedSum's per-term bookkeeping in this hot loop).
  void row_adjoint(const acc_t* g, acc_t* t) const {
    if (W <= w) {
      // Downsampling: a cell gets at most a few taps, and walking the cells cost more than the
      // taps. Scattered in x order, each t[j] adds the same terms in the same order.
      std::fill(t, t + w, acc_t(0));
      for (int64_t x = 0; x < W; ++x) {
        t[xs.i0[x]] += xs.w0[x] * g[x];
        if (linear) t[xs.i1[x]] += xs.w1[x] * g[x];
      }
      return;
    }
    for (int64_t j = 0; j < w; ++j) {
      const int64_t lo = tap_start[j], hi = tap_start[j + 1];
      if (hi - lo <= kSumBlock) {
        acc_t sum = 0;
        for (int64_t k = lo; k < hi; ++k) sum += tap_w[k] * g[tap_x[k]];
        t[j] = sum;
      } else {
        BlockedSum<acc_t> sum;
        for (int64_t k = lo; k < hi; ++k) sum.add(tap_w[k] * g[tap_x[k]]);
        t[j] = sum.total();
      }
    }
  }

  // Adjoint of the y-resize for rows [y0, y1) of rows of length `len` (t holds row y at
  // (y - y0) * len): out[i, :] += sum_y [i(y) = i] w(y) t[y, :], y in order.
  void col_adjoint_rows(const acc_t* t, int64_t y0, int64_t y1, int64_t len, ColumnAdjointSums<acc_t>& out) const {
    adjoint_rows(ys, t, y0, y1, len, out);
  }

  // row_adjoint of Lanes interleaved rows u (W x Lanes) into t (w x Lanes). The terms of each
  // t[j] come in x order (w0 before w1), row_adjoint's order, in blocks of kSumBlock as there.
  template <int64_t Lanes>
  void row_adjoint_lanes(const acc_t* u, acc_t* t, ColumnAdjointSums<acc_t>& sums) const {
    std::fill_n(t, w * Lanes, acc_t(0));
    sums.start(t);
    adjoint_rows(xs, u, 0, W, Lanes, sums);
    sums.finish();
  }

 private:
  // out[i, :] += sum_d [i(d) = i] w(d) t[d, :] over d in [d0, d1), in order, for rows of `len`.
  void adjoint_rows(const Axis<acc_t>& axis, const acc_t* t, int64_t d0, int64_t d1, int64_t len,
                    ColumnAdjointSums<acc_t>& out) const {
    for (int64_t d = d0; d < d1; ++d) {
      const acc_t* row = t + (d - d0) * len;
      out.add(axis.w0[d], row, axis.i0[d]);
      if (linear) out.add(axis.w1[d], row, axis.i1[d]);
    }
  }
};

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void mul_tile(const scalar_t* f, const acc_t* m, scalar_t* out, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<scalar_t>(static_cast<acc_t>(f[k]) * m[k]);
}

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES acc_t dot_tile(const scalar_t* f, const acc_t* m, int64_t n) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) sum += static_cast<acc_t>(f[k]) * m[k];
  return sum;
}

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void scale_tile(acc_t coef, const acc_t* m, scalar_t* out, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<scalar_t>(coef * m[k]);
}

// acc[k] (+)= g[k] * f[k]; `first` overwrites, so the sum over channels needs no zeroing pass.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void mul_acc_tile(const scalar_t* g, const scalar_t* f, acc_t* acc, int64_t n, bool first) {
  if (first) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) acc[k] = static_cast<acc_t>(g[k]) * static_cast<acc_t>(f[k]);
  } else {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) acc[k] += static_cast<acc_t>(g[k]) * static_cast<acc_t>(f[k]);
  }
}

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void axpy_tile(acc_t coef, const scalar_t* f, acc_t* acc, int64_t n, bool first) {
  if (first) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) acc[k] = coef * static_cast<acc_t>(f[k]);
  } else {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) acc[k] += coef * static_cast<acc_t>(f[k]);
  }
}

// Channels per task when one mask plane serves all C channels: the x/y resize is done once per
// task, and the split does not change any result (each output sums in a fixed order).
int64_t channel_block(int64_t N, int64_t C) {
  const int64_t target_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  return std::clamp<int64_t>((N * C) / target_tasks, 1, std::min(C, kMaxChannelBlock));
}

// Planes per lane block: 64 bytes of acc_t, fixed rather than the CPU's vector width, so that
// which planes take the lane path, like every result, is the same on every CPU.
template <typename acc_t>
constexpr int64_t kLanes = 64 / static_cast<int64_t>(sizeof(acc_t));

// A per-channel mask's small planes go kLanes at a time: one plane's rows are a few values, too
// short for vector loops, so a block of planes is interleaved (value k of plane l at k * kLanes
// + l) and each step of the per-plane algorithm runs on all of them, lane by lane in the same
// order: every plane's result is the one the per-plane code gives.
template <typename acc_t>
bool use_lane_blocks(const Resize<acc_t>& rs, int64_t Cm) {
  return Cm >= kLanes<acc_t> && rs.direct() && rs.H * rs.W <= kTileElems && rs.h * rs.w <= kTileElems &&
         rs.h * rs.W <= kTileElems;
}

// The (de)interleaving copies move floats in 4 x 4 blocks through vector registers, four loads
// transposed into four stores; other types, and the tails, go one value at a time.
using Float4 = float __attribute__((vector_size(16)));

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 4.
FGREID_INLINE void transpose_4x4(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  Float4 r[4];
  for (int i = 0; i < 4; ++i) std::memcpy(&r[i], src + i * src_stride, sizeof(Float4));
  // rows 0 and 1 interleaved (lo: their values 0, 1; hi: 2, 3), likewise rows 2 and 3
  const Float4 lo01 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
  const Float4 hi01 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
  const Float4 lo23 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
  const Float4 hi23 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
  const Float4 columns[4] = {
      __builtin_shufflevector(lo01, lo23, 0, 1, 4, 5), __builtin_shufflevector(lo01, lo23, 2, 3, 6, 7),
      __builtin_shufflevector(hi01, hi23, 0, 1, 4, 5), __builtin_shufflevector(hi01, hi23, 2, 3, 6, 7)};
  for (int j = 0; j < 4; ++j) std::memcpy(dst + j * dst_stride, &columns[j], sizeof(Float4));
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: floats in whole 4 x 4
// blocks through transpose_4x4, other types and the edges one value at a time.
template <typename T>
void transpose_copy(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride) {
  int64_t block_rows = 0, block_cols = 0;  // the extent that whole 4 x 4 blocks cover
  if constexpr (std::is_same_v<T, float>) {
    block_rows = rows / 4 * 4, block_cols = cols / 4 * 4;
    for (int64_t i = 0; i < block_rows; i += 4) {
      for (int64_t j = 0; j < block_cols; j += 4) {
        transpose_4x4(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = i < block_rows ? block_cols : 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
}

// dst[k * L + l] = planes[l * stride + k] for k < len, l < L.
template <int64_t L, typename T>
void interleave(const T* planes, int64_t stride, int64_t len, T* dst) {
  transpose_copy(planes, stride, L, len, dst, L);
}

// planes[l * stride + k] = src[k * L + l] for k < len, l < L.
template <int64_t L, typename T>
void deinterleave(const T* src, int64_t len, T* planes, int64_t stride) {
  transpose_copy(src, L, len, L, planes, stride);
}

// One batch item's channels as tasks: `wide` tasks of `width` channels (the last may be short),
// then the channels left over one per task.
struct ChannelTasks {
  int64_t C, width, wide;

  int64_t per_item() const { return wide + std::max<int64_t>(0, C - wide * width); }
  // The channels [c0, c1) of task t of a batch item.
  std::pair<int64_t, int64_t> channels(int64_t t) const {
    if (t < wide) return {t * width, std::min(C, (t + 1) * width)};
    const int64_t c = wide * width + (t - wide);
    return {c, c + 1};
  }
};

// A shared mask plane serves channel blocks; a per-channel mask goes in lane blocks where it
// can, else one plane per task.
template <typename acc_t>
ChannelTasks channel_tasks(const Resize<acc_t>& rs, int64_t N, int64_t C, int64_t Cm) {
  if (Cm == 1) {
    const int64_t cb = channel_block(N, C);
    return {C, cb, (C + cb - 1) / cb};
  }
  if (use_lane_blocks(rs, Cm)) return {C, kLanes<acc_t>, C / kLanes<acc_t>};
  return {C, 1, C};
}

// A lane block's channels [c0, c0 + kLanes) lie all below Resize::vector_channels (a multiple of
// ATen's lane count, which divides kLanes, and c0 + kLanes <= C), so they share one four-tap order.
template <typename acc_t>
bool lane_block_nested(const Resize<acc_t>& rs, int64_t c0) {
  return c0 < rs.vector_channels;
}

// Tasks per chunk so that small inputs run on the calling thread, without a parallel region.
int64_t grain(int64_t elements_per_task) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elements_per_task));
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& feat, const at::Tensor& mask, bool linear, bool four_tap, bool pool,
                    at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), HW = H * W;
  const int64_t Cm = mask.size(1), h = mask.size(2), w = mask.size(3);
  constexpr int64_t L = kLanes<acc_t>;
  const Resize<acc_t> rs(h, w, H, W, linear, four_tap, Cm);
  const ChannelTasks tasks = channel_tasks(rs, N, C, Cm);
  const int64_t cb = tasks.width, per_item = tasks.per_item();
  const bool lanes = Cm > 1 && cb > 1;
  const scalar_t* fd = feat.const_data_ptr<scalar_t>();
  const acc_t* md = mask.const_data_ptr<acc_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  const int64_t tile_cap = std::min(HW, rs.tile_rows * W);

  at::parallel_for(0, N * per_item, grain(cb * HW), [&](int64_t begin, int64_t end) {
    // With lane blocks, `tile` holds the block's L planes' tiles one after another.
    std::vector<acc_t> hz(h * W), tile(tile_cap * (lanes ? L : 1)), tile_sums(cb);
    std::vector<acc_t> lane_masks(lanes ? h * w * L : 0), lane_tile(lanes ? tile_cap * L : 0);
    CascadeSums<acc_t> sums(pool ? cb : 0);  // a long plane's tiles are combined pairwise
    const bool one_tile = rs.tile_rows >= H;
    int64_t tile_plane = -1;  // the mask plane whose whole upsampled plane is in `tile`
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / per_item;
      const auto [c0, c1] = tasks.channels(task % per_item);
      const bool lane_block = Cm > 1 && c1 - c0 > 1;
      const int64_t plane_index = n * Cm + (Cm == 1 ? 0 : c0);
      const acc_t* plane = md + plane_index * h * w;
      const bool reuse = !lane_block && one_tile && plane_index == tile_plane;
      if (lane_block) {
        interleave<L>(plane, h * w, h * w, lane_masks.data());
      } else if (!reuse) {
        rs.resize_rows(plane, hz.data());
      }
      sums.reset();
      for (int64_t y0 = 0; y0 < H; y0 += rs.tile_rows) {
        const int64_t y1 = std::min(H, y0 + rs.tile_rows), len = (y1 - y0) * W;
        if (lane_block) {
          rs.template fill_direct<L>(lane_masks.data(), lane_block_nested(rs, c0), y0, y1, lane_tile.data());
          deinterleave<L>(lane_tile.data(), len, tile.data(), len);
        } else if (!reuse) {
          rs.fill_tile(plane, Cm == 1 ? 0 : c0, hz.data(), y0, y1, tile.data());
        }
        tile_plane = lane_block ? -1 : plane_index;
        for (int64_t c = c0; c < c1; ++c) {
          const acc_t* m = tile.data() + (lane_block ? (c - c0) * len : 0);
          const int64_t offset = (n * C + c) * HW + y0 * W;
          if (pool) {
            tile_sums[c - c0] = dot_tile(fd + offset, m, len);
          } else {
            mul_tile(fd + offset, m, od + offset, len);
          }
        }
        if (pool) sums.add(tile_sums.data());
      }
      if (pool) {
        for (int64_t c = c0; c < c1; ++c) od[n * C + c] = static_cast<scalar_t>(sums.total(c - c0) * inv_hw);
      }
    }
  });
}

// grad_feat = g * up(mask); grad_mask = up^T(G) with G = sum over the channels sharing a mask
// plane of g * feat. With pool, g[n, c, y, x] = grad_out[n, c] / (H W); grad_out may have any strides.
template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& feat, const at::Tensor& mask, bool linear,
                     bool four_tap, bool pool, at::Tensor& grad_feat, at::Tensor& grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), HW = H * W;
  const int64_t Cm = mask.size(1), h = mask.size(2), w = mask.size(3);
  const Resize<acc_t> rs(h, w, H, W, linear, four_tap, Cm);
  const GradPlanes<scalar_t> planes(grad_out);
  const bool constant = planes.constant();  // always with pool
  const bool gather = !constant && !planes.dense();
  const scalar_t* fd = feat.const_data_ptr<scalar_t>();
  const acc_t* md = mask.const_data_ptr<acc_t>();
  scalar_t* gfd = grad_feat.numel() > 0 ? grad_feat.mutable_data_ptr<scalar_t>() : nullptr;
  acc_t* gmd = grad_mask.numel() > 0 ? grad_mask.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  const int64_t tiles = (H + rs.tile_rows - 1) / rs.tile_rows;
  const int64_t tile_cap = std::min(HW, rs.tile_rows * W);

  // The channels [c0, c1) of batch n over rows [y0, y1), all sharing the mask tile `m`: writes
  // grad_feat there and returns G (summed over those channels, in order, in blocks of kSumBlock
  // channels combined pairwise in `channel_blocks`) in `g_sum`. `buf` holds a gathered tile of
  // grad_out when its planes are neither dense nor constant.
  const auto tile_pass = [&](int64_t n, int64_t c0, int64_t c1, int64_t y0, int64_t y1, const acc_t* m,
                             acc_t* g_sum, scalar_t* buf, CascadeSums<acc_t>& channel_blocks) {
    const int64_t len = (y1 - y0) * W;
    for (int64_t c = c0; c < c1; ++c) {
      const bool first = (c - c0) % kSumBlock == 0;
      if (gmd && first && c > c0) channel_blocks.add(g_sum);
      const int64_t offset = (n * C + c) * HW + y0 * W;
      if (constant) {
        const acc_t v = static_cast<acc_t>(*planes.plane(n, c));
        const acc_t coef = pool ? v * inv_hw : v;
        if (gfd) scale_tile(coef, m, gfd + offset, len);
        if (gmd) axpy_tile(coef, fd + offset, g_sum, len, first);
      } else {
        const scalar_t* g = planes.rows(n, c, y0, y1, buf);
        if (gfd) mul_tile(g, m, gfd + offset, len);
        if (gmd) mul_acc_tile(g, fd + offset, g_sum, len, first);
      }
    }
    if (gmd && c1 - c0 > kSumBlock) {
      channel_blocks.add(g_sum);
      for (int64_t k = 0; k < len; ++k) g_sum[k] = channel_blocks.total(k);
      channel_blocks.reset();
    }
  };

  if (Cm == 1) {
    // One mask plane per n: tasks are (n, row tile) over all channels; the x-adjoint of each
    // row goes to t_rows, and the y-adjoint runs per n once every row is done.
    at::Tensor t_rows = gmd ? at::empty({N, H, w}, mask.options()) : at::Tensor();
    acc_t* td = gmd ? t_rows.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, N * tiles, grain(C * tile_cap), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> hz(gfd ? h * W : 0), tile(gfd ? tile_cap : 0), g_sum(gmd ? tile_cap : 0);
      std::vector<scalar_t> buf(gather ? tile_cap : 0);
      CascadeSums<acc_t> channel_blocks(gmd && C > kSumBlock ? tile_cap : 0);
      int64_t hz_n = -1;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / tiles, y0 = (task % tiles) * rs.tile_rows, y1 = std::min(H, y0 + rs.tile_rows);
        if (gfd) {
          if (hz_n != n) rs.resize_rows(md + n * h * w, hz.data()), hz_n = n;
          rs.fill_tile(md + n * h * w, 0, hz.data(), y0, y1, tile.data());
        }
        tile_pass(n, 0, C, y0, y1, tile.data(), g_sum.data(), buf.data(), channel_blocks);
        if (gmd) {
          for (int64_t y = y0; y < y1; ++y) rs.row_adjoint(g_sum.data() + (y - y0) * W, td + (n * H + y) * w);
        }
      }
    });
    if (gmd) {
      at::parallel_for(0, N, grain(2 * H * w), [&](int64_t begin, int64_t end) {
        ColumnAdjointSums<acc_t> sums(h, w);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(gmd + n * h * w, gmd + (n + 1) * h * w, acc_t(0));
          sums.start(gmd + n * h * w);
          rs.col_adjoint_rows(td + n * H * w, 0, H, w, sums);
          sums.finish();
        }
      });
    }
    return;
  }
  // One mask plane per (n, c): tasks are planes, or lane blocks of planes. Here the y-adjoint goes
  // first, as vector axpys of whole rows into u (h x W), so the x-gather runs over h rows rather
  // than H.
  constexpr int64_t L = kLanes<acc_t>;
  const ChannelTasks tasks = channel_tasks(rs, N, C, Cm);
  const int64_t per_item = tasks.per_item();
  const bool lanes = tasks.width > 1;
  const int64_t lane_rows = std::clamp<int64_t>(kTileElems / (W * L), 1, H);
  at::parallel_for(0, N * per_item, grain(tasks.width * HW), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> hz(gfd ? h * W : 0), tile(gfd ? tile_cap : 0), g_sum(gmd ? tile_cap : 0),
        u(gmd ? h * W : 0);
    std::vector<scalar_t> buf(gather ? tile_cap : 0);
    CascadeSums<acc_t> unused(0);  // one channel per plane: no channel blocks
    ColumnAdjointSums<acc_t> sums(gmd ? h : 0, W);
    // The lane blocks' interleaved masks, tile, G, u and grad_mask, and their tiles and G one plane
    // after another (`plane_tiles`, `plane_g`), for tile_pass. Their tiles are smaller (lane_rows),
    // to stay in L1 (the backward's results do not depend on the tiling).
    const int64_t lane_tile_cap = lane_rows * W * L;
    std::vector<acc_t> lane_masks(lanes && gfd ? h * w * L : 0), lane_tile(lanes && gfd ? lane_tile_cap : 0),
        plane_tiles(lanes && gfd ? lane_tile_cap : 0), lane_g(lanes && gmd ? lane_tile_cap : 0),
        plane_g(lanes && gmd ? lane_tile_cap : 0), lane_u(lanes && gmd ? h * W * L : 0),
        lane_t(lanes && gmd ? h * w * L : 0);
    ColumnAdjointSums<acc_t> lane_sums(lanes && gmd ? h : 0, W * L), lane_row_sums(lanes && gmd ? w : 0, L);

    const auto lane_block_pass = [&](int64_t n, int64_t c0) {
      const int64_t plane0 = n * C + c0;
      if (gfd) interleave<L>(md + plane0 * h * w, h * w, h * w, lane_masks.data());
      if (gmd) {
        std::fill(lane_u.begin(), lane_u.end(), acc_t(0));
        lane_sums.start(lane_u.data());
      }
      for (int64_t y0 = 0; y0 < H; y0 += lane_rows) {
        const int64_t y1 = std::min(H, y0 + lane_rows), len = (y1 - y0) * W;
        if (gfd) {
          rs.template fill_direct<L>(lane_masks.data(), lane_block_nested(rs, c0), y0, y1, lane_tile.data());
          deinterleave<L>(lane_tile.data(), len, plane_tiles.data(), len);
        }
        for (int64_t l = 0; l < L; ++l) {
          const acc_t* m = gfd ? plane_tiles.data() + l * len : nullptr;
          acc_t* g = gmd ? plane_g.data() + l * len : nullptr;
          tile_pass(n, c0 + l, c0 + l + 1, y0, y1, m, g, buf.data(), unused);
        }
        if (gmd) {
          interleave<L>(plane_g.data(), len, len, lane_g.data());
          rs.col_adjoint_rows(lane_g.data(), y0, y1, W * L, lane_sums);
        }
      }
      if (!gmd) return;
      lane_sums.finish();
      for (int64_t i = 0; i < h; ++i) {
        rs.template row_adjoint_lanes<L>(lane_u.data() + i * W * L, lane_t.data() + i * w * L, lane_row_sums);
      }
      deinterleave<L>(lane_t.data(), h * w, gmd + plane0 * h * w, h * w);
    };

    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / per_item;
      const auto [c0, c1] = tasks.channels(task % per_item);
      if (c1 - c0 > 1) {
        lane_block_pass(n, c0);
        continue;
      }
      const int64_t plane = n * C + c0;
      if (gfd) rs.resize_rows(md + plane * h * w, hz.data());
      std::fill(u.begin(), u.end(), acc_t(0));
      sums.start(u.data());
      for (int64_t y0 = 0; y0 < H; y0 += rs.tile_rows) {
        const int64_t y1 = std::min(H, y0 + rs.tile_rows);
        if (gfd) rs.fill_tile(md + plane * h * w, c0, hz.data(), y0, y1, tile.data());
        tile_pass(n, c0, c1, y0, y1, tile.data(), g_sum.data(), buf.data(), unused);
        if (gmd) rs.col_adjoint_rows(g_sum.data(), y0, y1, W, sums);
      }
      if (gmd) {
        sums.finish();
        for (int64_t i = 0; i < h; ++i) rs.row_adjoint(u.data() + i * W, gmd + plane * h * w + i * w);
      }
    }
  });
}

// Whether ATen's CPU bilinear kernel would take its small-output path (_use_vectorized_kernel_cond_2d:
// a channels_last mask with more than 3 channels, or H + W <= 128), which sums four weighted taps
// instead of blending x then y. Following it makes fp32 results bit-identical to F.interpolate's.
bool aten_four_tap_path(const at::Tensor& feat, const at::Tensor& mask) {
  return (mask.is_contiguous(at::MemoryFormat::ChannelsLast) && mask.size(1) > 3) ||
         feat.size(2) + feat.size(3) <= 128;
}

at::Tensor mask_upsample_mul_cpu(const at::Tensor& feat, const at::Tensor& mask, std::string_view mode, bool pool) {
  MaskUpsampleMulForward f = prepare_mask_upsample_mul(feat, mask, mode, pool);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "mask_upsample_mul_cpu", [&] {
    forward_kernel<scalar_t>(f.feat, f.mask, f.linear, aten_four_tap_path(feat, mask), pool, f.out);
  });
  return f.out;
}

std::tuple<at::Tensor, at::Tensor> mask_upsample_mul_backward_cpu(const at::Tensor& grad_out, const at::Tensor& feat,
                                                                  const at::Tensor& mask, std::string_view mode,
                                                                  bool pool, bool need_grad_feat,
                                                                  bool need_grad_mask) {
  MaskUpsampleMulBackward b =
      prepare_mask_upsample_mul_backward(grad_out, feat, mask, mode, pool, need_grad_feat, need_grad_mask,
                                         /*reads_grad_strides=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "mask_upsample_mul_backward_cpu", [&] {
    backward_kernel<scalar_t>(b.grad_out, b.feat, b.mask, b.linear, aten_four_tap_path(feat, mask), pool, b.grad_feat,
                              b.grad_mask);
  });
  return mask_upsample_mul_gradients(b, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) { register_forward_backward<&mask_upsample_mul_cpu, &mask_upsample_mul_backward_cpu>(m, "mask_upsample_mul"); }

}  // namespace fgreid_ops
