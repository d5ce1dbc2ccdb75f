// The one place that declares the operator schemas of the `fgreid` namespace.
// Kernels register per backend in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu. The Triton twins
// (<op>_triton) are defined in Python from the op descriptions in fgreid_ops/ops/<op>.py, which
// also register the fakes and autograd of every op (fgreid_ops/_registry.py).
#include <torch/library.h>

TORCH_LIBRARY(fgreid, m) {
  // GeM pooling (docs/ops.md#gem). grad_p_rows is dL/dp per (n, c) row, reduced to p's shape in Python.
  // The backward recomputes the row means from x in float32 rather than reading the forward
  // output, which is rounded to x's dtype: with half inputs that rounding cost ~1% in grad_p.
  m.def("gem(Tensor x, Tensor p, float eps) -> Tensor");
  m.def(
      "gem_backward(Tensor grad_out, Tensor x, Tensor p, float eps, bool need_grad_p)"
      " -> (Tensor grad_x, Tensor grad_p_rows)");

  // Fused localization (docs/ops.md#mask_upsample_mul): feat * F.interpolate(mask, (H, W), mode, align_corners=False),
  // or its mean over H x W with pool. Unrequested gradients come back as empty tensors.
  m.def("mask_upsample_mul(Tensor feat, Tensor mask, str mode, bool pool) -> Tensor");
  m.def(
      "mask_upsample_mul_backward(Tensor grad_out, Tensor feat, Tensor mask, str mode, bool pool,"
      " bool need_grad_feat, bool need_grad_mask) -> (Tensor grad_feat, Tensor grad_mask)");
  // OFF (docs/ops.md#off). off: a, b [..., C, H, W] -> [..., 3C, H, W] = [Sx(a), Sy(a), b - a];
  // off_backward returns grad_a only (grad_b is a view of grad_out). off_segment: x [N, T, C, H, W]
  // -> off(x[:, :-stride], x[:, stride:]); its backward writes grad_x [N, T, C, H, W] in one pass.
  m.def("off(Tensor a, Tensor b) -> Tensor");
  m.def("off_backward(Tensor grad_out) -> Tensor");
  m.def("off_segment(Tensor x, int stride) -> Tensor");
  m.def("off_segment_backward(Tensor grad_out, int stride) -> Tensor");
  // Rank evaluation (docs/ops.md#evaluate). `evaluate` takes the whole distance matrix; a streamed evaluation
  // calls evaluate_matches once, evaluate_count per gallery chunk (accumulating into counts) and
  // evaluate_finalize. Per query: first_hit is the 1-based rank of the first match (-1 when the
  // query has no match and is skipped), ap its average precision, inp its inverse negative
  // penalty (float64, NaN when skipped). Match lists are CSR: match_offsets [Q + 1].
  m.def(
      "evaluate(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, Tensor g_camids,"
      " int? junk_pid) -> (Tensor first_hit, Tensor ap, Tensor inp)");
  m.def(
      "evaluate_matches(Tensor q_pids, Tensor g_pids, Tensor q_camids, Tensor g_camids,"
      " int? junk_pid) -> (Tensor match_offsets, Tensor match_index)");
  m.def(
      "evaluate_count(Tensor dist, Tensor q_pids, Tensor g_pids, int g_start, Tensor match_offsets,"
      " Tensor match_index, Tensor match_dist, int? junk_pid, Tensor(a!) counts) -> ()");
  m.def(
      "evaluate_finalize(Tensor match_offsets, Tensor match_index, Tensor match_dist,"
      " Tensor counts) -> (Tensor first_hit, Tensor ap, Tensor inp)");
  // Top-k attention exploration (docs/ops.md#topk_mask, CUHS eq. 5-6). mask is [N, 1, H, W] in f2's dtype;
  // the backward is grad_f2 = grad_out * mask (f1 gets no gradient). With pool, out is the
  // mean over H x W of f2 * mask, [N, C], and the product is never written; grad_out is then
  // [N, C] and grad_f2 = grad_out / (H W) * mask.
  m.def("topk_mask(Tensor f1, Tensor f2, int k, bool pool=False) -> (Tensor out, Tensor mask)");
  m.def("topk_mask_backward(Tensor grad_out, Tensor mask, bool pool=False) -> Tensor");
  // Batch-hard triplet mining (docs/ops.md#batch_hard_triplet): for each anchor row of emb, the index into ref_emb of
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
  // k-reciprocal re-ranking (docs/ops.md#rerank), in stages so that a streamed evaluation can blend one
  // tile at a time. rerank_knn: the k nearest rows of every row of feats (ties to the lower
  // index) and each row's max squared distance. rerank_neighbours: V (after query expansion) as
  // CSR and its transpose (the inverted index). rerank_blend_: overwrites the Gram tile
  // feats[row_start:] . feats[col_start:]^T with (1 - lambda) Jaccard + lambda d / row_max.
  m.def("rerank_knn(Tensor feats, Tensor sqnorms, int k) -> (Tensor index, Tensor row_max)");
  m.def(
      "rerank_neighbours(Tensor feats, Tensor sqnorms, Tensor knn_index, Tensor row_max, int k1,"
      " int k2) -> (Tensor v_offsets, Tensor v_columns, Tensor v_values, Tensor inv_offsets,"
      " Tensor inv_rows, Tensor inv_values)");
  m.def(
      "rerank_blend_(Tensor(a!) gram, Tensor row_sq, Tensor col_sq, Tensor row_max,"
      " Tensor v_offsets, Tensor v_columns, Tensor v_values, Tensor inv_offsets, Tensor inv_rows,"
      " Tensor inv_values, int row_start, int col_start, float lambda_value) -> ()");
}
