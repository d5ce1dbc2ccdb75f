// Input checks of the GeM op, shared by its CPU and CUDA kernels.
#pragma once

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

}  // namespace fgreid_ops
