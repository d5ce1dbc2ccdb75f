// The schemas of the gem operators (docs/ops.md#gem).
// Kernels: csrc/cpu/gem.cpp and csrc/cuda/gem.cu.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/gem.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // GeM pooling. grad_p_rows is dL/dp per (n, c) row, reduced to p's shape in Python.
  // The backward recomputes the row means from x in float32 rather than reading the forward
  // output, which is rounded to x's dtype: with half inputs that rounding cost ~1% in grad_p.
  m.def("gem(Tensor x, Tensor p, float eps) -> Tensor");
  m.def(
      "gem_backward(Tensor grad_out, Tensor x, Tensor p, float eps, bool need_grad_p)"
      " -> (Tensor grad_x, Tensor grad_p_rows)");
}
