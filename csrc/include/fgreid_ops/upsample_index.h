// Source coordinates of F.interpolate(..., align_corners=False) for one output coordinate, written
// exactly as ATen computes them (ATen/native/UpSample.h: area_pixel_compute_scale,
// area_pixel_compute_source_index, guard_index_and_lambda, compute_source_index_and_lambda,
// nearest_idx), so a kernel that calls these per pixel reproduces the upsampled mask without
// ever materializing it. Shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "fgreid_ops/macros.h"

namespace fgreid_ops {

// One output coordinate of a linear resize: value = w0 * src[i0] + w1 * src[i1].
template <typename acc_t>
struct LinearTap {
  int64_t i0, i1;
  acc_t w0, w1;
};

// scale = in / out in the accumulation type (float for float/half/bfloat16, double for double):
// ATen's compute_scales_value<opmath_t> when the output size is given (scales unset).
template <typename acc_t>
FGREID_HOST_DEVICE acc_t linear_scale(int64_t in, int64_t out) {
  return static_cast<acc_t>(in) / static_cast<acc_t>(out);
}

// a * b + c with one rounding. ATen's CPU kernels (built with FMA contraction for AVX2) and nvcc
// (fmad on by default) both fuse `scale * (dst + 0.5) - 0.5`; an unfused product shifts some
// weights by an ulp.
FGREID_HOST_DEVICE float fused_mul_add(float a, float b, float c) { return fmaf(a, b, c); }
FGREID_HOST_DEVICE double fused_mul_add(double a, double b, double c) { return fma(a, b, c); }

template <typename acc_t>
FGREID_HOST_DEVICE LinearTap<acc_t> linear_tap(acc_t scale, int64_t dst, int64_t in, int64_t out) {
  if (in == out) return {dst, dst, acc_t(1), acc_t(0)};
  acc_t src = fused_mul_add(scale, static_cast<acc_t>(dst) + acc_t(0.5), acc_t(-0.5));
  src = src < acc_t(0) ? acc_t(0) : src;
  // floorf, as ATen's guard_index_and_lambda: for double the source index is floored in float.
  int64_t i0 = static_cast<int64_t>(floorf(static_cast<float>(src)));
  i0 = i0 < in - 1 ? i0 : in - 1;
  acc_t lambda = src - static_cast<acc_t>(i0);
  lambda = lambda < acc_t(0) ? acc_t(0) : (lambda > acc_t(1) ? acc_t(1) : lambda);
  return {i0, i0 < in - 1 ? i0 + 1 : i0, acc_t(1) - lambda, lambda};
}

// Legacy "nearest" (not "nearest-exact"): src = min(floor(dst * (in / out)), in - 1) in float,
// with ATen's exact shortcuts for out == in and out == 2 in.
FGREID_HOST_DEVICE int64_t nearest_src(int64_t dst, int64_t in, int64_t out) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const int64_t i = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return i < in - 1 ? i : in - 1;
}

}  // namespace fgreid_ops
