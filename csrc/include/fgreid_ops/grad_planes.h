// A gradient [N, C, H, W] read through its strides, one (n, c) plane at a time, so that the
// gradients autograd hands a backward are never materialized: `.mean((2, 3))` sends strides
// [C, 1, 0, 0], `.sum()` all zeros, and a permuted or sliced gradient arrives as it is.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace fgreid_ops {

template <typename scalar_t>
struct GradPlanes {
  const scalar_t* data;
  int64_t sn, sc, sh, sw, H, W;

  // g is [N, C, H, W], or [N, C] (the gradient of a pooled output), read as planes of one value.
  explicit GradPlanes(const at::Tensor& g)
      : data(g.const_data_ptr<scalar_t>()), sn(g.stride(0)), sc(g.stride(1)), sh(g.dim() == 4 ? g.stride(2) : 0),
        sw(g.dim() == 4 ? g.stride(3) : 0), H(g.dim() == 4 ? g.size(2) : 1), W(g.dim() == 4 ? g.size(3) : 1) {}

  // Every plane holds one value (stride 0 over H and W): the backward can work per plane.
  bool constant() const { return (H == 1 || sh == 0) && (W == 1 || sw == 0); }
  // Every plane is one contiguous run of H * W values.
  bool dense() const { return (W == 1 || sw == 1) && (H == 1 || sh == W); }

  const scalar_t* plane(int64_t n, int64_t c) const { return data + n * sn + c * sc; }

  // Rows [y0, y1) of plane (n, c) as (y1 - y0) * W consecutive values: in place when the
  // plane is dense, else gathered into buf.
  const scalar_t* rows(int64_t n, int64_t c, int64_t y0, int64_t y1, scalar_t* buf) const {
    const scalar_t* p = plane(n, c);
    if (dense()) return p + y0 * W;
    scalar_t* d = buf;
    for (int64_t y = y0; y < y1; ++y, d += W) {
      const scalar_t* r = p + y * sh;
      if (sw == 1) {
        std::copy(r, r + W, d);
      } else {
        for (int64_t x = 0; x < W; ++x) d[x] = r[x * sw];
      }
    }
    return buf;
  }
};

}  // namespace fgreid_ops
