// The schemas of the batch_hard_triplet operators (docs/ops.md#batch_hard_triplet).
// Kernels: csrc/cpu/batch_hard_triplet.cpp.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/batch_hard_triplet.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // Batch-hard triplet mining: for each anchor row of emb, the index into ref_emb of
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
}
