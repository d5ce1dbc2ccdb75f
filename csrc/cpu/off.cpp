// OFF on CPU (docs/ops.md#off): out = [Sx(a), Sy(a), b - a] with 3x3 Sobel cross-correlation, zero padding.
//
// One task handles a range of (n, t, c) planes. A plane is processed in bands of rows: the band
// plus one halo row above and below is loaded (converted to float, zero rows outside the plane)
// into a flat buffer, and the stencil runs over the flattened band index k = i*W + j, so the
// vectorized loop is long even for 7x7 planes. Left/right neighbours come from k-1 / k+1 and are
// masked at the first/last column; a select (not a multiply by 0) so that a NaN in the previous
// row's last column does not leak in. Strided planes are gathered by the same load, so views
// (segment slices, channels_last, sliced W) and expanded gradients are read in place.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/fast_math.h"
#include "fgreid_ops/huge_pages.h"
#include "fgreid_ops/off_checks.h"
#include "fgreid_ops/sobel.h"

namespace fgreid_ops {
namespace {

// Elements per band: the band buffers of one task stay in L1/L2.
constexpr int64_t kBandElems = 2048;
// Planes' worth of elements per parallel task.
constexpr int64_t kGrainElems = 1 << 15;

// dst[(r - r0) * W + j] = src[r * sh + j * sw] for rows r in [r0, r1); rows outside [0, H) are 0.
template <typename scalar_t, typename acc_t>
FGREID_INLINE void load_rows(const scalar_t* src, int64_t sh, int64_t sw, int64_t H, int64_t W,
                             int64_t r0, int64_t r1, acc_t* dst) {
  const int64_t lo = std::max<int64_t>(r0, 0), hi = std::min(r1, H);
  for (int64_t k = 0; k < (lo - r0) * W; ++k) dst[k] = acc_t(0);
  for (int64_t k = (hi - r0) * W; k < (r1 - r0) * W; ++k) dst[k] = acc_t(0);
  acc_t* d = dst + (lo - r0) * W;
  if (hi > lo && sw == 0 && (sh == 0 || hi - lo == 1)) {
    // One value over the rows: the expanded gradient of .sum() or .mean((-2, -1)).
    std::fill(d, d + (hi - lo) * W, static_cast<acc_t>(src[lo * sh]));
    return;
  }
  if (sw == 1 && (sh == W || hi - lo == 1)) {
    const scalar_t* s = src + lo * sh;
    const int64_t n = (hi - lo) * W;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) d[k] = static_cast<acc_t>(s[k]);
    return;
  }
  for (int64_t r = lo; r < hi; ++r, d += W) {
    const scalar_t* s = src + r * sh;
    if (sw == 1) {
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) d[j] = static_cast<acc_t>(s[j]);
    } else {
      for (int64_t j = 0; j < W; ++j) d[j] = static_cast<acc_t>(s[j * sw]);
    }
  }
}

// Per-task scratch: the halo'd band of one or two inputs, one plain band, the column masks.
template <typename acc_t>
struct Workspace {
  int64_t W, band_rows;
  std::vector<acc_t> q0, q1, plain0, plain1, left, right;

  Workspace(int64_t H, int64_t W_) : W(W_) {
    band_rows = std::min(H, std::max<int64_t>(1, kBandElems / W));
    const int64_t n = band_rows * W;
    q0.resize(n + 2 * W + 2);
    q1.resize(n + 2 * W + 2);
    plain0.resize(n);
    plain1.resize(n);
    left.resize(n);
    right.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      left[k] = (k % W) > 0 ? acc_t(1) : acc_t(0);
      right[k] = (k % W) < W - 1 ? acc_t(1) : acc_t(0);
    }
  }
};

// Loads rows [i0 - 1, i0 + rows] of a plane into q with one zero before and after, and returns
// the pointer c with c[k] = plane[i0 + k / W][k % W]; c[k +- W +- 1] are then all in bounds.
template <typename scalar_t, typename acc_t>
FGREID_INLINE const acc_t* load_halo_band(const scalar_t* src, int64_t sh, int64_t sw, int64_t H,
                                          int64_t W, int64_t i0, int64_t rows, acc_t* q) {
  q[0] = acc_t(0);
  load_rows(src, sh, sw, H, W, i0 - 1, i0 + rows + 1, q + 1);
  q[1 + (rows + 2) * W] = acc_t(0);
  return q + 1 + W;
}

// The 3x3 window around flat index k of a halo'd band; the left/right columns are masked at the
// first/last column of a row (k - 1 and k + 1 are then the neighbouring rows' pixels). Every
// address is inside the band (one guard element before and after), so the loads are
// unconditional and only the values are selected: written as `l ? c[k - 1] : 0`, gcc emits
// masked vector loads (vmaskmovps), which made the stencil compute-bound.
template <typename acc_t>
FGREID_INLINE Window3x3<acc_t> band_window(const acc_t* c, int64_t k, int64_t W, bool l, bool r) {
  const acc_t z = acc_t(0);
  const acc_t ul = c[k - W - 1], ur = c[k - W + 1], ml = c[k - 1], mr = c[k + 1], dl = c[k + W - 1],
              dr = c[k + W + 1];
  return {l ? ul : z, c[k - W], r ? ur : z, l ? ml : z, c[k], r ? mr : z, l ? dl : z, c[k + W], r ? dr : z};
}

// sobel_x(band_window(c, k, W, l, r)) with one select per side column instead of one per tap:
// a masked column's weighted sum is +0 either way (the same bits), and the backward's two
// windows then take 8 selects instead of 12.
template <typename acc_t>
FGREID_INLINE acc_t band_sobel_x(const acc_t* c, int64_t k, int64_t W, bool l, bool r) {
  const acc_t z = acc_t(0);
  const acc_t left = c[k - W - 1] + acc_t(kSobelCenter) * c[k - 1] + c[k + W - 1];
  const acc_t right = c[k - W + 1] + acc_t(kSobelCenter) * c[k + 1] + c[k + W + 1];
  return ((r ? right : z) - (l ? left : z)) + z * (c[k - W] + c[k] + c[k + W]);
}

// out_x, out_y, out_t of one plane (contiguous H x W each).
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void off_forward_plane(const scalar_t* a, const scalar_t* b, const PlaneStrides& sa,
                                         const PlaneStrides& sb, int64_t H, int64_t W, scalar_t* ox,
                                         scalar_t* oy, scalar_t* ot, Workspace<acc_t>& ws) {
  const acc_t* ml = ws.left.data();
  const acc_t* mr = ws.right.data();
  for (int64_t i0 = 0; i0 < H; i0 += ws.band_rows) {
    const int64_t rows = std::min(ws.band_rows, H - i0), n = rows * W, o = i0 * W;
    const acc_t* c = load_halo_band(a, sa.h, sa.w, H, W, i0, rows, ws.q0.data());
    acc_t* bb = ws.plain0.data();
    load_rows(b, sb.h, sb.w, H, W, i0, i0 + rows, bb);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const bool l = ml[k] != acc_t(0), r = mr[k] != acc_t(0);
      const Window3x3<acc_t> w = band_window(c, k, W, l, r);
      ox[o + k] = static_cast<scalar_t>(sobel_x(w));
      oy[o + k] = static_cast<scalar_t>(sobel_y(w));
      ot[o + k] = static_cast<scalar_t>(bb[k] - c[k]);
    }
  }
}

// One plane of a backward pass (see OffBackwardGeometry): gx/gy/gt may be null (frame not an `a`
// of any pair), extra may be null (frame not a `b`); the adjoint of a cross-correlation with K
// is the cross-correlation with K flipped (sobel.h): -Sx and -Sy.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void off_backward_plane(const scalar_t* gx, const scalar_t* gy, const scalar_t* gt,
                                          const scalar_t* extra, const PlaneStrides& sg, int64_t H,
                                          int64_t W, scalar_t* out, Workspace<acc_t>& ws) {
  const acc_t* ml = ws.left.data();
  const acc_t* mr = ws.right.data();
  for (int64_t i0 = 0; i0 < H; i0 += ws.band_rows) {
    const int64_t rows = std::min(ws.band_rows, H - i0), n = rows * W, o = i0 * W;
    acc_t* tt = ws.plain0.data();
    acc_t* ee = ws.plain1.data();
    if (extra != nullptr) {
      load_rows(extra, sg.h, sg.w, H, W, i0, i0 + rows, ee);
    } else {
      std::fill(ee, ee + n, acc_t(0));
    }
    if (gx == nullptr) {
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) out[o + k] = static_cast<scalar_t>(ee[k]);
      continue;
    }
    const acc_t* cx = load_halo_band(gx, sg.h, sg.w, H, W, i0, rows, ws.q0.data());
    const acc_t* cy = load_halo_band(gy, sg.h, sg.w, H, W, i0, rows, ws.q1.data());
    load_rows(gt, sg.h, sg.w, H, W, i0, i0 + rows, tt);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const bool l = ml[k] != acc_t(0), r = mr[k] != acc_t(0);
      const acc_t v = ee[k] - tt[k] - (band_sobel_x(cx, k, W, l, r) + sobel_y(band_window(cy, k, W, l, r)));
      out[o + k] = static_cast<scalar_t>(v);
    }
  }
}

int64_t grain_planes(int64_t H, int64_t W) { return std::max<int64_t>(1, kGrainElems / (H * W)); }

template <typename scalar_t>
void off_forward_kernel(const OffForwardGeometry& g, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C, H = g.H, W = g.W, HW = H * W;
  const scalar_t* a = g.a.const_data_ptr<scalar_t>();
  const scalar_t* b = g.b.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.B0 * g.B1 * C, grain_planes(H, W), [&](int64_t begin, int64_t end) {
    Workspace<acc_t> ws(H, W);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C, q = p / C, n1 = q % g.B1, n0 = q / g.B1;
      const scalar_t* ap = a + n0 * g.sa.b0 + n1 * g.sa.b1 + c * g.sa.c;
      const scalar_t* bp = b + n0 * g.sb.b0 + n1 * g.sb.b1 + c * g.sb.c;
      scalar_t* ox = o + (q * 3 * C + c) * HW;
      off_forward_plane<scalar_t, acc_t>(ap, bp, g.sa, g.sb, H, W, ox, ox + C * HW, ox + 2 * C * HW, ws);
    }
  });
}

template <typename scalar_t>
void off_backward_kernel(const OffBackwardGeometry& g, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C, H = g.H, W = g.W, HW = H * W;
  const scalar_t* go = g.grad_out.const_data_ptr<scalar_t>();
  scalar_t* gr = grad.mutable_data_ptr<scalar_t>();
  const PlaneStrides& s = g.sg;
  at::parallel_for(0, g.B0 * g.B1out * C, grain_planes(H, W), [&](int64_t begin, int64_t end) {
    Workspace<acc_t> ws(H, W);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C, q = p / C, t = q % g.B1out, n = q / g.B1out;
      const scalar_t *gx = nullptr, *gy = nullptr, *gt = nullptr, *extra = nullptr;
      if (t < g.B1in) {
        gx = go + n * s.b0 + t * s.b1 + c * s.c;
        gy = gx + C * s.c;
        gt = gx + 2 * C * s.c;
      }
      if (g.shift >= 0 && t >= g.shift) extra = go + n * s.b0 + (t - g.shift) * s.b1 + (2 * C + c) * s.c;
      off_backward_plane<scalar_t, acc_t>(gx, gy, gt, extra, s, H, W, gr + p * HW, ws);
    }
  });
}

at::Tensor run_forward(const OffForwardGeometry& g) {
  at::Tensor out = empty_output(g.out_shape, g.a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.a.scalar_type(), "off_cpu", [&] {
    off_forward_kernel<scalar_t>(g, out);
  });
  return out;
}

at::Tensor run_backward(const OffBackwardGeometry& g) {
  at::Tensor grad = empty_output(g.out_shape, g.grad_out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.grad_out.scalar_type(), "off_backward_cpu", [&] {
    off_backward_kernel<scalar_t>(g, grad);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) { register_off_kernels<run_forward, run_backward>(m); }

}  // namespace fgreid_ops
