// The schemas of the topk_mask operators (docs/ops.md#topk_mask).
// Kernels: csrc/cpu/topk_mask.cpp and csrc/cuda/topk_mask.cu.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/topk_mask.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // Top-k attention exploration (docs/ops.md#topk_mask, CUHS eq. 5-6). mask is [N, 1, H, W] in f2's dtype;
  // the backward is grad_f2 = grad_out * mask (f1 gets no gradient). With pool, out is the
  // mean over H x W of f2 * mask, [N, C], and the product is never written; grad_out is then
  // [N, C] and grad_f2 = grad_out / (H W) * mask.
  m.def("topk_mask(Tensor f1, Tensor f2, int k, bool pool=False) -> (Tensor out, Tensor mask)");
  m.def("topk_mask_backward(Tensor grad_out, Tensor mask, bool pool=False) -> Tensor");
}
