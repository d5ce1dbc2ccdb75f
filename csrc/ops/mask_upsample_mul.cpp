// The schemas of the mask_upsample_mul operators (docs/ops.md#mask_upsample_mul).
// Kernels: csrc/cpu/mask_upsample_mul.cpp and csrc/cuda/mask_upsample_mul.cu.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/mask_upsample_mul.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // Fused localization: feat * F.interpolate(mask, (H, W), mode, align_corners=False),
  // or its mean over H x W with pool. Unrequested gradients come back as empty tensors.
  m.def("mask_upsample_mul(Tensor feat, Tensor mask, str mode, bool pool) -> Tensor");
  m.def(
      "mask_upsample_mul_backward(Tensor grad_out, Tensor feat, Tensor mask, str mode, bool pool,"
      " bool need_grad_feat, bool need_grad_mask) -> (Tensor grad_feat, Tensor grad_mask)");
}
