// Input checks and output allocation of the top-k mask op, shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/ops/empty.h>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/layout.h"

namespace fgreid_ops {

inline void check_topk_mask_inputs(const at::Tensor& f1, const at::Tensor& f2, int64_t k) {
  check_defined("topk_mask", {{"f1", &f1}, {"f2", &f2}});
  check_dim("topk_mask", "f1", f1, 4, "(N, C, H, W)");
  check_float_dtype("topk_mask", "f1", f1);
  check_same_device("topk_mask", "f2", f2, "f1", f1);
  check_same_dtype("topk_mask", "f2", f2, "f1", f1);
  TORCH_CHECK_VALUE(f2.sizes() == f1.sizes(),
                    "fgreid_ops.topk_mask: expected f2 of the same shape as f1 ", f1.sizes(),
                    ", got ", f2.sizes());
  check_nonempty_batch("topk_mask", "f1", f1);
  check_nonempty("topk_mask", "f1", f1);
  TORCH_CHECK_VALUE(k >= 0, "fgreid_ops.topk_mask: expected k >= 0, got ", k);
}

// grad_out [N, C, H, W] (or [N, C], the gradient of the pooled output, with pool) and the mask
// [N, 1, H, W] the forward returned.
inline void check_topk_mask_backward_inputs(const at::Tensor& grad_out, const at::Tensor& mask, bool pool) {
  check_defined("topk_mask_backward", {{"grad_out", &grad_out}, {"mask", &mask}});
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

// f1 and f2 as the kernels read them (contiguous or channels_last), the mask [N, 1, H, W] in f2's
// dtype and out in f2's layout ([N, C] with pool; the fakes in fgreid_ops/ops/topk_mask.py follow
// the same rule).
struct TopkMaskForward {
  at::Tensor f1, f2, mask, out;
};

inline TopkMaskForward prepare_topk_mask(const at::Tensor& f1, const at::Tensor& f2, int64_t k, bool pool) {
  check_topk_mask_inputs(f1, f2, k);
  TopkMaskForward t;
  t.f1 = contiguous_or_channels_last(f1);
  t.f2 = contiguous_or_channels_last(f2);
  t.mask = at::empty({f2.size(0), 1, f2.size(2), f2.size(3)}, f2.options());
  t.out = pool ? at::empty({f2.size(0), f2.size(1)}, f2.options()) : empty_in_layout_of(t.f2);
  return t;
}

// grad_out is kept with its own strides (the kernels read expanded and permuted gradients in
// place); grad_f2 is channels_last when grad_out is, else contiguous ([N, C, H, W] with pool).
struct TopkMaskBackward {
  at::Tensor grad_out, mask, grad_f2;
};

inline TopkMaskBackward prepare_topk_mask_backward(const at::Tensor& grad_out, const at::Tensor& mask, bool pool) {
  check_topk_mask_backward_inputs(grad_out, mask, pool);
  TopkMaskBackward t;
  t.grad_out = grad_out;
  t.mask = mask.to(grad_out.scalar_type()).contiguous();
  t.grad_f2 = pool ? empty_output({grad_out.size(0), grad_out.size(1), mask.size(2), mask.size(3)}, grad_out.options())
                   : empty_in_layout_of(grad_out);
  return t;
}

}  // namespace fgreid_ops
