// GeM pooling on CPU (docs/ops.md#gem): y[n,c] = (mean_hw max(x, eps)^p_c)^(1/p_c).
// NCHW rows are reduced one (n, c) row per task; channels_last input is reduced in place,
// vectorizing over channels, so neither layout is copied. Sums run over blocks of kSumBlock
// positions, combined pairwise, so a long row keeps float32 accuracy.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fgreid_ops/blocked_sum.h"
#include "fgreid_ops/fast_math.h"
#include "fgreid_ops/gem_checks.h"
#include "fgreid_ops/grad_planes.h"
#include "fgreid_ops/registration.h"

namespace fgreid_ops {
namespace {

constexpr int64_t kChannelBlock = 64;

template <typename acc_t>
std::vector<acc_t> exponent_vector(const at::Tensor& p, const at::Tensor& x) {
  const at::Tensor p_acc = fgreid_ops::exponents_per_channel(p, x);
  const acc_t* data = p_acc.const_data_ptr<acc_t>();
  return std::vector<acc_t>(data, data + x.size(1));
}

template <typename acc_t, typename scalar_t>
acc_t clamp_min_eps(scalar_t v, acc_t eps) {
  const acc_t a = static_cast<acc_t>(v);
  return a < eps ? eps : a;  // NaN stays NaN
}

// sum_i max(x[i], eps)^p over one block of a contiguous row.
template <typename scalar_t, typename acc_t>
FGREID_INLINE acc_t block_pow_sum(const scalar_t* x, int64_t n, acc_t eps, acc_t p) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += pow_positive(clamp_min_eps(x[i], eps), p);
  return sum;
}

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES acc_t row_pow_sum(const scalar_t* x, int64_t n, acc_t eps, acc_t p) {
  CascadeSum<acc_t> sum;
  for (int64_t i = 0; i < n; i += kSumBlock) sum.add(block_pow_sum(x + i, std::min(kSumBlock, n - i), eps, p));
  return sum.total();
}

// sum[c] += max(x[c], eps)^p[c] for one spatial position of a channels_last block.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void channels_pow_sum(const scalar_t* x, int64_t cn, acc_t eps, const acc_t* p,
                                        acc_t* sum) {
#pragma omp simd
  for (int64_t c = 0; c < cn; ++c) sum[c] += pow_positive(clamp_min_eps(x[c], eps), p[c]);
}

// With t = max(x, eps)^p: grad_x = coef * t / x where x >= eps (else 0); returns sum t log x.
template <typename scalar_t, typename acc_t>
FGREID_INLINE acc_t block_grad(const scalar_t* x, scalar_t* grad_x, int64_t n, acc_t eps, acc_t p, acc_t coef) {
  acc_t sum_t_log_x = 0;
#pragma omp simd reduction(+ : sum_t_log_x)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t raw = static_cast<acc_t>(x[i]);
    const acc_t v = raw < eps ? eps : raw;
    const acc_t t = pow_positive(v, p);
    grad_x[i] = static_cast<scalar_t>(raw >= eps ? coef * t / v : acc_t(0));
    sum_t_log_x += t * log_positive(v);
  }
  return sum_t_log_x;
}

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES acc_t row_grad(const scalar_t* x, scalar_t* grad_x, int64_t n, acc_t eps, acc_t p,
                                 acc_t coef) {
  CascadeSum<acc_t> sum;
  for (int64_t i = 0; i < n; i += kSumBlock) {
    sum.add(block_grad(x + i, grad_x + i, std::min(kSumBlock, n - i), eps, p, coef));
  }
  return sum.total();
}

template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void channels_grad(const scalar_t* x, scalar_t* grad_x, int64_t cn, acc_t eps,
                                     const acc_t* p, const acc_t* coef, acc_t* sum_t_log_x) {
#pragma omp simd
  for (int64_t c = 0; c < cn; ++c) {
    const acc_t raw = static_cast<acc_t>(x[c]);
    const acc_t v = raw < eps ? eps : raw;
    const acc_t t = pow_positive(v, p[c]);
    grad_x[c] = static_cast<scalar_t>(raw >= eps ? coef[c] * t / v : acc_t(0));
    sum_t_log_x[c] += t * log_positive(v);
  }
}

// sum[c] for c < cn of the terms that add_position(i, block_sum) adds into block_sum[c] for every
// position i < HW: positions in blocks of kSumBlock, the blocks' sums combined pairwise.
template <typename acc_t, typename AddPosition>
void channel_sums(int64_t HW, int64_t cn, acc_t* sum, const AddPosition& add_position) {
  acc_t block_sum[kChannelBlock];
  CascadeSums<acc_t> sums(cn);
  for (int64_t i0 = 0; i0 < HW; i0 += kSumBlock) {
    std::fill(block_sum, block_sum + cn, acc_t(0));
    for (int64_t i = i0; i < std::min(HW, i0 + kSumBlock); ++i) add_position(i, block_sum);
    sums.add(block_sum);
  }
  for (int64_t c = 0; c < cn; ++c) sum[c] = sums.total(c);
}

template <typename scalar_t>
void gem_forward_kernel(const at::Tensor& x, const at::Tensor& p, double eps_d, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto pc = exponent_vector<acc_t>(p, x);
  const acc_t eps = static_cast<acc_t>(eps_d);
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  const auto finish = [&](acc_t sum, acc_t p_c) {
    return static_cast<scalar_t>(std::pow(sum * inv_hw, acc_t(1) / p_c));
  };

  if (!is_channels_last_4d(x)) {
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const acc_t p_c = pc[row % C];
        od[row] = finish(row_pow_sum(xd + row * HW, HW, eps, p_c), p_c);
      }
    });
    return;
  }
  const int64_t c_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, N * c_blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t sum[kChannelBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / c_blocks, c0 = (task % c_blocks) * kChannelBlock;
      const int64_t cn = std::min(kChannelBlock, C - c0);
      channel_sums(HW, cn, sum, [&](int64_t i, acc_t* block_sum) {
        channels_pow_sum(xd + (n * HW + i) * C + c0, cn, eps, &pc[c0], block_sum);
      });
      for (int64_t c = 0; c < cn; ++c) od[n * C + c0 + c] = finish(sum[c], pc[c0 + c]);
    }
  });
}

// With s = sum_hw t, m = s / HW, y = m^(1/p): dy/dx = coef * t / x with coef = g y / s, and
// dy/dp = g y (-log(m) / p^2 + sum_hw(t log x) / (p s)).
template <typename acc_t>
struct GemRowGrad {
  acc_t coef_x, g_y, log_m, p, s;

  GemRowGrad(acc_t g, acc_t sum_t, acc_t p_, int64_t HW) : p(p_), s(sum_t) {
    log_m = std::log(sum_t / static_cast<acc_t>(HW));
    g_y = g * std::exp(log_m / p_);
    coef_x = g_y / sum_t;
  }
  acc_t grad_p(acc_t sum_t_log_x) const { return g_y * (-log_m / (p * p) + sum_t_log_x / (p * s)); }
};

template <typename scalar_t>
void gem_backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& p,
                         double eps_d, bool need_grad_p, at::Tensor& grad_x,
                         at::Tensor& grad_p_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto pc = exponent_vector<acc_t>(p, x);
  const acc_t eps = static_cast<acc_t>(eps_d);
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  const GradPlanes<scalar_t> g(grad_out);  // [N, C] with any strides (sum's expand: all 0)
  scalar_t* gxd = grad_x.mutable_data_ptr<scalar_t>();
  acc_t* gpd = need_grad_p ? grad_p_rows.mutable_data_ptr<acc_t>() : nullptr;
  const auto row_grad_of = [&](int64_t row, acc_t sum_t) {
    return GemRowGrad<acc_t>(static_cast<acc_t>(*g.plane(row / C, row % C)), sum_t, pc[row % C], HW);
  };

  if (!is_channels_last_4d(x)) {
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const auto rg = row_grad_of(row, row_pow_sum(xd + row * HW, HW, eps, pc[row % C]));
        const acc_t s = row_grad(xd + row * HW, gxd + row * HW, HW, eps, rg.p, rg.coef_x);
        if (gpd) gpd[row] = rg.grad_p(s);
      }
    });
    return;
  }
  const int64_t c_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, N * c_blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t sum_t[kChannelBlock], coef[kChannelBlock], sum_t_log_x[kChannelBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / c_blocks, c0 = (task % c_blocks) * kChannelBlock;
      const int64_t cn = std::min(kChannelBlock, C - c0);
      channel_sums(HW, cn, sum_t, [&](int64_t i, acc_t* block_sum) {
        channels_pow_sum(xd + (n * HW + i) * C + c0, cn, eps, &pc[c0], block_sum);
      });
      for (int64_t c = 0; c < cn; ++c) coef[c] = row_grad_of(n * C + c0 + c, sum_t[c]).coef_x;
      channel_sums(HW, cn, sum_t_log_x, [&](int64_t i, acc_t* block_sum) {
        const int64_t base = (n * HW + i) * C + c0;
        channels_grad(xd + base, gxd + base, cn, eps, &pc[c0], coef, block_sum);
      });
      if (gpd) {
        for (int64_t c = 0; c < cn; ++c) gpd[n * C + c0 + c] = row_grad_of(n * C + c0 + c, sum_t[c]).grad_p(sum_t_log_x[c]);
      }
    }
  });
}

at::Tensor gem_cpu(const at::Tensor& x, const at::Tensor& p, double eps) {
  GemForward f = prepare_gem(x, p, eps, /*reads_channels_last=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_cpu", [&] {
    gem_forward_kernel<scalar_t>(f.x, p, eps, f.out);
  });
  return f.out;
}

std::tuple<at::Tensor, at::Tensor> gem_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                    const at::Tensor& p, double eps, bool need_grad_p) {
  GemBackward b = prepare_gem_backward(grad_out, x, p, eps, need_grad_p, /*reads_channels_last=*/true,
                                       /*reads_grad_strides=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_backward_cpu", [&] {
    gem_backward_kernel<scalar_t>(b.grad_out, b.x, p, eps, need_grad_p, b.grad_x, b.grad_p_rows);
  });
  return {b.grad_x, b.grad_p_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) { register_forward_backward<&gem_cpu, &gem_backward_cpu>(m, "gem"); }

}  // namespace fgreid_ops
