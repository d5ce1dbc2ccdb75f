// Input checks and output allocation of the GeM op, shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/ops/empty.h>

#include "fgreid_ops/checks.h"

namespace fgreid_ops {

inline void check_gem_inputs(const at::Tensor& x, const at::Tensor& p, double eps) {
  check_dim("gem", "x", x, 4, "(N, C, H, W)");
  check_float_dtype("gem", "x", x);
  check_float_dtype("gem", "p", p);
  check_same_device("gem", "p", p, "x", x);
  TORCH_CHECK_VALUE(x.size(0) > 0, "fgreid_ops.gem: expected x to have a non-empty batch, got N=0");
  check_nonempty("gem", "x", x);
  TORCH_CHECK_VALUE(p.dim() == 1 && (p.size(0) == 1 || p.size(0) == x.size(1)),
                    "fgreid_ops.gem: expected p of shape [1] or [C]=[", x.size(1), "], got ", p.sizes());
  TORCH_CHECK_VALUE(eps > 0, "fgreid_ops.gem: expected eps > 0, got ", eps);
}

// dL/dp per (n, c) row in the accumulation type, or an empty tensor when p needs no gradient
// (the fake in fgreid_ops/ops/gem.py allocates the same).
inline at::Tensor empty_grad_p_rows(const at::Tensor& x, bool need_grad_p) {
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty(need_grad_p ? at::IntArrayRef{x.size(0), x.size(1)} : at::IntArrayRef{0},
                   x.options().dtype(acc_type));
}

}  // namespace fgreid_ops
