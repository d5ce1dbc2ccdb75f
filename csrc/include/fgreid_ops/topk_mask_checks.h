// Input checks of the top-k mask op, shared by its CPU and CUDA kernels.
#pragma once

#include "fgreid_ops/checks.h"

namespace fgreid_ops {

inline void check_topk_mask_inputs(const at::Tensor& f1, const at::Tensor& f2, int64_t k) {
  check_dim("topk_mask", "f1", f1, 4, "(N, C, H, W)");
  check_float_dtype("topk_mask", "f1", f1);
  check_same_device("topk_mask", "f2", f2, "f1", f1);
  TORCH_CHECK_TYPE(f2.scalar_type() == f1.scalar_type(),
                   "fgreid_ops.topk_mask: expected f2 to have the same dtype as f1 (",
                   f1.scalar_type(), "), got ", f2.scalar_type());
  TORCH_CHECK_VALUE(f2.sizes() == f1.sizes(),
                    "fgreid_ops.topk_mask: expected f2 of the same shape as f1 ", f1.sizes(),
                    ", got ", f2.sizes());
  TORCH_CHECK_VALUE(f1.size(0) > 0,
                    "fgreid_ops.topk_mask: expected f1 to have a non-empty batch, got N=0");
  check_nonempty("topk_mask", "f1", f1);
  TORCH_CHECK_VALUE(k >= 0, "fgreid_ops.topk_mask: expected k >= 0, got ", k);
}

// grad_out [N, C, H, W] (or [N, C], the gradient of the pooled output, with pool) and the mask
// [N, 1, H, W] the forward returned.
inline void check_topk_mask_backward_inputs(const at::Tensor& grad_out, const at::Tensor& mask, bool pool) {
  if (pool) {
    check_dim("topk_mask_backward", "grad_out", grad_out, 2, "(N, C)");
  } else {
    check_dim("topk_mask_backward", "grad_out", grad_out, 4, "(N, C, H, W)");
  }
  check_float_dtype("topk_mask_backward", "grad_out", grad_out);
  check_float_dtype("topk_mask_backward", "mask", mask);
  check_same_device("topk_mask_backward", "mask", mask, "grad_out", grad_out);
  if (pool) {
    TORCH_CHECK_VALUE(mask.dim() == 4 && mask.size(0) == grad_out.size(0) && mask.size(1) == 1,
                      "fgreid_ops.topk_mask_backward: expected mask of shape [N, 1, H, W] with N=",
                      grad_out.size(0), ", got ", mask.sizes());
    return;
  }
  TORCH_CHECK_VALUE(mask.dim() == 4 && mask.size(0) == grad_out.size(0) && mask.size(1) == 1 &&
                        mask.size(2) == grad_out.size(2) && mask.size(3) == grad_out.size(3),
                    "fgreid_ops.topk_mask_backward: expected mask of shape [N, 1, H, W]=[",
                    grad_out.size(0), ", 1, ", grad_out.size(2), ", ", grad_out.size(3), "], got ",
                    mask.sizes());
}

}  // namespace fgreid_ops
