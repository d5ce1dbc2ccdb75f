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
  // Top-k attention exploration (SPEC §4, CUHS eq. 5-6). mask is [N, 1, H, W] in f2's dtype;
  // the backward is grad_f2 = grad_out * mask (f1 gets no gradient).
  m.def("topk_mask(Tensor f1, Tensor f2, int k) -> (Tensor out, Tensor mask)");
  m.def("topk_mask_backward(Tensor grad_out, Tensor mask) -> Tensor");
  m.def("topk_mask_triton(Tensor f1, Tensor f2, int k) -> (Tensor out, Tensor mask)");
  m.def("topk_mask_triton_backward(Tensor grad_out, Tensor mask) -> Tensor");
}
