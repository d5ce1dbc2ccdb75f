// GeM pooling on CPU (SPEC §1): y[n,c] = (mean_hw max(x, eps)^p_c)^(1/p_c).
// NCHW rows are reduced one (n, c) row per task; channels_last input is reduced in place,
// vectorizing over channels, so neither layout is copied.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/gem_checks.h"
#include "fgreid_ops/fast_math.h"
#include "fgreid_ops/grad_planes.h"

namespace fgreid_ops {
namespace {

constexpr int64_t kChannelBlock = 64;

// p broadcast to one exponent per channel, in the accumulation type.
template <typename acc_t>
std::vector<acc_t> exponents_per_channel(const at::Tensor& p, int64_t C) {
  const at::Tensor p_acc = p.to(c10::CppTypeToScalarType<acc_t>::value).expand({C}).contiguous();
  const acc_t* data = p_acc.data_ptr<acc_t>();
  return std::vector<acc_t>(data, data + C);
}

template <typename acc_t, typename scalar_t>
acc_t clamp_min_eps(scalar_t v, acc_t eps) {
  const acc_t a = static_cast<acc_t>(v);
  return a < eps ? eps : a;  // NaN stays NaN
}

// sum_i max(x[i], eps)^p over one contiguous row.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES acc_t row_pow_sum(const scalar_t* x, int64_t n, acc_t eps, acc_t p) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += pow_positive(clamp_min_eps(x[i], eps), p);
  return sum;
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
FGREID_CPU_CLONES acc_t row_grad(const scalar_t* x, scalar_t* grad_x, int64_t n, acc_t eps, acc_t p,
                                 acc_t coef) {
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

template <typename scalar_t>
void gem_forward_kernel(const at::Tensor& x, const at::Tensor& p, double eps_d, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto pc = exponents_per_channel<acc_t>(p, C);
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
      std::fill(sum, sum + cn, acc_t(0));
      for (int64_t i = 0; i < HW; ++i) channels_pow_sum(xd + (n * HW + i) * C + c0, cn, eps, &pc[c0], sum);
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
  const auto pc = exponents_per_channel<acc_t>(p, C);
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
      std::fill(sum_t, sum_t + cn, acc_t(0));
      for (int64_t i = 0; i < HW; ++i) channels_pow_sum(xd + (n * HW + i) * C + c0, cn, eps, &pc[c0], sum_t);
      for (int64_t c = 0; c < cn; ++c) coef[c] = row_grad_of(n * C + c0 + c, sum_t[c]).coef_x;
      std::fill(sum_t_log_x, sum_t_log_x + cn, acc_t(0));
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t base = (n * HW + i) * C + c0;
        channels_grad(xd + base, gxd + base, cn, eps, &pc[c0], coef, sum_t_log_x);
      }
      if (gpd) {
        for (int64_t c = 0; c < cn; ++c) gpd[n * C + c0 + c] = row_grad_of(n * C + c0 + c, sum_t[c]).grad_p(sum_t_log_x[c]);
      }
    }
  });
}

at::Tensor as_supported_layout(const at::Tensor& x) {
  return (x.is_contiguous() || is_channels_last_4d(x)) ? x : x.contiguous();
}

at::Tensor gem_cpu(const at::Tensor& x_in, const at::Tensor& p, double eps) {
  check_gem_inputs(x_in, p, eps);
  const at::Tensor x = as_supported_layout(x_in);
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_cpu", [&] {
    gem_forward_kernel<scalar_t>(x, p, eps, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gem_backward_cpu(const at::Tensor& grad_out_in,
                                                    const at::Tensor& x_in, const at::Tensor& p,
                                                    double eps,
                                                    bool need_grad_p) {
  check_gem_inputs(x_in, p, eps);
  const at::Tensor x = as_supported_layout(x_in);
  const at::Tensor grad_out = grad_out_in.to(x.scalar_type());
  const auto layout =
      is_channels_last_4d(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(layout));
  at::Tensor grad_p_rows = empty_grad_p_rows(x, need_grad_p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_backward_cpu",
                                  [&] {
                                    gem_backward_kernel<scalar_t>(grad_out, x, p, eps,
                                                                  need_grad_p, grad_x, grad_p_rows);
                                  });
  return {grad_x, grad_p_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) {
  m.impl("gem", &gem_cpu);
  m.impl("gem_backward", &gem_backward_cpu);
}

}  // namespace fgreid_ops
