// Batch-hard triplet mining on CPU (SPEC §5). For every anchor a_i and reference b_j the key is
//   euclidean:   max(|a|^2 + |b|^2 - 2 a.b, 1e-12)   (monotone in the distance: no sqrt needed)
//   sqeuclidean: max(|a|^2 + |b|^2 - 2 a.b, 0)
//   cosine:      1 - a.b                            (rows L2-normalized by the caller)
// and we keep, per anchor, the largest key among references with its label and the smallest
// among the others, with the lowest index on ties. Anchors are split in blocks over threads;
// each block walks the references in tiles: one BLAS gemm per tile (a block x tile of dot
// products small enough to stay in L2), then one vectorized pass per row folds the tile into
// the running max/min. Memory is O(block x tile) per thread, never B x M.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "fgreid_ops/batch_hard_triplet_checks.h"
#include "fgreid_ops/fast_math.h"

namespace fgreid_ops {
namespace {

constexpr int64_t kMaxAnchorBlock = 256;
constexpr int64_t kRefTile = 512;

template <typename acc_t>
FGREID_CPU_CLONES void row_squared_norms(const acc_t* x, int64_t rows, int64_t D, acc_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* xr = x + r * D;
    acc_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < D; ++k) s += xr[k] * xr[k];
    out[r] = s;
  }
}

// One row of dot products -> selection keys, in place.
template <typename acc_t>
FGREID_CPU_CLONES void dots_to_keys(acc_t* t, int64_t n, acc_t na, const acc_t* nb, acc_t floor,
                                    bool cosine) {
  if (cosine) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) t[j] = acc_t(1) - t[j];
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc_t sq = na + nb[j] - acc_t(2) * t[j];
    t[j] = sq < floor ? floor : sq;  // NaN stays NaN
  }
}

// A NaN key wins both searches (as torch.max/min propagate NaN): +inf for the max over
// positives, -inf for the min over negatives.
template <typename acc_t>
FGREID_INLINE acc_t max_key(acc_t k) {
  return k != k ? std::numeric_limits<acc_t>::infinity() : k;
}
template <typename acc_t>
FGREID_INLINE acc_t min_key(acc_t k) {
  return k != k ? -std::numeric_limits<acc_t>::infinity() : k;
}

template <typename acc_t>
struct TileExtrema {
  acc_t max_pos;
  acc_t min_neg;
  int64_t n_pos;
};

template <typename acc_t>
FGREID_CPU_CLONES TileExtrema<acc_t> tile_extrema(const acc_t* key, const int64_t* lb, int64_t n,
                                                  int64_t la) {
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t mx = -inf, mn = inf;
  int64_t n_pos = 0;
#pragma omp simd reduction(max : mx) reduction(min : mn) reduction(+ : n_pos)
  for (int64_t j = 0; j < n; ++j) {
    const bool pos = lb[j] == la;
    const acc_t kp = pos ? max_key(key[j]) : -inf;
    const acc_t kn = pos ? inf : min_key(key[j]);
    mx = mx < kp ? kp : mx;
    mn = kn < mn ? kn : mn;
    n_pos += pos ? 1 : 0;
  }
  return {mx, mn, n_pos};
}

// The lowest j in the tile with (label == la) == positive whose key (NaN read as nan_as) equals
// target: a branch-free min-reduction rather than an early-exit scan, so that it vectorizes
// (tiles are at most kRefTile wide: int32 lanes suffice).
template <typename acc_t>
FGREID_CPU_CLONES int64_t first_index(const acc_t* key, const int64_t* lb, int32_t n, int64_t la,
                                      bool positive, acc_t nan_as, acc_t target) {
  int32_t first = n;
#pragma omp simd reduction(min : first)
  for (int32_t j = 0; j < n; ++j) {
    const acc_t k = key[j] != key[j] ? nan_as : key[j];
    const bool hit = ((lb[j] == la) == positive) & (k == target);
    first = hit & (j < first) ? j : first;
  }
  return first;
}

template <typename acc_t>
void mine_kernel(const at::Tensor& a, const int64_t* la, const at::Tensor& b, const int64_t* lb,
                 bool same_ref, TripletDistance distance, int64_t* idx_p, int64_t* idx_n) {
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t B = a.size(0), M = b.size(0), D = a.size(1);
  const acc_t* ad = a.const_data_ptr<acc_t>();
  const acc_t* bd = b.const_data_ptr<acc_t>();
  const bool cosine = distance == TripletDistance::kCosine;
  const acc_t floor = distance == TripletDistance::kEuclidean ? acc_t(1e-12) : acc_t(0);

  std::vector<acc_t> na, nb;
  if (!cosine) {
    na.resize(B);
    at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
      row_squared_norms(ad + begin * D, end - begin, D, na.data() + begin);
    });
    if (same_ref) {
      nb = na;
    } else {
      nb.resize(M);
      at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
        row_squared_norms(bd + begin * D, end - begin, D, nb.data() + begin);
      });
    }
  }

  // Enough anchor blocks to feed every thread, each as large as possible (up to 256 rows) so
  // that the references are streamed from memory as few times as possible.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t block = std::clamp<int64_t>(((B + threads - 1) / threads + 7) / 8 * 8, 8, kMaxAnchorBlock);
  const int64_t tile = std::min(M, kRefTile);
  const int64_t n_blocks = (B + block - 1) / block;
  const auto options = a.options();

  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dots(block * tile);
    std::vector<acc_t> best_p(block), best_n(block);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t i0 = blk * block, bi = std::min(block, B - i0);
      std::fill(best_p.begin(), best_p.end(), -inf);
      std::fill(best_n.begin(), best_n.end(), inf);
      std::fill(idx_p + i0, idx_p + i0 + bi, int64_t(-1));
      std::fill(idx_n + i0, idx_n + i0 + bi, int64_t(-1));
      const at::Tensor a_blk = at::from_blob(const_cast<acc_t*>(ad + i0 * D), {bi, D}, options);
      for (int64_t j0 = 0; j0 < M; j0 += tile) {
        const int64_t bj = std::min(tile, M - j0);
        const at::Tensor b_tile = at::from_blob(const_cast<acc_t*>(bd + j0 * D), {bj, D}, options);
        at::Tensor out = at::from_blob(dots.data(), {bi, bj}, options);
        at::mm_out(out, a_blk, b_tile.t());
        for (int64_t r = 0; r < bi; ++r) {
          const int64_t i = i0 + r;
          acc_t* key = dots.data() + r * bj;
          dots_to_keys(key, bj, cosine ? acc_t(0) : na[i], cosine ? nullptr : nb.data() + j0, floor,
                       cosine);
          const auto ex = tile_extrema(key, lb + j0, bj, la[i]);
          // Strict comparisons keep the earlier (lower-index) reference on ties across tiles.
          if (ex.n_pos > 0 && (idx_p[i] < 0 || ex.max_pos > best_p[r])) {
            best_p[r] = ex.max_pos;
            idx_p[i] = j0 + first_index(key, lb + j0, static_cast<int32_t>(bj), la[i], true, inf, ex.max_pos);
          }
          if (ex.n_pos < bj && (idx_n[i] < 0 || ex.min_neg < best_n[r])) {
            best_n[r] = ex.min_neg;
            idx_n[i] = j0 + first_index(key, lb + j0, static_cast<int32_t>(bj), la[i], false, -inf, ex.min_neg);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> batch_hard_triplet_mine_cpu(const at::Tensor& emb,
                                                               const at::Tensor& labels,
                                                               const at::Tensor& ref_emb,
                                                               const at::Tensor& ref_labels,
                                                               c10::string_view distance_name) {
  const TripletDistance distance =
      check_batch_hard_triplet_inputs(emb, labels, ref_emb, ref_labels, distance_name);
  const int64_t B = emb.size(0);
  at::Tensor idx_p = at::empty({B}, labels.options());
  at::Tensor idx_n = at::empty({B}, labels.options());
  // The batch as its own reference set (the common case) is converted and normed once. The
  // caller may pass two different tensor objects (e.g. detached views) of the same data.
  const bool same_ref = emb.data_ptr() == ref_emb.data_ptr() && emb.sizes() == ref_emb.sizes() &&
                        emb.strides() == ref_emb.strides();
  const auto acc_type = emb.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor a = emb.to(acc_type).contiguous();
  const at::Tensor b = same_ref ? a : ref_emb.to(acc_type).contiguous();
  const at::Tensor la = labels.contiguous();
  const at::Tensor lb = ref_labels.contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "batch_hard_triplet_mine_cpu", [&] {
    mine_kernel<scalar_t>(a, la.const_data_ptr<int64_t>(), b, lb.const_data_ptr<int64_t>(),
                          same_ref, distance, idx_p.mutable_data_ptr<int64_t>(),
                          idx_n.mutable_data_ptr<int64_t>());
  });
  return {idx_p, idx_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) {
  m.impl("batch_hard_triplet_mine", &batch_hard_triplet_mine_cpu);
}

}  // namespace fgreid_ops
