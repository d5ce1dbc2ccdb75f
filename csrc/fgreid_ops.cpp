// The one place that declares the operator schemas of the `fgreid` namespace.
// Kernels register per backend in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; Triton
// kernels register from fgreid_ops/triton/<op>.py; fakes and autograd live in
// fgreid_ops/ops/<op>.py.
#include <torch/library.h>

TORCH_LIBRARY(fgreid, m) {
  // GeM pooling (SPEC §1). grad_p_rows is dL/dp per (n, c) row, reduced to p's shape in Python.
  // The backward recomputes the row means from x in float32 rather than reading the forward
  // output, which is rounded to x's dtype: with half inputs that rounding cost ~1% in grad_p.
  m.def("gem(Tensor x, Tensor p, float eps) -> Tensor");
  m.def(
      "gem_backward(Tensor grad_out, Tensor x, Tensor p, float eps, bool need_grad_p)"
      " -> (Tensor grad_x, Tensor grad_p_rows)");
  m.def("gem_triton(Tensor x, Tensor p, float eps) -> Tensor");
  m.def(
      "gem_triton_backward(Tensor grad_out, Tensor x, Tensor p, float eps, bool need_grad_p)"
      " -> (Tensor grad_x, Tensor grad_p_rows)");

  // Fused localization (SPEC §3): feat * F.interpolate(mask, (H, W), mode, align_corners=False),
  // or its mean over H x W with pool. Unrequested gradients come back as empty tensors.
  m.def("mask_upsample_mul(Tensor feat, Tensor mask, str mode, bool pool) -> Tensor");
  m.def(
      "mask_upsample_mul_backward(Tensor grad_out, Tensor feat, Tensor mask, str mode, bool pool,"
      " bool need_grad_feat, bool need_grad_mask) -> (Tensor grad_feat, Tensor grad_mask)");
}
