// Unsigned keys that order floating-point values for selection: key(a) > key(b) exactly when
// a > b, with -0 == +0 and every NaN equal to each other and larger than +inf (the order
// torch.sort uses). Comparing keys as integers makes the top-k selection exact and lets the
// CUDA kernel select by radix.
#pragma once

#include <cstdint>
#include <cstring>

#include "fgreid_ops/macros.h"

namespace fgreid_ops {

FGREID_HOST_DEVICE uint32_t order_key(float a) {
  if (a != a) return 0xffffffffu;
  if (a == 0.0f) return 0x80000000u;  // +0 and -0
  uint32_t bits;
  memcpy(&bits, &a, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

FGREID_HOST_DEVICE uint64_t order_key(double a) {
  if (a != a) return 0xffffffffffffffffull;
  if (a == 0.0) return 0x8000000000000000ull;
  uint64_t bits;
  memcpy(&bits, &a, sizeof bits);
  return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}

}  // namespace fgreid_ops
