// Input checks of the batch-hard triplet mining op, shared by its kernels. Messages match
// fgreid_ops/ops/batch_hard_triplet.py.
#pragma once

#include <c10/util/string_view.h>

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
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "fgreid_ops.batch_hard_triplet: expected ",
                   arg, " to be int64, got ", labels.scalar_type());
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
  check_dim(op, "emb", emb, 2, "(B, D)");
  check_float_dtype(op, "emb", emb);
  TORCH_CHECK_VALUE(emb.size(0) > 0,
                    "fgreid_ops.batch_hard_triplet: expected emb to have a non-empty batch, got N=0");
  check_nonempty(op, "emb", emb);
  check_triplet_labels("labels", labels, "emb", emb);
  check_dim(op, "ref_emb", ref_emb, 2, "(M, D)");
  TORCH_CHECK_TYPE(ref_emb.scalar_type() == emb.scalar_type(),
                   "fgreid_ops.batch_hard_triplet: expected ref_emb to have the dtype of emb (",
                   emb.scalar_type(), "), got ", ref_emb.scalar_type());
  check_same_device(op, "ref_emb", ref_emb, "emb", emb);
  TORCH_CHECK_VALUE(
      ref_emb.size(0) > 0,
      "fgreid_ops.batch_hard_triplet: expected ref_emb to have a non-empty batch, got N=0");
  TORCH_CHECK_VALUE(ref_emb.size(1) == emb.size(1),
                    "fgreid_ops.batch_hard_triplet: expected ref_emb of width D=", emb.size(1),
                    " (as emb), got ", ref_emb.size(1));
  check_triplet_labels("ref_labels", ref_labels, "ref_emb", ref_emb);
  return parse_triplet_distance(distance);
}

}  // namespace fgreid_ops
