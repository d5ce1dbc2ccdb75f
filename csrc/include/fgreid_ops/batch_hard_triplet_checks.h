// Input checks of the batch-hard triplet mining ops, shared by their kernels. Messages match
// fgreid_ops/ops/batch_hard_triplet.py.
#pragma once

#include <c10/util/string_view.h>

#include <utility>

#include "fgreid_ops/checks.h"

namespace fgreid_ops {

enum class TripletDistance { kEuclidean, kSqEuclidean, kCosine };

inline TripletDistance parse_triplet_distance(c10::string_view distance) {
  if (distance == "euclidean") return TripletDistance::kEuclidean;
  if (distance == "sqeuclidean") return TripletDistance::kSqEuclidean;
  if (distance == "cosine") return TripletDistance::kCosine;
  TORCH_CHECK_VALUE(false,
                    "fgreid_ops.batch_hard_triplet: expected distance to be one of ['cosine', "
                    "'euclidean', 'sqeuclidean'], got '",
                    distance, "'");
}

inline void check_triplet_labels(const char* arg, const at::Tensor& labels, const char* emb_arg,
                                 const at::Tensor& emb) {
  constexpr const char* op = "batch_hard_triplet";
  check_dim(op, arg, labels, 1, "(B,)");
  check_int64(op, arg, labels);
  check_same_device(op, arg, labels, "emb", emb);
  TORCH_CHECK_VALUE(labels.size(0) == emb.size(0), "fgreid_ops.batch_hard_triplet: expected ", arg,
                    " of shape [", emb.size(0), "] (one per row of ", emb_arg, "), got ",
                    labels.sizes());
}

inline TripletDistance check_batch_hard_triplet_inputs(const at::Tensor& emb,
                                                       const at::Tensor& labels,
                                                       const at::Tensor& ref_emb,
                                                       const at::Tensor& ref_labels,
                                                       c10::string_view distance) {
  constexpr const char* op = "batch_hard_triplet";
  check_defined(op, {{"emb", &emb}, {"labels", &labels}, {"ref_emb", &ref_emb}, {"ref_labels", &ref_labels}});
  check_dim(op, "emb", emb, 2, "(B, D)");
  check_float_dtype(op, "emb", emb);
  check_nonempty_batch(op, "emb", emb);
  check_nonempty(op, "emb", emb);
  check_triplet_labels("labels", labels, "emb", emb);
  check_dim(op, "ref_emb", ref_emb, 2, "(M, D)");
  check_same_dtype(op, "ref_emb", ref_emb, "emb", emb);
  check_same_device(op, "ref_emb", ref_emb, "emb", emb);
  check_nonempty_batch(op, "ref_emb", ref_emb);
  TORCH_CHECK_VALUE(ref_emb.size(1) == emb.size(1),
                    "fgreid_ops.batch_hard_triplet: expected ref_emb of width D=", emb.size(1),
                    " (as emb), got ", ref_emb.size(1));
  check_triplet_labels("ref_labels", ref_labels, "ref_emb", ref_emb);
  return parse_triplet_distance(distance);
}

// The backward op: grad_d_ap, grad_d_an, d_ap, d_an float [B] and idx_p, idx_n int64 [B] with
// values in [-1, M), all on emb's device; ref_emb [M, D] with emb's dtype (M may be 0 when every
// index is -1). The index values are read on CPU (O(B)), where the kernel uses them as rows.
inline void check_batch_hard_triplet_backward_inputs(const at::Tensor& grad_d_ap, const at::Tensor& grad_d_an,
                                                     const at::Tensor& emb, const at::Tensor& ref_emb,
                                                     const at::Tensor& idx_p, const at::Tensor& idx_n,
                                                     const at::Tensor& d_ap, const at::Tensor& d_an) {
  constexpr const char* op = "batch_hard_triplet";
  check_defined(op, {{"grad_d_ap", &grad_d_ap}, {"grad_d_an", &grad_d_an}, {"emb", &emb}, {"ref_emb", &ref_emb},
                     {"idx_p", &idx_p}, {"idx_n", &idx_n}, {"d_ap", &d_ap}, {"d_an", &d_an}});
  check_dim(op, "emb", emb, 2, "(B, D)");
  check_float_dtype(op, "emb", emb);
  check_dim(op, "ref_emb", ref_emb, 2, "(M, D)");
  check_same_dtype(op, "ref_emb", ref_emb, "emb", emb);
  TORCH_CHECK_VALUE(ref_emb.size(1) == emb.size(1), "fgreid_ops.batch_hard_triplet: expected ref_emb of width D=",
                    emb.size(1), " (as emb), got ", ref_emb.size(1));
  const int64_t B = emb.size(0), M = ref_emb.size(0);
  check_same_devices(op, {{"emb", &emb}, {"ref_emb", &ref_emb}, {"grad_d_ap", &grad_d_ap}, {"grad_d_an", &grad_d_an},
                          {"idx_p", &idx_p}, {"idx_n", &idx_n}, {"d_ap", &d_ap}, {"d_an", &d_an}});
  const std::pair<const char*, const at::Tensor*> vectors[] = {
      {"grad_d_ap", &grad_d_ap}, {"grad_d_an", &grad_d_an}, {"idx_p", &idx_p},
      {"idx_n", &idx_n},         {"d_ap", &d_ap},           {"d_an", &d_an}};
  for (const auto& [arg, t] : vectors) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == B, "fgreid_ops.batch_hard_triplet: expected ", arg,
                      " of shape [", B, "] (one per row of emb), got ", t->sizes());
  }
  for (const auto& [arg, t] : {vectors[0], vectors[1], vectors[4], vectors[5]}) check_float_dtype(op, arg, *t);
  for (const auto& [arg, t] : {vectors[2], vectors[3]}) {
    check_int64(op, arg, *t);
    if (!t->device().is_cpu() || B == 0) continue;
    const at::Tensor idx = t->contiguous();
    const int64_t* v = idx.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < B; ++i) {
      TORCH_CHECK_VALUE(v[i] >= -1 && v[i] < M, "fgreid_ops.batch_hard_triplet: expected ", arg,
                        " in [-1, M)=[-1, ", M, ") (rows of ref_emb, -1 for none), got ", v[i], " at ", i);
    }
  }
}

}  // namespace fgreid_ops
