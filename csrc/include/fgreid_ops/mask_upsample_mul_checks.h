// Input checks of the fused localization op (docs/ops.md#mask_upsample_mul), shared by its CPU and CUDA kernels.
#pragma once

#include <string_view>

#include "fgreid_ops/checks.h"

namespace fgreid_ops {

enum class UpsampleMode { kBilinear, kNearest };

inline UpsampleMode parse_upsample_mode(std::string_view mode) {
  if (mode == "bilinear") return UpsampleMode::kBilinear;
  if (mode == "nearest") return UpsampleMode::kNearest;
  TORCH_CHECK_VALUE(false, "fgreid_ops.mask_upsample_mul: expected mode to be one of ['bilinear', 'nearest'], got '",
                    mode, "'");
}

inline void check_mask_upsample_mul_inputs(const at::Tensor& feat, const at::Tensor& mask) {
  constexpr const char* op = "mask_upsample_mul";
  check_dim(op, "feat", feat, 4, "(N, C, H, W)");
  check_dim(op, "mask", mask, 4, "(N, 1 or C, h, w)");
  check_float_dtype(op, "feat", feat);
  TORCH_CHECK_TYPE(mask.scalar_type() == feat.scalar_type(), "fgreid_ops.mask_upsample_mul: expected mask to have ",
                   "the same dtype as feat (", feat.scalar_type(), "), got ", mask.scalar_type());
  check_same_device(op, "mask", mask, "feat", feat);
  TORCH_CHECK_VALUE(feat.size(0) > 0, "fgreid_ops.mask_upsample_mul: expected feat to have a non-empty batch, got N=0");
  check_nonempty(op, "feat", feat);
  TORCH_CHECK_VALUE(mask.size(0) == feat.size(0) && (mask.size(1) == 1 || mask.size(1) == feat.size(1)),
                    "fgreid_ops.mask_upsample_mul: expected mask of shape [N, 1, h, w] or [N, C, h, w] with N=",
                    feat.size(0), ", C=", feat.size(1), ", got ", mask.sizes());
  check_nonempty(op, "mask", mask);
}

inline void check_mask_upsample_mul_grad(const at::Tensor& grad_out, const at::Tensor& feat, bool pool) {
  const bool ok = pool ? (grad_out.dim() == 2 && grad_out.size(0) == feat.size(0) && grad_out.size(1) == feat.size(1))
                       : grad_out.sizes() == feat.sizes();
  TORCH_CHECK_VALUE(ok, "fgreid_ops.mask_upsample_mul: expected grad_out of shape ",
                    pool ? at::IntArrayRef(feat.sizes().slice(0, 2)) : feat.sizes(), ", got ", grad_out.sizes());
  check_same_device("mask_upsample_mul", "grad_out", grad_out, "feat", feat);
}

}  // namespace fgreid_ops
