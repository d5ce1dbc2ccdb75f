// Input checks of the rank-evaluation ops (docs/ops.md#evaluate), shared by the CPU kernels and any GPU
// kernel. The match lists (offsets, index, dist, counts) are checked down to the offset values,
// which the kernels use as array indices: a direct torch.ops caller cannot make them read or
// write out of bounds.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "fgreid_ops/checks.h"

namespace fgreid_ops {

inline void check_id_vector(const char* op, const char* arg, const at::Tensor& t, int64_t n,
                            const char* size_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "fgreid_ops.", op, ": expected ", arg,
                   " to be an int64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, "fgreid_ops.", op, ": expected ", arg,
                    " of shape [", size_name, "]=[", n, "], got ", t.sizes());
}

// Gallery indices are compared as int64 but a chunk is walked with 32-bit counters.
constexpr int64_t kMaxGalleryChunk = std::numeric_limits<int32_t>::max();

inline void check_distance_block(const char* op, const char* arg, const at::Tensor& d) {
  check_dim(op, arg, d, 2, "(num_query, num_gallery)");
  check_float_dtype(op, arg, d);
  TORCH_CHECK_VALUE(d.size(0) > 0, "fgreid_ops.", op, ": expected ", arg,
                    " to have at least one query, got shape ", d.sizes());
  TORCH_CHECK_VALUE(d.size(1) > 0, "fgreid_ops.", op, ": expected ", arg,
                    " to have at least one gallery item, got shape ", d.sizes());
  TORCH_CHECK_VALUE(d.size(1) <= kMaxGalleryChunk, "fgreid_ops.", op, ": expected ", arg,
                    " to have at most 2^31-1 gallery columns, got ", d.size(1));
}

inline void check_evaluate_inputs(const at::Tensor& distmat, const at::Tensor& q_pids,
                                  const at::Tensor& g_pids, const at::Tensor& q_camids,
                                  const at::Tensor& g_camids) {
  check_defined("evaluate", {{"distmat", &distmat}, {"q_pids", &q_pids}, {"g_pids", &g_pids}, {"q_camids", &q_camids},
                             {"g_camids", &g_camids}});
  check_distance_block("evaluate", "distmat", distmat);
  const int64_t Q = distmat.size(0), G = distmat.size(1);
  check_id_vector("evaluate", "q_pids", q_pids, Q, "Q");
  check_id_vector("evaluate", "g_pids", g_pids, G, "G");
  check_id_vector("evaluate", "q_camids", q_camids, Q, "Q");
  check_id_vector("evaluate", "g_camids", g_camids, G, "G");
  check_same_device("evaluate", "q_pids", q_pids, "distmat", distmat);
  check_same_device("evaluate", "g_pids", g_pids, "distmat", distmat);
  check_same_device("evaluate", "q_camids", q_camids, "distmat", distmat);
  check_same_device("evaluate", "g_camids", g_camids, "distmat", distmat);
}

inline void check_matches_inputs(const at::Tensor& q_pids, const at::Tensor& g_pids,
                                 const at::Tensor& q_camids, const at::Tensor& g_camids) {
  const char* op = "evaluate_matches";
  check_defined(op, {{"q_pids", &q_pids}, {"g_pids", &g_pids}, {"q_camids", &q_camids}, {"g_camids", &g_camids}});
  TORCH_CHECK_VALUE(q_pids.dim() == 1 && q_pids.size(0) > 0, "fgreid_ops.", op,
                    ": expected q_pids to be a non-empty 1-D tensor, got shape ", q_pids.sizes());
  TORCH_CHECK_VALUE(g_pids.dim() == 1 && g_pids.size(0) > 0, "fgreid_ops.", op,
                    ": expected g_pids to be a non-empty 1-D tensor, got shape ", g_pids.sizes());
  check_id_vector(op, "q_pids", q_pids, q_pids.size(0), "Q");
  check_id_vector(op, "g_pids", g_pids, g_pids.size(0), "G");
  check_id_vector(op, "q_camids", q_camids, q_pids.size(0), "Q");
  check_id_vector(op, "g_camids", g_camids, g_pids.size(0), "G");
  check_same_device(op, "g_pids", g_pids, "q_pids", q_pids);
  check_same_device(op, "q_camids", q_camids, "q_pids", q_pids);
  check_same_device(op, "g_camids", g_camids, "q_pids", q_pids);
}

// offsets [n + 1] int64, non-decreasing from >= 0 to <= nnz; index [nnz] int64; dist [nnz]
// float; counts [nnz] int64 (contiguous when written). Reads the offsets (O(n)).
inline void check_match_lists(const char* op, const at::Tensor& offsets, const at::Tensor& index,
                              const at::Tensor& dist, const at::Tensor& counts, int64_t n,
                              bool counts_written) {
  check_id_vector(op, "match_offsets", offsets, n + 1, "num_query + 1");
  const int64_t nnz = index.dim() == 1 ? index.size(0) : -1;
  TORCH_CHECK_VALUE(index.dim() == 1, "fgreid_ops.", op, ": expected match_index to be 1-D, got ",
                    index.dim(), "-D");
  check_id_vector(op, "match_index", index, nnz, "nnz");
  check_float_dtype(op, "match_dist", dist);
  TORCH_CHECK_VALUE(dist.dim() == 1 && dist.size(0) == nnz, "fgreid_ops.", op,
                    ": expected match_dist of shape [nnz]=[", nnz, "], got ", dist.sizes());
  check_id_vector(op, "counts", counts, nnz, "nnz");
  TORCH_CHECK_VALUE(!counts_written || counts.is_contiguous(), "fgreid_ops.", op,
                    ": expected counts to be contiguous (it is written in place)");
  check_same_devices(op, {{"match_offsets", &offsets}, {"match_index", &index}, {"match_dist", &dist},
                          {"counts", &counts}});
  if (offsets.device().is_cpu()) {
    const at::Tensor o = offsets.contiguous();
    const int64_t* p = o.const_data_ptr<int64_t>();
    TORCH_CHECK_VALUE(p[0] >= 0 && p[n] <= nnz, "fgreid_ops.", op,
                      ": expected match_offsets within [0, nnz]=[0, ", nnz, "], got ", p[0], " .. ",
                      p[n]);
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(p[i] <= p[i + 1], "fgreid_ops.", op,
                        ": expected match_offsets to be non-decreasing, got ", p[i], " then ",
                        p[i + 1], " at ", i);
    }
  }
}

// Every value of an int64 tensor >= 0 (read on CPU).
inline void check_nonnegative(const char* op, const char* arg, const at::Tensor& t) {
  if (!t.device().is_cpu() || t.numel() == 0) return;
  const at::Tensor c = t.contiguous();
  const int64_t* p = c.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    TORCH_CHECK_VALUE(p[i] >= 0, "fgreid_ops.", op, ": expected ", arg, " >= 0, got ", p[i], " at ", i);
  }
}

}  // namespace fgreid_ops
