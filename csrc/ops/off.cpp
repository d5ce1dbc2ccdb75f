// The schemas of the off operators (docs/ops.md#off).
// Kernels: csrc/cpu/off.cpp and csrc/cuda/off.cu.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/off.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // OFF. off: a, b [..., C, H, W] -> [..., 3C, H, W] = [Sx(a), Sy(a), b - a];
  // off_backward returns grad_a only (grad_b is a view of grad_out). off_segment: x [N, T, C, H, W]
  // -> off(x[:, :-stride], x[:, stride:]); its backward writes grad_x [N, T, C, H, W] in one pass.
  m.def("off(Tensor a, Tensor b) -> Tensor");
  m.def("off_backward(Tensor grad_out) -> Tensor");
  m.def("off_segment(Tensor x, int stride) -> Tensor");
  m.def("off_segment_backward(Tensor grad_out, int stride) -> Tensor");
}
