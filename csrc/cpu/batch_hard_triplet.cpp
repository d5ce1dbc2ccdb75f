// Batch-hard triplet mining on CPU (docs/ops.md#batch_hard_triplet). For every anchor a_i and reference b_j the key is
//   euclidean:   max(|a|^2 + |b|^2 - 2 a.b, 1e-12)   (monotone in the distance: no sqrt needed)
//   sqeuclidean: max(|a|^2 + |b|^2 - 2 a.b, 0)
//   cosine:      1 - a.b                            (rows L2-normalized by the caller)
// and we keep, per anchor, the largest key among references with its label and the smallest
// among the others, with the lowest index on ties. The keys are made tile by tile: one BLAS
// gemm per tile of dot products (small enough to stay in L2), then vectorized passes fold the
// tile into running maxima/minima. Anchor blocks run in parallel and stream the references
// (mine_general); when the batch is its own reference set only the upper triangle of tiles is
// computed (mine_symmetric); that needs the same rows *and* the same labels on both sides. Memory
// is O(tile) per thread plus O(B), never B x M.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fgreid_ops/batch_hard_triplet_checks.h"
#include "fgreid_ops/blocked_sum.h"
#include "fgreid_ops/fast_math.h"
#include "fgreid_ops/registration.h"

namespace fgreid_ops {
namespace {

// Tiles of up to kBlock x kBlock keys (256 KiB in float32) stay in a core's L2 cache.
constexpr int64_t kBlock = 256;
// Beyond this batch the symmetric path's tiles (B / 64 rows) would outgrow the cache.
constexpr int64_t kMaxSymmetricBatch = 64 * 1024;
constexpr int64_t kMinSymmetricBlock = 64;

// sum_k x[k] y[k] over D: vector sums of kSumBlock terms, the blocks combined pairwise (one
// block for any common embedding width).
template <typename acc_t>
FGREID_CPU_CLONES acc_t dot(const acc_t* x, const acc_t* y, int64_t D) {
  CascadeSum<acc_t> total;
  for (int64_t k0 = 0; k0 < D; k0 += kSumBlock) {
    const int64_t n = std::min(kSumBlock, D - k0);
    acc_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n; ++k) s += x[k0 + k] * y[k0 + k];
    total.add(s);
  }
  return total.total();
}

template <typename acc_t>
void row_squared_norms(const acc_t* x, int64_t rows, int64_t D, acc_t* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = dot(x + r * D, x + r * D, D);
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
// (a tile row has fewer than 2^31 entries: int32 lanes suffice).
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

// Per anchor, the best key and index found so far on each side (index -1: no candidate yet).
template <typename acc_t>
struct Best {
  acc_t key_p = -std::numeric_limits<acc_t>::infinity();
  acc_t key_n = std::numeric_limits<acc_t>::infinity();
  int64_t idx_p = -1;
  int64_t idx_n = -1;

  // Folds in a candidate found later in reference order: strict comparisons keep the earlier
  // (lower-index) reference on ties.
  void merge(acc_t kp, int64_t ip, acc_t kn, int64_t in) {
    if (ip >= 0 && (idx_p < 0 || kp > key_p)) key_p = kp, idx_p = ip;
    if (in >= 0 && (idx_n < 0 || kn < key_n)) key_n = kn, idx_n = in;
  }
};

// Folds one row of keys (references j0 .. j0 + n of one anchor with label la) into best.
template <typename acc_t>
void fold_row(const acc_t* key, const int64_t* lb, int64_t n, int64_t la, int64_t j0,
              Best<acc_t>& best) {
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  const auto ex = tile_extrema(key, lb, n, la);
  const auto m = static_cast<int32_t>(n);
  const bool better_p = ex.n_pos > 0 && (best.idx_p < 0 || ex.max_pos > best.key_p);
  const bool better_n = ex.n_pos < n && (best.idx_n < 0 || ex.min_neg < best.key_n);
  // the index search runs only when the tile improves on the running best
  best.merge(ex.max_pos, better_p ? j0 + first_index(key, lb, m, la, true, inf, ex.max_pos) : -1,
             ex.min_neg, better_n ? j0 + first_index(key, lb, m, la, false, -inf, ex.min_neg) : -1);
}

// The transposed fold for the symmetric case: row r of a tile (anchor label lr) seen as one
// reference for each of the n column anchors; called for r = 0, 1, ... in order so that strict
// comparisons keep the lowest r on ties.
template <typename acc_t>
FGREID_CPU_CLONES void fold_columns(const acc_t* key, const int64_t* lcol, int32_t n, int64_t lr,
                                    int32_t r, acc_t* kp_best, int32_t* ip, acc_t* kn_best,
                                    int32_t* in) {
#pragma omp simd
  for (int32_t c = 0; c < n; ++c) {
    const bool pos = lcol[c] == lr, neg = !pos;
    const acc_t kp = max_key(key[c]), kn = min_key(key[c]);
    const bool take_p = pos & ((kp > kp_best[c]) | (ip[c] < 0));
    const bool take_n = neg & ((kn < kn_best[c]) | (in[c] < 0));
    kp_best[c] = take_p ? kp : kp_best[c];
    ip[c] = take_p ? r : ip[c];
    kn_best[c] = take_n ? kn : kn_best[c];
    in[c] = take_n ? r : in[c];
  }
}

template <typename acc_t>
struct MineProblem {
  const acc_t* a;
  const int64_t* la;
  const acc_t* b;
  const int64_t* lb;
  int64_t B, M, D;
  bool cosine;
  acc_t floor;
  std::vector<acc_t> na, nb;
  at::TensorOptions options;

  // keys[r][c] for anchors i0 .. i0 + bi and references j0 .. j0 + bj, into out (bi x bj).
  void key_tile(int64_t i0, int64_t bi, int64_t j0, int64_t bj, acc_t* out) const {
    const at::Tensor a_blk = at::from_blob(const_cast<acc_t*>(a + i0 * D), {bi, D}, options);
    const at::Tensor b_blk = at::from_blob(const_cast<acc_t*>(b + j0 * D), {bj, D}, options);
    at::Tensor dots = at::from_blob(out, {bi, bj}, options);
    at::mm_out(dots, a_blk, b_blk.t());
    for (int64_t r = 0; r < bi; ++r) {
      dots_to_keys(out + r * bj, bj, cosine ? acc_t(0) : na[i0 + r], cosine ? nullptr : nb.data() + j0,
                   floor, cosine);
    }
  }
};

// References in tiles, anchor blocks over threads; each anchor block keeps its running best.
template <typename acc_t>
void mine_general(const MineProblem<acc_t>& pb, int64_t* idx_p, int64_t* idx_n) {
  // Enough anchor blocks to feed every thread, each as large as possible so that the
  // references are streamed from memory as few times as possible.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t block = std::clamp<int64_t>(((pb.B + threads - 1) / threads + 7) / 8 * 8, 8, kBlock);
  const int64_t tile = std::min(pb.M, kBlock);
  at::parallel_for(0, (pb.B + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> keys(block * tile);
    std::vector<Best<acc_t>> best(block);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t i0 = blk * block, bi = std::min(block, pb.B - i0);
      std::fill(best.begin(), best.end(), Best<acc_t>{});
      for (int64_t j0 = 0; j0 < pb.M; j0 += tile) {
        const int64_t bj = std::min(tile, pb.M - j0);
        pb.key_tile(i0, bi, j0, bj, keys.data());
        for (int64_t r = 0; r < bi; ++r) {
          fold_row(keys.data() + r * bj, pb.lb + j0, bj, pb.la[i0 + r], j0, best[r]);
        }
      }
      for (int64_t r = 0; r < bi; ++r) idx_p[i0 + r] = best[r].idx_p, idx_n[i0 + r] = best[r].idx_n;
    }
  });
}

// The batch as its own reference set: the key matrix is symmetric, so only the tiles (I, J)
// with J >= I are multiplied (half the flops). A tile folds its rows into the anchors of block I
// and, transposed, its columns into the anchors of block J. Each (source block, anchor) pair
// gets its own slot in `partial`, and a last pass merges the slots in block order, which
// keeps ties on the lowest index without any ordering between threads.
template <typename acc_t>
void mine_symmetric(const MineProblem<acc_t>& pb, int64_t* idx_p, int64_t* idx_n) {
  const int64_t B = pb.B;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // ~2 tiles per thread, but blocks of at least 64 rows (below that the per-gemm overhead
  // dominates) and at most 64 blocks, so that `partial` stays O(B)
  const int64_t per_thread = ((B + 2 * threads - 1) / (2 * threads) + 7) / 8 * 8;
  const int64_t block = std::min(std::max({per_thread, kMinSymmetricBlock, (B + 63) / 64}),
                                 std::max(kBlock, (B + 63) / 64));
  const int64_t n_blocks = (B + block - 1) / block;
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t I = 0; I < n_blocks; ++I) {
    for (int64_t J = I; J < n_blocks; ++J) tiles.emplace_back(I, J);
  }
  std::vector<Best<acc_t>> partial(n_blocks * B);  // [source block][anchor]

  if (n_blocks == 1) {
    // One tile (B <= 64): its product runs outside a parallel region, so that the GEMM itself
    // uses the threads, then the rows are folded in parallel. Same keys, same folds.
    std::vector<acc_t> keys(B * B);
    pb.key_tile(0, B, 0, B, keys.data());
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) fold_row(keys.data() + r * B, pb.lb, B, pb.la[r], 0, partial[r]);
    });
    for (int64_t i = 0; i < B; ++i) idx_p[i] = partial[i].idx_p, idx_n[i] = partial[i].idx_n;
    return;
  }
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> keys(block * block), col_kp(block), col_kn(block);
    std::vector<int32_t> col_ip(block), col_in(block);
    for (int64_t t = begin; t < end; ++t) {
      const auto [I, J] = tiles[t];
      const int64_t i0 = I * block, bi = std::min(block, B - i0);
      const int64_t j0 = J * block, bj = std::min(block, B - j0);
      pb.key_tile(i0, bi, j0, bj, keys.data());
      for (int64_t r = 0; r < bi; ++r) {
        fold_row(keys.data() + r * bj, pb.lb + j0, bj, pb.la[i0 + r], j0, partial[J * B + i0 + r]);
      }
      if (I == J) continue;
      std::fill(col_kp.begin(), col_kp.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(col_kn.begin(), col_kn.end(), std::numeric_limits<acc_t>::infinity());
      std::fill(col_ip.begin(), col_ip.end(), -1);
      std::fill(col_in.begin(), col_in.end(), -1);
      for (int64_t r = 0; r < bi; ++r) {
        fold_columns(keys.data() + r * bj, pb.la + j0, static_cast<int32_t>(bj), pb.la[i0 + r],
                     static_cast<int32_t>(r), col_kp.data(), col_ip.data(), col_kn.data(), col_in.data());
      }
      for (int64_t c = 0; c < bj; ++c) {
        partial[I * B + j0 + c].merge(col_kp[c], col_ip[c] < 0 ? -1 : i0 + col_ip[c], col_kn[c],
                                      col_in[c] < 0 ? -1 : i0 + col_in[c]);
      }
    }
  });
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Best<acc_t> best;
      for (int64_t L = 0; L < n_blocks; ++L) {
        const auto& p = partial[L * B + i];
        best.merge(p.key_p, p.idx_p, p.key_n, p.idx_n);
      }
      idx_p[i] = best.idx_p, idx_n[i] = best.idx_n;
    }
  });
}

template <typename acc_t>
void mine_kernel(const at::Tensor& a, const int64_t* la, const at::Tensor& b, const int64_t* lb,
                 bool same_ref, TripletDistance distance, int64_t* idx_p, int64_t* idx_n) {
  MineProblem<acc_t> pb;
  pb.a = a.const_data_ptr<acc_t>();
  pb.b = b.const_data_ptr<acc_t>();
  pb.la = la, pb.lb = lb;
  pb.B = a.size(0), pb.M = b.size(0), pb.D = a.size(1);
  pb.cosine = distance == TripletDistance::kCosine;
  pb.floor = distance == TripletDistance::kEuclidean ? acc_t(1e-12) : acc_t(0);
  pb.options = a.options();
  if (!pb.cosine) {
    const auto norms = [&](const acc_t* x, int64_t rows, std::vector<acc_t>& out) {
      out.resize(rows);
      at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
        row_squared_norms(x + begin * pb.D, end - begin, pb.D, out.data() + begin);
      });
    };
    norms(pb.a, pb.B, pb.na);
    if (same_ref) {
      pb.nb = pb.na;
    } else {
      norms(pb.b, pb.M, pb.nb);
    }
  }
  if (same_ref && pb.B <= kMaxSymmetricBatch) {
    mine_symmetric(pb, idx_p, idx_n);
  } else {
    mine_general(pb, idx_p, idx_n);
  }
}

// d(a_i, b_j) of the selected pairs. Written as
// |a - b|^2 rather than |a|^2 + |b|^2 - 2 a.b: no cancellation, and exactly 0 for a row paired
// with itself (the anchor as its own hardest positive).
template <typename acc_t>
FGREID_CPU_CLONES acc_t squared_difference(const acc_t* x, const acc_t* y, int64_t D) {
  CascadeSum<acc_t> total;
  for (int64_t k0 = 0; k0 < D; k0 += kSumBlock) {
    const int64_t n = std::min(kSumBlock, D - k0);
    acc_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n; ++k) s += (x[k0 + k] - y[k0 + k]) * (x[k0 + k] - y[k0 + k]);
    total.add(s);
  }
  return total.total();
}

// |x|^2, |y|^2, x.y and |x - y|^2 in one pass over D (each summed as `dot` and
// `squared_difference` sum it): four independent accumulators instead of four dependent loops.
template <typename acc_t>
struct PairSums {
  acc_t xx, yy, xy, diff;
};

template <typename acc_t>
FGREID_CPU_CLONES PairSums<acc_t> pair_sums(const acc_t* x, const acc_t* y, int64_t D) {
  CascadeSum<acc_t> xx, yy, xy, diff;
  for (int64_t k0 = 0; k0 < D; k0 += kSumBlock) {
    const int64_t n = std::min(kSumBlock, D - k0);
    acc_t sxx = 0, syy = 0, sxy = 0, sdiff = 0;
#pragma omp simd reduction(+ : sxx, syy, sxy, sdiff)
    for (int64_t k = 0; k < n; ++k) {
      const acc_t a = x[k0 + k], b = y[k0 + k];
      sxx += a * a;
      syy += b * b;
      sxy += a * b;
      sdiff += (a - b) * (a - b);
    }
    xx.add(sxx), yy.add(syy), xy.add(sxy), diff.add(sdiff);
  }
  return {xx.total(), yy.total(), xy.total(), diff.total()};
}

// A pair whose search key |a|^2 + |b|^2 - 2 a.b is NaN (an inf or NaN entry, or an overflow) was
// selected as NaN, and its distance is NaN as in the dense formula, whatever |a - b|^2 gives.
template <typename acc_t>
acc_t pair_distance(const acc_t* x, const acc_t* y, int64_t D, TripletDistance distance) {
  if (distance == TripletDistance::kCosine) return acc_t(1) - dot(x, y, D);
  const PairSums<acc_t> sums = pair_sums(x, y, D);
  const acc_t s = sums.diff;
  const acc_t key = sums.xx + sums.yy - acc_t(2) * sums.xy;
  if (key != key) return key;
  if (distance == TripletDistance::kSqEuclidean) return s;
  return std::sqrt(s < acc_t(1e-12) ? acc_t(1e-12) : s);  // NaN stays NaN
}

// `missing` (-inf for d_ap, +inf for d_an) where an anchor has no such reference: then
// d_ap - d_an = -inf, and relu / softplus give exactly 0 with gradient 0, without a mask.
template <typename acc_t>
void pair_distances(const acc_t* a, const acc_t* b, const int64_t* idx, int64_t B, int64_t D,
                    TripletDistance distance, acc_t missing, acc_t* out) {
  at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = idx[i] < 0 ? missing : pair_distance(a + i * D, b + idx[i] * D, D, distance);
    }
  });
}

// Shared by forward and backward: both work on contiguous rows in the accumulation type.
struct AccRows {
  at::Tensor a, b;
  bool same;  // b is a (the same data): converted once
};

bool same_data(const at::Tensor& x, const at::Tensor& y) {
  return x.data_ptr() == y.data_ptr() && x.sizes() == y.sizes() && x.strides() == y.strides();
}

AccRows acc_rows(const at::Tensor& emb, const at::Tensor& ref_emb) {
  // The caller may pass two different tensor objects (e.g. detached views) of the same data.
  const bool same = same_data(emb, ref_emb);
  const at::Tensor a = emb.to(acc_dtype(emb)).contiguous();
  return {a, same ? a : ref_emb.to(acc_dtype(emb)).contiguous(), same};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_hard_triplet_mine_cpu(
    const at::Tensor& emb, const at::Tensor& labels, const at::Tensor& ref_emb,
    const at::Tensor& ref_labels, c10::string_view distance_name) {
  const TripletDistance distance =
      check_batch_hard_triplet_inputs(emb, labels, ref_emb, ref_labels, distance_name);
  const int64_t B = emb.size(0), D = emb.size(1);
  const AccRows rows = acc_rows(emb, ref_emb);
  at::Tensor idx_p = at::empty({B}, labels.options());
  at::Tensor idx_n = at::empty({B}, labels.options());
  at::Tensor d_ap = at::empty({B}, rows.a.options());
  at::Tensor d_an = at::empty({B}, rows.a.options());
  const at::Tensor la = labels.contiguous();
  const at::Tensor lb = ref_labels.contiguous();
  // The batch is its own reference set (symmetric keys, one label per row on both sides) only
  // when the labels agree too: ref_emb = emb with other ref_labels is an ordinary reference set.
  const bool self_reference = rows.same && (same_data(labels, ref_labels) || at::equal(la, lb));
  AT_DISPATCH_FLOATING_TYPES(rows.a.scalar_type(), "batch_hard_triplet_mine_cpu", [&] {
    mine_kernel<scalar_t>(rows.a, la.const_data_ptr<int64_t>(), rows.b, lb.const_data_ptr<int64_t>(),
                          self_reference, distance, idx_p.mutable_data_ptr<int64_t>(),
                          idx_n.mutable_data_ptr<int64_t>());
    const scalar_t* a = rows.a.const_data_ptr<scalar_t>();
    const scalar_t* b = rows.b.const_data_ptr<scalar_t>();
    constexpr scalar_t inf = std::numeric_limits<scalar_t>::infinity();
    pair_distances(a, b, idx_p.const_data_ptr<int64_t>(), B, D, distance, -inf, d_ap.mutable_data_ptr<scalar_t>());
    pair_distances(a, b, idx_n.const_data_ptr<int64_t>(), B, D, distance, inf, d_an.mutable_data_ptr<scalar_t>());
  });
  return {d_ap, d_an, idx_p, idx_n};
}

// dd/da for one selected pair is coef * (a - b) for the squared forms and coef * b for cosine;
// dd/db is the negative for the former and coef * a for the latter. coef folds in the
// incoming gradient g: euclidean g / d where |a - b|^2 >= 1e-12 (0 in the clamp, as
// torch.clamp's gradient), sqeuclidean 2 g, cosine -g; 0 for a missing pair.
template <typename acc_t>
acc_t pair_coef(const acc_t* x, const acc_t* y, int64_t D, TripletDistance distance, acc_t g,
                acc_t d) {
  if (distance == TripletDistance::kCosine) return -g;
  if (distance == TripletDistance::kSqEuclidean) return acc_t(2) * g;
  return squared_difference(x, y, D) >= acc_t(1e-12) ? g / d : acc_t(0);
}

// bp / bn are null for a missing pair, which then contributes nothing (not 0 * a, which is NaN
// for an inf entry) and whose gradient row gbp / gbn is null too.
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void grad_chunk(const acc_t* a, const acc_t* bp, const acc_t* bn, acc_t cp,
                                  acc_t cn, bool cosine, int64_t n, scalar_t* ga, acc_t* gbp,
                                  acc_t* gbn) {
  if (cosine) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      ga[k] = static_cast<scalar_t>((bp ? cp * bp[k] : acc_t(0)) + (bn ? cn * bn[k] : acc_t(0)));
    }
    if (gbp != nullptr) for (int64_t k = 0; k < n; ++k) gbp[k] += cp * a[k];
    if (gbn != nullptr) for (int64_t k = 0; k < n; ++k) gbn[k] += cn * a[k];
    return;
  }
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    ga[k] = static_cast<scalar_t>((bp ? cp * (a[k] - bp[k]) : acc_t(0)) + (bn ? cn * (a[k] - bn[k]) : acc_t(0)));
  }
  // separate loops: bp and bn may be the same row
  if (gbp != nullptr) for (int64_t k = 0; k < n; ++k) gbp[k] -= cp * (a[k] - bp[k]);
  if (gbn != nullptr) for (int64_t k = 0; k < n; ++k) gbn[k] -= cn * (a[k] - bn[k]);
}

std::tuple<at::Tensor, at::Tensor> batch_hard_triplet_mine_backward_cpu(
    const at::Tensor& grad_d_ap, const at::Tensor& grad_d_an, const at::Tensor& emb,
    const at::Tensor& ref_emb, const at::Tensor& idx_p_in, const at::Tensor& idx_n_in,
    const at::Tensor& d_ap_in, const at::Tensor& d_an_in, c10::string_view distance_name,
    bool need_ref_grad) {
  const TripletDistance distance = parse_triplet_distance(distance_name);
  check_batch_hard_triplet_backward_inputs(grad_d_ap, grad_d_an, emb, ref_emb, idx_p_in, idx_n_in, d_ap_in, d_an_in);
  const int64_t B = emb.size(0), D = emb.size(1), M = ref_emb.size(0);
  const at::Tensor idx_p = idx_p_in.contiguous(), idx_n = idx_n_in.contiguous();
  const int64_t* ip = idx_p.const_data_ptr<int64_t>();
  const int64_t* in = idx_n.const_data_ptr<int64_t>();

  const AccRows rows = acc_rows(emb, ref_emb);
  const auto acc_type = rows.a.scalar_type();
  // Read through their strides: the gradient of a .sum() or .mean() of d_ap arrives expanded (stride 0).
  const at::Tensor gp = grad_d_ap.to(acc_type), gn = grad_d_an.to(acc_type);
  const int64_t gps = gp.stride(0), gns = gn.stride(0);
  const at::Tensor d_ap = d_ap_in.to(acc_type).contiguous(), d_an = d_an_in.to(acc_type).contiguous();
  at::Tensor grad_emb = at::empty({B, D}, emb.options());
  at::Tensor grad_ref_acc = need_ref_grad ? at::zeros({M, D}, rows.a.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "batch_hard_triplet_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* a = rows.a.const_data_ptr<acc_t>();
    const acc_t* b = rows.b.const_data_ptr<acc_t>();
    std::vector<acc_t> cp(B), cn(B);
    const acc_t* gpd = gp.const_data_ptr<acc_t>();
    const acc_t* gnd = gn.const_data_ptr<acc_t>();
    const acc_t* dpd = d_ap.const_data_ptr<acc_t>();
    const acc_t* dnd = d_an.const_data_ptr<acc_t>();
    at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        cp[i] = ip[i] < 0 ? acc_t(0) : pair_coef(a + i * D, b + ip[i] * D, D, distance, gpd[i * gps], dpd[i]);
        cn[i] = in[i] < 0 ? acc_t(0) : pair_coef(a + i * D, b + in[i] * D, D, distance, gnd[i * gns], dnd[i]);
      }
    });
    // Column chunks over threads: every thread owns columns of grad_ref, so the scatter to the
    // selected reference rows needs no atomics and sums in anchor order (deterministic).
    constexpr int64_t kChunk = 64;
    scalar_t* ga = grad_emb.mutable_data_ptr<scalar_t>();
    acc_t* gr = need_ref_grad ? grad_ref_acc.mutable_data_ptr<acc_t>() : nullptr;
    const bool cosine = distance == TripletDistance::kCosine;
    at::parallel_for(0, (D + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = 0; i < B; ++i) {
        for (int64_t c = begin; c < end; ++c) {
          const int64_t k0 = c * kChunk, len = std::min(kChunk, D - k0);
          const acc_t* bp = ip[i] < 0 ? nullptr : b + ip[i] * D + k0;
          const acc_t* bn = in[i] < 0 ? nullptr : b + in[i] * D + k0;
          acc_t* gbp = (gr == nullptr || ip[i] < 0) ? nullptr : gr + ip[i] * D + k0;
          acc_t* gbn = (gr == nullptr || in[i] < 0) ? nullptr : gr + in[i] * D + k0;
          grad_chunk(a + i * D + k0, bp, bn, cp[i], cn[i], cosine, len, ga + i * D + k0, gbp, gbn);
        }
      }
    });
  });
  at::Tensor grad_ref = need_ref_grad ? grad_ref_acc.to(ref_emb.scalar_type())
                                      : at::empty({0}, ref_emb.options());
  return {grad_emb, grad_ref};
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) { register_forward_backward<&batch_hard_triplet_mine_cpu, &batch_hard_triplet_mine_backward_cpu>(m, "batch_hard_triplet_mine"); }

}  // namespace fgreid_ops
