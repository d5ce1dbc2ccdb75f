// The schemas of the evaluate operators (docs/ops.md#evaluate).
// Kernels: csrc/cpu/evaluate.cpp.
// Fakes, autograd and the Triton twin: the op description in fgreid_ops/ops/evaluate.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fgreid, m) {
  // Rank evaluation. `evaluate` takes the whole distance matrix; a streamed evaluation
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
}
