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

  // Batch-hard triplet mining (SPEC §5): for each anchor row of emb, the index into ref_emb of
  // its hardest positive (largest distance, same label) and hardest negative (smallest distance,
  // other label), -1 where none exists; ties go to the lower index and a NaN distance wins.
  // distance is "euclidean", "sqeuclidean" or "cosine" (= 1 - a.b: the caller L2-normalizes the
  // rows first). d_ap, d_an are the distances of the selected pairs (-inf / +inf where none, so
  // that relu(d_ap - d_an + margin) is 0 there) in float32
  // (float64 for float64 input). The B x M distance matrix is never stored. The backward takes
  // the gradients of d_ap, d_an and uses the saved indices: grad_ref is empty unless
  // need_ref_grad. The loss itself is computed in Python (fgreid_ops/ops/batch_hard_triplet.py).
  m.def(
      "batch_hard_triplet_mine(Tensor emb, Tensor labels, Tensor ref_emb, Tensor ref_labels,"
      " str distance) -> (Tensor d_ap, Tensor d_an, Tensor idx_p, Tensor idx_n)");
  m.def(
      "batch_hard_triplet_mine_backward(Tensor grad_d_ap, Tensor grad_d_an, Tensor emb,"
      " Tensor ref_emb, Tensor idx_p, Tensor idx_n, Tensor d_ap, Tensor d_an, str distance,"
      " bool need_ref_grad) -> (Tensor grad_emb, Tensor grad_ref)");
  m.def(
      "batch_hard_triplet_mine_triton(Tensor emb, Tensor labels, Tensor ref_emb,"
      " Tensor ref_labels, str distance) -> (Tensor d_ap, Tensor d_an, Tensor idx_p, Tensor idx_n)");
  m.def(
      "batch_hard_triplet_mine_triton_backward(Tensor grad_d_ap, Tensor grad_d_an, Tensor emb,"
      " Tensor ref_emb, Tensor idx_p, Tensor idx_n, Tensor d_ap, Tensor d_an, str distance,"
      " bool need_ref_grad) -> (Tensor grad_emb, Tensor grad_ref)");
}
