// Branch-free float32 log/exp (Cephes polynomials, ~2 ulp on normal inputs) written with plain
// arithmetic and bit casts only, so gcc vectorizes the loops that call them: libm's powf is a
// scalar call and would make the CPU kernels slower than ATen's vectorized pow.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fgreid_ops/macros.h"

namespace fgreid_ops {

FGREID_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

FGREID_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// log(x) for finite normal x > 0; NaN and +inf pass through.
FGREID_INLINE float log_f32(float x) {
  const uint32_t bits = float_to_bits(x);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xff) - 126);
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // x = m * 2^e, m in [0.5, 1)
  const bool below_sqrt_half = m < 0.70710678118654752f;
  e = below_sqrt_half ? e - 1.0f : e;
  m = below_sqrt_half ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  float r = m + y + 0.693359375f * e;
  return ((x != x) | (x > 3.40282347e38f)) ? x : r;
}

// exp(x); overflows to +inf, underflows to 0 (no denormal results), NaN passes through.
FGREID_INLINE float exp_f32(float x) {
  const float xc = x < -87.3365f ? -87.3365f : (x > 88.7228f ? 88.7228f : x);
  // Round-to-nearest by the 1.5 * 2^23 trick: pure arithmetic, vectorizes without SSE4.1.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  // Scale by 2^n in two steps so n = 128 does not overflow the exponent field.
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 126) << 23);
  float result = y * scale * 2.0f;
  result = x > 88.7228f ? INFINITY : result;
  result = x < -87.3365f ? 0.0f : result;
  return x != x ? x : result;
}

// x ** p for x > 0 (the callers clamp to eps first).
FGREID_INLINE float pow_positive(float x, float p) { return exp_f32(p * log_f32(x)); }
inline double pow_positive(double x, double p) { return std::pow(x, p); }
FGREID_INLINE float log_positive(float x) { return log_f32(x); }
inline double log_positive(double x) { return std::log(x); }

}  // namespace fgreid_ops
