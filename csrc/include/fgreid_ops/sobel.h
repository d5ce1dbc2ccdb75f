// The Sobel filters of OFF (docs/ops.md#off), shared by the CPU and CUDA kernels:
//   Kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],  Ky = Kx transposed,
// applied as a cross-correlation to a 3x3 window (u = row above, m = middle row, d = row below;
// l, c, r = columns), with taps outside the plane already read as 0 (zero padding). The zero
// taps (middle column for x, middle row for y) enter as 0 * (...) so that NaN/inf spread exactly
// as in conv2d. The adjoint of a cross-correlation with K is the one with K flipped, and the
// flipped Sobel kernels are the negated ones.
#pragma once

#include "fgreid_ops/macros.h"

namespace fgreid_ops {

// The smoothing weights [1, kSobelCenter, 1] across the derivative direction.
constexpr int kSobelCenter = 2;

template <typename acc_t>
struct Window3x3 {
  acc_t ul, uc, ur, ml, mc, mr, dl, dc, dr;
};

template <typename acc_t>
FGREID_HOST_DEVICE acc_t sobel_x(const Window3x3<acc_t>& w) {
  const acc_t left = w.ul + acc_t(kSobelCenter) * w.ml + w.dl;
  const acc_t right = w.ur + acc_t(kSobelCenter) * w.mr + w.dr;
  return (right - left) + acc_t(0) * (w.uc + w.mc + w.dc);
}

template <typename acc_t>
FGREID_HOST_DEVICE acc_t sobel_y(const Window3x3<acc_t>& w) {
  const acc_t up = w.ul + acc_t(kSobelCenter) * w.uc + w.ur;
  const acc_t down = w.dl + acc_t(kSobelCenter) * w.dc + w.dr;
  return (down - up) + acc_t(0) * (w.ml + w.mc + w.mr);
}

}  // namespace fgreid_ops
