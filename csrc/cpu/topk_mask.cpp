// Top-k attention exploration on CPU (docs/ops.md#topk_mask, CUHS eq. 5-6).
//   1. A[n, hw] = sum_c f1[n, c, hw] in float32 (float64 for double): fixed chunks of channels
//      are summed in parallel into partial rows, then the partials are added pairwise in a fixed
//      tree, so the result depends neither on the thread count nor on the vector width, and a
//      long channel sum keeps float32 accuracy.
//   2. Per sample, std::nth_element over (key, index) pairs picks the k positions of largest A
//      (ties: lower flat index), and mask[n, hw] is 0 there, 1 elsewhere.
//   3. out = f2 * mask, vectorized over H*W (NCHW) or over C (channels_last), on the bit
//      patterns: the mask is exactly 0 or 1.
// With at least 4 samples per thread (and always with pool) steps 1-3 run per sample, so f2[n] is
// still in cache from step 1 when f1 and f2 are the same tensor (as in CUHS). With pool step 3
// becomes pooled[n, c] = mean_hw f2 * mask: the product is never written. Its backward writes
// grad_f2 = g[n, c] / (H W) * mask directly.
// Contiguous and channels_last inputs are read in place; other strides are copied first. The
// gradient is read through its strides (expanded gradients of .mean() or .sum() are not copied).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "fgreid_ops/blocked_sum.h"
#include "fgreid_ops/fast_math.h"
#include "fgreid_ops/grad_planes.h"
#include "fgreid_ops/order_key.h"
#include "fgreid_ops/registration.h"
#include "fgreid_ops/topk_mask_checks.h"

namespace fgreid_ops {
namespace {

// Channels per partial sum. Fixed (not derived from the thread count) so that A, and with it
// the selected positions, is the same on every machine.
constexpr int64_t kChannelChunk = 128;
// Spatial positions per task of the channels_last reduction.
constexpr int64_t kPositionBlock = 16;
// Elements per task of the masked multiply (ATen's grain size).
constexpr int64_t kGrainElements = 32768;
// Samples per thread from which the forward runs one sample per task (per_sample_forward).
constexpr int64_t kSamplesPerThread = 4;

// acc[i] += x[c, i] for c < rows, over one NCHW block of rows of length HW.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void add_rows(const scalar_t* x, int64_t rows, int64_t HW, acc_t* acc) {
  int64_t c = 0;
  for (; c + 4 <= rows; c += 4) {
    const scalar_t* r0 = x + c * HW;
    const scalar_t* r1 = r0 + HW;
    const scalar_t* r2 = r1 + HW;
    const scalar_t* r3 = r2 + HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      acc[i] += (static_cast<acc_t>(r0[i]) + static_cast<acc_t>(r1[i])) +
                (static_cast<acc_t>(r2[i]) + static_cast<acc_t>(r3[i]));
    }
  }
  for (; c < rows; ++c) {
    const scalar_t* r = x + c * HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) acc[i] += static_cast<acc_t>(r[i]);
  }
}

// sum_c x[c] over one contiguous channels_last position in a fixed order: eight interleaved
// partial sums (one AVX2 register or two SSE ones: the same additions either way), added as a
// fixed tree, over blocks of kSumBlock channels combined pairwise.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES acc_t sum_channels(const scalar_t* x, int64_t C) {
  constexpr int kLanes = 8;
  CascadeSum<acc_t> total;
  for (int64_t c0 = 0; c0 < C; c0 += kSumBlock) {
    const int64_t n = std::min(kSumBlock, C - c0);
    const scalar_t* xb = x + c0;
    acc_t lane[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= n; c += kLanes) {
      for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<acc_t>(xb[c + l]);
    }
    for (int l = 0; c < n; ++c, ++l) lane[l] += static_cast<acc_t>(xb[c]);
    total.add(((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7])));
  }
  return total.total();
}

// p[0, :] = sum_j p[j, :] over `chunks` rows of length HW, added pairwise in a fixed tree.
template <typename acc_t>
void add_rows_pairwise(acc_t* p, int64_t chunks, int64_t HW) {
  for (int64_t s = 1; s < chunks; s *= 2) {
    for (int64_t j = 0; j + s < chunks; j += 2 * s) {
      acc_t* dst = p + j * HW;
      const acc_t* src = p + (j + s) * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) dst[i] += src[i];
    }
  }
}

// attention[n, hw] = sum_c f1[n, c, hw].
template <typename scalar_t, typename acc_t>
void channel_sum(const at::Tensor& f1, acc_t* attention) {
  const int64_t N = f1.size(0), C = f1.size(1), HW = f1.size(2) * f1.size(3);
  const scalar_t* x = f1.const_data_ptr<scalar_t>();
  if (is_channels_last_4d(f1)) {
    at::parallel_for(0, N * HW, kPositionBlock, [&](int64_t begin, int64_t end) {
      for (int64_t pos = begin; pos < end; ++pos) attention[pos] = sum_channels<scalar_t, acc_t>(x + pos * C, C);
    });
    return;
  }
  const int64_t chunks = (C + kChannelChunk - 1) / kChannelChunk;
  if (chunks == 1) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        acc_t* a = attention + n * HW;
        std::fill(a, a + HW, acc_t(0));
        add_rows(x + n * C * HW, C, HW, a);
      }
    });
    return;
  }
  std::unique_ptr<acc_t[]> partial(new acc_t[N * chunks * HW]);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, c0 = (task % chunks) * kChannelChunk;
      acc_t* p = partial.get() + task * HW;
      std::fill(p, p + HW, acc_t(0));
      add_rows(x + (n * C + c0) * HW, std::min(kChannelChunk, C - c0), HW, p);
    }
  });
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      acc_t* p = partial.get() + n * chunks * HW;
      add_rows_pairwise(p, chunks, HW);
      std::copy(p, p + HW, attention + n * HW);
    }
  });
}

// a[hw] = sum_c x[c, hw] for one sample ([C, HW], or [HW, C] when channels_last), with the
// chunks and the pairwise order of channel_sum, so that both variants of the op pick the same
// positions. `partial` holds one row of HW per chunk of kChannelChunk channels.
template <typename scalar_t, typename acc_t>
void sample_channel_sum(const scalar_t* x, int64_t C, int64_t HW, bool channels_last, acc_t* a, acc_t* partial) {
  if (channels_last) {
    for (int64_t pos = 0; pos < HW; ++pos) a[pos] = sum_channels<scalar_t, acc_t>(x + pos * C, C);
    return;
  }
  const int64_t chunks = (C + kChannelChunk - 1) / kChannelChunk;
  acc_t* p = chunks == 1 ? a : partial;
  for (int64_t j = 0; j < chunks; ++j) {
    const int64_t c0 = j * kChannelChunk;
    std::fill(p + j * HW, p + (j + 1) * HW, acc_t(0));
    add_rows(x + c0 * HW, std::min(kChannelChunk, C - c0), HW, p + j * HW);
  }
  if (chunks == 1) return;
  add_rows_pairwise(p, chunks, HW);
  std::copy(p, p + HW, a);
}

// mask[i] = 0 at the k positions of largest a[i] (ties: lower i), 1 elsewhere; 0 < k < HW.
template <typename scalar_t, typename acc_t>
void select_row(const acc_t* a, int64_t HW, int64_t k, scalar_t* mask) {
  using key_t = decltype(order_key(acc_t(0)));
  std::vector<std::pair<key_t, int64_t>> items(static_cast<size_t>(HW));
  for (int64_t i = 0; i < HW; ++i) items[i] = {order_key(a[i]), i};
  std::nth_element(items.begin(), items.begin() + k, items.end(), [](const auto& l, const auto& r) {
    return l.first > r.first || (l.first == r.first && l.second < r.second);
  });
  std::fill(mask, mask + HW, scalar_t(1));
  for (int64_t j = 0; j < k; ++j) mask[items[j].second] = scalar_t(0);
}

template <typename scalar_t>
void build_mask(const at::Tensor& f1, int64_t k, at::Tensor& mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = f1.size(0), HW = f1.size(2) * f1.size(3);
  scalar_t* m = mask.mutable_data_ptr<scalar_t>();
  if (k == 0 || k >= HW) {
    std::fill(m, m + N * HW, scalar_t(k == 0 ? 1 : 0));
    return;
  }
  std::vector<acc_t> attention(static_cast<size_t>(N * HW));
  channel_sum<scalar_t, acc_t>(f1, attention.data());
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) select_row(attention.data() + n * HW, HW, k, m + n * HW);
  });
}

// Bit layout of each dtype, for multiplying by a mask that is exactly 0 or 1 without converting
// to float: gcc does not vectorize the float -> half/bfloat16 rounding, which made the multiply
// the slowest part for 16-bit inputs.
template <typename scalar_t>
struct FloatBits;
template <>
struct FloatBits<float> {
  using type = uint32_t;
  static constexpr type exponent = 0x7f800000u, sign = 0x80000000u, nan = 0x7fc00000u, one = 0x3f800000u;
};
template <>
struct FloatBits<double> {
  using type = uint64_t;
  static constexpr type exponent = 0x7ff0000000000000ull, sign = 0x8000000000000000ull,
                        nan = 0x7ff8000000000000ull, one = 0x3ff0000000000000ull;
};
template <>
struct FloatBits<c10::Half> {
  using type = uint16_t;
  static constexpr type exponent = 0x7c00, sign = 0x8000, nan = 0x7e00, one = 0x3c00;
};
template <>
struct FloatBits<c10::BFloat16> {
  using type = uint16_t;
  static constexpr type exponent = 0x7f80, sign = 0x8000, nan = 0x7fc0, one = 0x3f80;
};

template <typename scalar_t>
FGREID_INLINE typename FloatBits<scalar_t>::type bits_of(const scalar_t& v) {
  typename FloatBits<scalar_t>::type b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// x * 0 as IEEE arithmetic gives it: a zero with x's sign, or NaN when x is inf or NaN.
template <typename scalar_t>
FGREID_INLINE typename FloatBits<scalar_t>::type times_zero(typename FloatBits<scalar_t>::type x) {
  using B = FloatBits<scalar_t>;
  return (x & B::exponent) == B::exponent ? B::nan : static_cast<typename FloatBits<scalar_t>::type>(x & B::sign);
}

// out[i] = x[i] * m[i] for m[i] in {0, 1} (bit patterns exactly +0 or 1).
template <typename scalar_t>
FGREID_CPU_CLONES void select_rows(const scalar_t* x, const scalar_t* m, scalar_t* out, int64_t len) {
  using bits_t = typename FloatBits<scalar_t>::type;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const bits_t xb = bits_of(x[i]);
    const bits_t r = bits_of(m[i]) != 0 ? xb : times_zero<scalar_t>(xb);
    std::memcpy(&out[i], &r, sizeof r);
  }
}

// out[i] = x[i] * m for one m in {0, 1}.
template <typename scalar_t>
FGREID_CPU_CLONES void select_scalar(const scalar_t* x, bool keep, scalar_t* out, int64_t len) {
  using bits_t = typename FloatBits<scalar_t>::type;
  if (keep) {
    std::memcpy(out, x, len * sizeof(scalar_t));
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const bits_t r = times_zero<scalar_t>(bits_of(x[i]));
    std::memcpy(&out[i], &r, sizeof r);
  }
}

// out[i] = v * m[i] for m[i] in {0, 1}: one gradient value over a plane.
template <typename scalar_t>
FGREID_CPU_CLONES void select_broadcast(scalar_t v, const scalar_t* m, scalar_t* out, int64_t len) {
  using bits_t = typename FloatBits<scalar_t>::type;
  const bits_t keep = bits_of(v), zero = times_zero<scalar_t>(keep);
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const bits_t r = bits_of(m[i]) != 0 ? keep : zero;
    std::memcpy(&out[i], &r, sizeof r);
  }
}

// General products, for a mask with values other than 0 and 1 (direct calls of the backward op).
template <typename scalar_t, typename acc_t>
void mul_rows(const scalar_t* x, const scalar_t* m, scalar_t* out, int64_t len) {
  for (int64_t i = 0; i < len; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * static_cast<acc_t>(m[i]));
}

template <typename scalar_t, typename acc_t>
void mul_broadcast(scalar_t v, const scalar_t* m, scalar_t* out, int64_t len) {
  const acc_t va = static_cast<acc_t>(v);
  for (int64_t i = 0; i < len; ++i) out[i] = static_cast<scalar_t>(va * static_cast<acc_t>(m[i]));
}

template <typename scalar_t>
bool is_binary(const scalar_t* m, int64_t len) {
  using B = FloatBits<scalar_t>;
  for (int64_t i = 0; i < len; ++i) {
    const auto b = bits_of(m[i]);
    if (b != 0 && b != B::one) return false;
  }
  return true;
}

// out = x * mask with mask [N, 1, H, W] broadcast over channels, as IEEE products (inf or NaN
// times a 0 of the mask is NaN, as in f2 * mask). x and out share their layout: contiguous or
// channels_last.
template <typename scalar_t>
void masked_multiply(const at::Tensor& x, const at::Tensor& mask, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  const scalar_t* md = mask.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  const bool binary = is_binary(md, N * HW);
  if (is_channels_last_4d(x)) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / C);
    at::parallel_for(0, N * HW, grain, [&](int64_t begin, int64_t end) {
      for (int64_t pos = begin; pos < end; ++pos) {
        if (binary) {
          select_scalar(xd + pos * C, bits_of(md[pos]) != 0, od + pos * C, C);
        } else {
          const acc_t m = static_cast<acc_t>(md[pos]);
          for (int64_t c = 0; c < C; ++c) od[pos * C + c] = static_cast<scalar_t>(static_cast<acc_t>(xd[pos * C + c]) * m);
        }
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / HW);
  at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (binary) {
        select_rows(xd + row * HW, md + (row / C) * HW, od + row * HW, HW);
      } else {
        mul_rows<scalar_t, acc_t>(xd + row * HW, md + (row / C) * HW, od + row * HW, HW);
      }
    }
  });
}

// grad_f2 = grad_out * mask into a contiguous NCHW grad_f2, grad_out read through its strides:
// a plane that is one value (the expand of .mean((2, 3)) or .sum()) is a broadcast of the mask.
template <typename scalar_t>
void masked_multiply_grad(const at::Tensor& grad_out, const at::Tensor& mask, at::Tensor& grad_f2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = grad_out.size(0), C = grad_out.size(1), H = grad_out.size(2), HW = H * grad_out.size(3);
  const GradPlanes<scalar_t> g(grad_out);
  const scalar_t* md = mask.const_data_ptr<scalar_t>();
  scalar_t* od = grad_f2.mutable_data_ptr<scalar_t>();
  const bool binary = is_binary(md, N * HW);
  const bool gather = !g.constant() && !g.dense();
  at::parallel_for(0, N * C, std::max<int64_t>(1, kGrainElements / HW), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buf(gather ? HW : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / C, c = row % C;
      const scalar_t* m = md + n * HW;
      scalar_t* o = od + row * HW;
      if (g.constant()) {
        const scalar_t v = *g.plane(n, c);
        binary ? select_broadcast(v, m, o, HW) : mul_broadcast<scalar_t, acc_t>(v, m, o, HW);
      } else {
        const scalar_t* x = g.rows(n, c, 0, H, buf.data());
        binary ? select_rows(x, m, o, HW) : mul_rows<scalar_t, acc_t>(x, m, o, HW);
      }
    }
  });
}

// Positions per partial sum of the pooled mean, so that it stays accurate at any H*W.
constexpr int64_t kSumBlock = 1024;

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES acc_t masked_row_sum(const scalar_t* x, const acc_t* m, int64_t len) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) sum += static_cast<acc_t>(x[i]) * m[i];
  return sum;
}

// part[c] += x[c] * m over one channels_last position.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void masked_channels_add(const scalar_t* x, acc_t m, acc_t* part, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) part[c] += static_cast<acc_t>(x[c]) * m;
}

// mask[n] of one sample from f1[n]: the channel sum, then the selection (or all ones for k = 0,
// all zeros for k >= H*W). `a` and `partial` are the scratch of sample_channel_sum.
template <typename scalar_t, typename acc_t>
void sample_mask(const scalar_t* x1, int64_t C, int64_t HW, bool channels_last, int64_t k, acc_t* a, acc_t* partial,
                 scalar_t* m) {
  if (k > 0 && k < HW) {
    sample_channel_sum(x1, C, HW, channels_last, a, partial);
    select_row(a, HW, k, m);
  } else {
    std::fill(m, m + HW, scalar_t(k == 0 ? 1 : 0));
  }
}

// The scratch of sample_mask for one task.
template <typename acc_t>
struct SampleMaskScratch {
  std::vector<acc_t> a, partial;
  SampleMaskScratch(int64_t C, int64_t HW, bool channels_last, int64_t k)
      : a(k > 0 && k < HW ? HW : 0),
        partial(k > 0 && k < HW && !channels_last ? (C + kChannelChunk - 1) / kChannelChunk * HW : 0) {}
};

// fn(n, mask[n]) for every sample n, one sample per task, right after mask[n] is computed from
// f1[n]: f2[n] is then read from cache when it is f1[n] (as in CUHS), one pass over memory for
// the two reads.
template <typename scalar_t, typename Fn>
void for_each_sample_mask(const at::Tensor& f1, int64_t k, at::Tensor& mask, const Fn& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = f1.size(0), C = f1.size(1), HW = f1.size(2) * f1.size(3);
  const bool f1_last = is_channels_last_4d(f1);
  const scalar_t* x1 = f1.const_data_ptr<scalar_t>();
  scalar_t* md = mask.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    SampleMaskScratch<acc_t> scratch(C, HW, f1_last, k);
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* m = md + n * HW;
      sample_mask(x1 + n * C * HW, C, HW, f1_last, k, scratch.a.data(), scratch.partial.data(), m);
      fn(n, m);
    }
  });
}

// out = f2 * mask, one sample per task: the same sums, selection and products as build_mask and
// masked_multiply, which the op takes when there are too few samples to share out.
template <typename scalar_t>
void per_sample_forward(const at::Tensor& f1, const at::Tensor& f2, int64_t k, at::Tensor& mask, at::Tensor& out) {
  const int64_t C = f2.size(1), HW = f2.size(2) * f2.size(3);
  const bool f2_last = is_channels_last_4d(f2);
  const scalar_t* x2 = f2.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  for_each_sample_mask<scalar_t>(f1, k, mask, [&](int64_t n, const scalar_t* m) {
    const scalar_t* x = x2 + n * C * HW;
    scalar_t* o = od + n * C * HW;
    if (f2_last) {
      for (int64_t pos = 0; pos < HW; ++pos) select_scalar(x + pos * C, bits_of(m[pos]) != 0, o + pos * C, C);
    } else {
      for (int64_t c = 0; c < C; ++c) select_rows(x + c * HW, m, o + c * HW, HW);
    }
  });
}

// pooled[n, c] = mean_hw f2[n, c, hw] * mask[n, hw], one sample per task.
template <typename scalar_t>
void pooled_forward(const at::Tensor& f1, const at::Tensor& f2, int64_t k, at::Tensor& mask, at::Tensor& pooled) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = f2.size(1), HW = f2.size(2) * f2.size(3);
  const bool f2_last = is_channels_last_4d(f2);
  const scalar_t* x2 = f2.const_data_ptr<scalar_t>();
  scalar_t* od = pooled.mutable_data_ptr<scalar_t>();
  const acc_t hw = static_cast<acc_t>(HW);
  for_each_sample_mask<scalar_t>(f1, k, mask, [&](int64_t n, const scalar_t* m) {
    std::vector<acc_t> mf(m, m + HW);
    const scalar_t* x = x2 + n * C * HW;
    if (!f2_last) {
      for (int64_t c = 0; c < C; ++c) {
        acc_t sum = 0;
        for (int64_t i0 = 0; i0 < HW; i0 += kSumBlock) {
          sum += masked_row_sum(x + c * HW + i0, mf.data() + i0, std::min(kSumBlock, HW - i0));
        }
        od[n * C + c] = static_cast<scalar_t>(sum / hw);
      }
      return;
    }
    std::vector<acc_t> sums(C, acc_t(0)), part(C);
    for (int64_t i0 = 0; i0 < HW; i0 += kSumBlock) {
      std::fill(part.begin(), part.end(), acc_t(0));
      for (int64_t i = i0; i < std::min(HW, i0 + kSumBlock); ++i) masked_channels_add(x + i * C, mf[i], part.data(), C);
      for (int64_t c = 0; c < C; ++c) sums[c] += part[c];
    }
    for (int64_t c = 0; c < C; ++c) od[n * C + c] = static_cast<scalar_t>(sums[c] / hw);
  });
}

// grad_f2[n, c] = (g[n, c] / (H W)) * mask[n], g [N, C] read through its strides; the quotient
// is rounded to the dtype first, as autograd's mean backward does.
template <typename scalar_t>
void pooled_backward(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& grad_f2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = grad.size(0), C = grad.size(1), HW = mask.size(2) * mask.size(3);
  const int64_t sn = grad.stride(0), sc = grad.stride(1);
  const scalar_t* gd = grad.const_data_ptr<scalar_t>();
  const scalar_t* md = mask.const_data_ptr<scalar_t>();
  scalar_t* od = grad_f2.mutable_data_ptr<scalar_t>();
  const bool binary = is_binary(md, N * HW);
  const acc_t hw = static_cast<acc_t>(HW);
  at::parallel_for(0, N * C, std::max<int64_t>(1, kGrainElements / HW), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / C, c = row % C;
      const scalar_t v = static_cast<scalar_t>(static_cast<acc_t>(gd[n * sn + c * sc]) / hw);
      binary ? select_broadcast(v, md + n * HW, od + row * HW, HW)
             : mul_broadcast<scalar_t, acc_t>(v, md + n * HW, od + row * HW, HW);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> topk_mask_cpu(const at::Tensor& f1, const at::Tensor& f2, int64_t k,
                                                 bool pool) {
  TopkMaskForward t = prepare_topk_mask(f1, f2, k, pool);
  if (pool) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f2.scalar_type(), "topk_mask_cpu", [&] {
      pooled_forward<scalar_t>(t.f1, t.f2, k, t.mask, t.out);
    });
    return {t.out, t.mask};
  }
  // Per sample when every thread gets a few samples; else the passes parallel over channels.
  const bool per_sample = f2.size(0) >= kSamplesPerThread * at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f2.scalar_type(), "topk_mask_cpu", [&] {
    if (per_sample) {
      per_sample_forward<scalar_t>(t.f1, t.f2, k, t.mask, t.out);
    } else {
      build_mask<scalar_t>(t.f1, k, t.mask);
      masked_multiply<scalar_t>(t.f2, t.mask, t.out);
    }
  });
  return {t.out, t.mask};
}

// grad_out is [N, C, H, W], or [N, C] (the gradient of the pooled output) with pool.
at::Tensor topk_mask_backward_cpu(const at::Tensor& grad_out, const at::Tensor& mask, bool pool) {
  TopkMaskBackward t = prepare_topk_mask_backward(grad_out, mask, pool);
  if (t.grad_f2.numel() == 0) return t.grad_f2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "topk_mask_backward_cpu", [&] {
    if (pool) {
      pooled_backward<scalar_t>(t.grad_out, t.mask, t.grad_f2);
    } else if (is_channels_last_4d(t.grad_out)) {
      masked_multiply<scalar_t>(t.grad_out, t.mask, t.grad_f2);
    } else {
      masked_multiply_grad<scalar_t>(t.grad_out, t.mask, t.grad_f2);
    }
  });
  return t.grad_f2;
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) { register_forward_backward<&topk_mask_cpu, &topk_mask_backward_cpu>(m, "topk_mask"); }

}  // namespace fgreid_ops
