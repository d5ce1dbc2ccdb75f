// Input checks and output allocation of the GeM op, shared by its CPU and CUDA kernels: each
// backend calls prepare_gem / prepare_gem_backward and then only launches its kernel.
#pragma once

#include <ATen/ops/empty.h>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/layout.h"

namespace fgreid_ops {

inline void check_gem_inputs(const at::Tensor& x, const at::Tensor& p, double eps) {
  constexpr const char* op = "gem";
  check_defined(op, {{"x", &x}, {"p", &p}});
  check_dim(op, "x", x, 4, "(N, C, H, W)");
  check_float_dtype(op, "x", x);
  check_float_dtype(op, "p", p);
  check_same_device(op, "p", p, "x", x);
  check_nonempty_batch(op, "x", x);
  check_nonempty(op, "x", x);
  TORCH_CHECK_VALUE(p.dim() == 1 && (p.size(0) == 1 || p.size(0) == x.size(1)), "fgreid_ops.", op,
                    ": expected p of shape [1] or [C]=[", x.size(1), "], got ", p.sizes());
  TORCH_CHECK_VALUE(eps > 0, "fgreid_ops.", op, ": expected eps > 0, got ", eps);
}

// p broadcast to one exponent per channel, in the accumulation dtype.
inline at::Tensor exponents_per_channel(const at::Tensor& p, const at::Tensor& x) {
  return p.to(acc_dtype(x)).expand({x.size(1)}).contiguous();
}

// x as the kernel reads it (contiguous, or channels_last where the backend walks that layout in
// place), p per channel in the accumulation dtype, the row geometry and the output [N, C].
struct GemForward {
  at::Tensor x, p_acc, out;
  int64_t rows, C, HW;
};

inline GemForward prepare_gem(const at::Tensor& x_in, const at::Tensor& p, double eps,
                              bool reads_channels_last) {
  check_gem_inputs(x_in, p, eps);
  GemForward f;
  f.x = reads_channels_last ? contiguous_or_channels_last(x_in) : x_in.contiguous();
  f.p_acc = exponents_per_channel(p, x_in);
  f.out = at::empty({x_in.size(0), x_in.size(1)}, x_in.options());
  f.rows = x_in.size(0) * x_in.size(1), f.C = x_in.size(1), f.HW = x_in.size(2) * x_in.size(3);
  return f;
}

// grad_out [N, C] in x's dtype (contiguous), grad_x in x_in's layout rule (channels_last in,
// channels_last out, else contiguous), and dL/dp per (n, c) row in the accumulation dtype, or an
// empty tensor when p needs no gradient (the fake in fgreid_ops/ops/gem.py allocates the same).
struct GemBackward {
  at::Tensor grad_out, x, p_acc, grad_x, grad_p_rows;
  int64_t rows, C, HW;
};

inline GemBackward prepare_gem_backward(const at::Tensor& grad_out, const at::Tensor& x_in,
                                        const at::Tensor& p, double eps, bool need_grad_p,
                                        bool reads_channels_last, bool reads_grad_strides = false) {
  constexpr const char* op = "gem";  // backward messages name the public op, as the fakes do
  check_defined(op, {{"grad_out", &grad_out}});
  check_gem_inputs(x_in, p, eps);
  check_float_dtype(op, "grad_out", grad_out);
  check_same_device(op, "grad_out", grad_out, "x", x_in);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == x_in.size(0) && grad_out.size(1) == x_in.size(1),
                    "fgreid_ops.gem: expected grad_out of shape [N, C]=[", x_in.size(0), ", ",
                    x_in.size(1), "], got ", grad_out.sizes());
  GemBackward b;
  b.x = reads_channels_last ? contiguous_or_channels_last(x_in) : x_in.contiguous();
  // A kernel that reads grad_out through its strides takes the expanded [N, C] gradient of
  // .sum() / .mean() as it is, without materializing it.
  b.grad_out = reads_grad_strides ? grad_out.to(x_in.scalar_type()) : grad_out.to(x_in.scalar_type()).contiguous();
  b.grad_x = reads_channels_last ? empty_in_layout_of(b.x) : empty_output(x_in.sizes(), x_in.options());
  b.grad_p_rows = at::empty(need_grad_p ? at::IntArrayRef{x_in.size(0), x_in.size(1)} : at::IntArrayRef{0},
                            x_in.options().dtype(acc_dtype(x_in)));
  b.p_acc = exponents_per_channel(p, x_in);
  b.rows = x_in.size(0) * x_in.size(1), b.C = x_in.size(1), b.HW = x_in.size(2) * x_in.size(3);
  return b;
}

}  // namespace fgreid_ops
