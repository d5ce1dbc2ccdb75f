// The schemas of the rerank operators (docs/ops.md#rerank).
// Kernels: csrc/cpu/rerank.cpp.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/rerank.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // k-reciprocal re-ranking, in stages so that a streamed evaluation can blend one
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
