// Input checks and output allocation of the fused localization op (docs/ops.md#mask_upsample_mul), shared by its CPU
// and CUDA kernels.
#pragma once

#include <string_view>
#include <tuple>

#include <ATen/ops/empty.h>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/huge_pages.h"

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
  check_defined(op, {{"feat", &feat}, {"mask", &mask}});
  check_dim(op, "feat", feat, 4, "(N, C, H, W)");
  check_dim(op, "mask", mask, 4, "(N, 1 or C, h, w)");
  check_float_dtype(op, "feat", feat);
  check_same_dtype(op, "mask", mask, "feat", feat);
  check_same_device(op, "mask", mask, "feat", feat);
  check_nonempty_batch(op, "feat", feat);
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
  check_float_dtype("mask_upsample_mul", "grad_out", grad_out);
  check_same_device("mask_upsample_mul", "grad_out", grad_out, "feat", feat);
}

// feat as contiguous NCHW, the mask as a contiguous plane stack in the accumulation dtype, and
// the output [N, C, H, W] (or [N, C] with pool).
struct MaskUpsampleMulForward {
  at::Tensor feat, mask, out;
  bool linear;
};

inline MaskUpsampleMulForward prepare_mask_upsample_mul(const at::Tensor& feat, const at::Tensor& mask,
                                                        std::string_view mode, bool pool) {
  check_mask_upsample_mul_inputs(feat, mask);
  MaskUpsampleMulForward f;
  f.linear = parse_upsample_mode(mode) == UpsampleMode::kBilinear;
  f.feat = feat.contiguous();
  f.mask = mask.to(acc_dtype(feat)).contiguous();
  f.out = pool ? at::empty({feat.size(0), feat.size(1)}, feat.options()) : empty_output(feat.sizes(), feat.options());
  return f;
}

// grad_out in feat's dtype (contiguous); grad_feat, and grad_mask in the accumulation dtype, or
// empty tensors where not requested.
struct MaskUpsampleMulBackward {
  at::Tensor grad_out, feat, mask, grad_feat, grad_mask;
  bool linear;
};

inline MaskUpsampleMulBackward prepare_mask_upsample_mul_backward(const at::Tensor& grad_out, const at::Tensor& feat,
                                                                  const at::Tensor& mask, std::string_view mode,
                                                                  bool pool, bool need_grad_feat, bool need_grad_mask,
                                                                  bool reads_grad_strides = false) {
  check_defined("mask_upsample_mul", {{"grad_out", &grad_out}});
  check_mask_upsample_mul_inputs(feat, mask);
  check_mask_upsample_mul_grad(grad_out, feat, pool);
  MaskUpsampleMulBackward b;
  b.linear = parse_upsample_mode(mode) == UpsampleMode::kBilinear;
  b.feat = feat.contiguous();
  b.grad_out = reads_grad_strides ? grad_out.to(feat.scalar_type()) : grad_out.to(feat.scalar_type()).contiguous();
  b.mask = mask.to(acc_dtype(feat)).contiguous();
  b.grad_feat = empty_output(need_grad_feat ? feat.sizes() : at::IntArrayRef{0}, feat.options());
  b.grad_mask = at::empty(need_grad_mask ? mask.sizes() : at::IntArrayRef{0}, b.mask.options());
  return b;
}

// The op's outputs: grad_mask back in the mask's dtype.
inline std::tuple<at::Tensor, at::Tensor> mask_upsample_mul_gradients(const MaskUpsampleMulBackward& b,
                                                                      const at::Tensor& mask) {
  return {b.grad_feat, b.grad_mask.to(mask.scalar_type())};
}

}  // namespace fgreid_ops
