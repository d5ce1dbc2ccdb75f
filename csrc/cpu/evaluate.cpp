// Rank evaluation on CPU (docs/ops.md#evaluate): CMC / AP / INP per query without sorting any row.
//
// Gallery item j is *kept* for query i unless it has the query's pid and camera, or the junk pid.
// The kept items with the query's pid are the query's matches. Ranking is by ascending distance,
// ties to the lower gallery index, NaN last. The rank of a match m among the kept items is
//     rank(m) = 1 + #{matches before m} + #{kept items of another pid before m},
// so per query we only need, for each of its (few) matches, the count of other-pid kept items
// before it: one compare-and-count pass over the row per match, or a binary search of each
// item among the sorted matches when a query has many. Rows can come in gallery chunks
// (evaluate_count accumulates), so a streamed evaluation never holds the Q x G matrix.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "fgreid_ops/evaluate_checks.h"
#include "fgreid_ops/fast_math.h"

namespace fgreid_ops {
namespace {

// Above this many matches per query, one binary search per gallery item beats one pass per match.
constexpr int64_t kDirectMatches = 96;

template <typename acc_t>
FGREID_INLINE bool is_nan(acc_t v) {
  return v != v;
}

// (d, i) < (e, k) in the ranking order: ascending distance, NaN last, ties to the lower index.
template <typename acc_t>
FGREID_INLINE bool ranks_before(acc_t d, int64_t i, acc_t e, int64_t k) {
  if (is_nan(e)) return !is_nan(d) || i < k;
  return d < e || (d == e && i < k);
}

template <typename acc_t>
struct Match {
  acc_t dist;
  int64_t index;
  int64_t slot;  // position in the match lists
};

template <typename acc_t>
void sort_matches(std::vector<Match<acc_t>>& m) {
  std::sort(m.begin(), m.end(), [](const Match<acc_t>& a, const Match<acc_t>& b) {
    return ranks_before(a.dist, a.index, b.dist, b.index);
  });
}

// w[j] = d[j] for kept other-pid items, NaN otherwise (NaN never compares below a distance).
template <typename scalar_t, typename acc_t>
FGREID_CPU_CLONES void masked_row_contiguous(const scalar_t* d, const int64_t* gp, int64_t n,
                                             int64_t qp, int64_t junk, acc_t* w) {
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(d[j]);  // read unconditionally: a plain load, not a masked one
    w[j] = (gp[j] != qp && gp[j] != junk) ? v : nan;
  }
}

template <typename scalar_t, typename acc_t>
void masked_row(const scalar_t* d, int64_t stride, const int64_t* gp, int64_t n, int64_t qp,
                int64_t junk, acc_t* w) {
  if (stride == 1) return masked_row_contiguous(d, gp, n, qp, junk, w);
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (int64_t j = 0; j < n; ++j) {
    w[j] = (gp[j] != qp && gp[j] != junk) ? static_cast<acc_t>(d[j * stride]) : nan;
  }
}

// Counters stay in the lane width of the distances so the compare-and-count loop vectorizes.
template <typename acc_t>
using lane_count_t = std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t>;

// #{j < split : w[j] <= x} + #{j >= split : w[j] < x}, x not NaN. split is the match's own
// column (its w is NaN) or the chunk edge, so ties go to the lower gallery index.
template <typename acc_t>
FGREID_CPU_CLONES int64_t count_before(const acc_t* w, int64_t n, int64_t split, acc_t x) {
  using count_t = lane_count_t<acc_t>;
  count_t le = 0, lt = 0;
#pragma omp simd reduction(+ : le)
  for (int64_t j = 0; j < split; ++j) le += static_cast<count_t>(w[j] <= x);
#pragma omp simd reduction(+ : lt)
  for (int64_t j = split; j < n; ++j) lt += static_cast<count_t>(w[j] < x);
  return static_cast<int64_t>(le) + static_cast<int64_t>(lt);
}

// Four matches per pass over the row: one load feeds four compares. For match k, items before
// its own column count when w <= x_k, i.e. w < next_up(x_k), later ones when w < x_k; the row is
// cut at the four columns so each segment has fixed thresholds.
constexpr int kGroup = 4;

template <typename acc_t>
FGREID_CPU_CLONES void count_segment4(const acc_t* w, int64_t a, int64_t b, const acc_t* t,
                                      int64_t* out) {
  using count_t = lane_count_t<acc_t>;
  count_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  const acc_t t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3];
#pragma omp simd reduction(+ : c0, c1, c2, c3)
  for (int64_t j = a; j < b; ++j) {
    const acc_t v = w[j];
    c0 += static_cast<count_t>(v < t0);
    c1 += static_cast<count_t>(v < t1);
    c2 += static_cast<count_t>(v < t2);
    c3 += static_cast<count_t>(v < t3);
  }
  out[0] += c0;
  out[1] += c1;
  out[2] += c2;
  out[3] += c3;
}

template <typename acc_t>
void count_before4(const acc_t* w, int64_t n, const int64_t* split, const acc_t* x, int64_t* out) {
  acc_t up[kGroup];
  int64_t cuts[kGroup + 2] = {0, n};
  for (int k = 0; k < kGroup; ++k) {
    up[k] = std::nextafter(x[k], std::numeric_limits<acc_t>::infinity());
    cuts[k + 2] = split[k];
  }
  std::sort(cuts, cuts + kGroup + 2);
  for (int s = 0; s + 1 < kGroup + 2; ++s) {
    const int64_t a = cuts[s], b = cuts[s + 1];
    if (a == b) continue;
    acc_t t[kGroup];
    for (int k = 0; k < kGroup; ++k) t[k] = b <= split[k] ? up[k] : x[k];
    count_segment4(w, a, b, t, out);
  }
}

// A NaN-distance match ranks after every kept non-NaN item and after NaN items of lower index.
// w cannot tell a kept NaN from a removed item, so this rare case reads the row again.
template <typename scalar_t>
int64_t count_before_nan_match(const scalar_t* d, int64_t stride, const int64_t* gp, int64_t n,
                               int64_t qp, int64_t junk, int64_t g_start, int64_t index) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (gp[j] == qp || gp[j] == junk) continue;
    const auto v = static_cast<at::opmath_type<scalar_t>>(d[j * stride]);
    count += (!is_nan(v) || g_start + j < index) ? 1 : 0;
  }
  return count;
}

// Sentinel for "no junk pid": a pid equal to it is then an ordinary pid, so the caller passes
// the query's own pid, which every kept other-pid test already excludes.
struct Junk {
  bool enabled;
  int64_t pid;
  int64_t for_query(int64_t qp) const { return enabled ? pid : qp; }
};

template <typename scalar_t>
void count_kernel(const at::Tensor& dist, const int64_t* qp, const int64_t* gp, int64_t g_start,
                  const int64_t* offsets, const int64_t* match_index, const scalar_t* match_dist,
                  Junk junk, int64_t* counts) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Q = dist.size(0), G = dist.size(1);
  const int64_t s0 = dist.stride(0), s1 = dist.stride(1);
  const scalar_t* d = dist.const_data_ptr<scalar_t>();
  at::parallel_for(0, Q, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w(G);
    std::vector<Match<acc_t>> sorted;
    std::vector<int64_t> hist;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = offsets[i], last = offsets[i + 1];
      if (first == last) continue;  // no match: the query is skipped, its row never read
      const scalar_t* row = d + i * s0;
      const int64_t junk_i = junk.for_query(qp[i]);
      masked_row(row, s1, gp, G, qp[i], junk_i, w.data());
      const auto nan_match = [&](int64_t m) {
        counts[m] += count_before_nan_match(row, s1, gp, G, qp[i], junk_i, g_start, match_index[m]);
      };
      if (last - first <= kDirectMatches) {
        int64_t group_slot[kGroup], group_split[kGroup], group_count[kGroup];
        acc_t group_x[kGroup];
        int filled = 0;
        for (int64_t m = first; m < last; ++m) {
          const acc_t x = static_cast<acc_t>(match_dist[m]);
          if (is_nan(x)) {
            nan_match(m);
            continue;
          }
          const int64_t split = std::clamp<int64_t>(match_index[m] - g_start, 0, G);
          // next_up(x) stands for "<= x" only for finite x clear of the subnormals (flush-to-zero
          // mode would read a subnormal threshold as 0); zeros, infinities and tiny x go alone
          if (!(std::fabs(x) >= 2 * std::numeric_limits<acc_t>::min()) || std::isinf(x)) {
            counts[m] += count_before(w.data(), G, split, x);
            continue;
          }
          group_slot[filled] = m;
          group_split[filled] = split;
          group_x[filled] = x;
          if (++filled == kGroup) {
            std::fill(group_count, group_count + kGroup, 0);
            count_before4(w.data(), G, group_split, group_x, group_count);
            for (int k = 0; k < kGroup; ++k) counts[group_slot[k]] += group_count[k];
            filled = 0;
          }
        }
        for (int k = 0; k < filled; ++k) {
          counts[group_slot[k]] += count_before(w.data(), G, group_split[k], group_x[k]);
        }
        continue;
      }
      sorted.clear();
      for (int64_t m = first; m < last; ++m) {
        sorted.push_back({static_cast<acc_t>(match_dist[m]), match_index[m], m});
      }
      sort_matches(sorted);
      int64_t finite = 0;
      while (finite < static_cast<int64_t>(sorted.size()) && !is_nan(sorted[finite].dist)) ++finite;
      // hist[p]: kept items with exactly p matches before them; such an item is before match k
      // (in sorted order) iff p <= k.
      hist.assign(finite + 1, 0);
      for (int64_t j = 0; j < G; ++j) {
        const acc_t v = w[j];
        if (is_nan(v)) continue;
        const int64_t gj = g_start + j;
        const auto it = std::partition_point(sorted.begin(), sorted.begin() + finite,
                                             [&](const Match<acc_t>& e) {
                                               return e.dist < v || (e.dist == v && e.index < gj);
                                             });
        ++hist[it - sorted.begin()];
      }
      int64_t running = 0;
      for (int64_t k = 0; k < finite; ++k) {
        running += hist[k];
        counts[sorted[k].slot] += running;
      }
      for (int64_t k = finite; k < static_cast<int64_t>(sorted.size()); ++k) nan_match(sorted[k].slot);
    }
  });
}

template <typename scalar_t>
void finalize_kernel(const int64_t* offsets, int64_t Q, const int64_t* match_index,
                     const scalar_t* match_dist, const int64_t* counts, int64_t* first_hit,
                     double* ap, double* inp) {
  using acc_t = at::opmath_type<scalar_t>;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  at::parallel_for(0, Q, 64, [&](int64_t begin, int64_t end) {
    std::vector<Match<acc_t>> sorted;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = offsets[i], last = offsets[i + 1];
      if (first == last) {
        first_hit[i] = -1;
        ap[i] = nan;
        inp[i] = nan;
        continue;
      }
      sorted.clear();
      for (int64_t m = first; m < last; ++m) {
        sorted.push_back({static_cast<acc_t>(match_dist[m]), match_index[m], m});
      }
      sort_matches(sorted);
      const int64_t n = last - first;
      double sum_precision = 0;
      int64_t rank = 0;
      for (int64_t k = 0; k < n; ++k) {
        rank = 1 + k + counts[sorted[k].slot];
        sum_precision += static_cast<double>(k + 1) / static_cast<double>(rank);
        if (k == 0) first_hit[i] = rank;
      }
      ap[i] = sum_precision / static_cast<double>(n);
      inp[i] = static_cast<double>(n) / static_cast<double>(rank);
    }
  });
}

Junk junk_of(std::optional<int64_t> junk_pid) {
  return Junk{junk_pid.has_value(), junk_pid.value_or(0)};
}

// Matches of every query in CSR form: gallery items of the query's pid from another camera
// (none for a junk-pid query), in ascending gallery index.
std::tuple<at::Tensor, at::Tensor> matches_impl(const at::Tensor& q_pids_in,
                                                const at::Tensor& g_pids_in,
                                                const at::Tensor& q_camids_in,
                                                const at::Tensor& g_camids_in,
                                                std::optional<int64_t> junk_pid) {
  const at::Tensor q_pids = q_pids_in.contiguous(), g_pids = g_pids_in.contiguous();
  const at::Tensor q_camids = q_camids_in.contiguous(), g_camids = g_camids_in.contiguous();
  const int64_t Q = q_pids.size(0), G = g_pids.size(0);
  const int64_t* qp = q_pids.const_data_ptr<int64_t>();
  const int64_t* gp = g_pids.const_data_ptr<int64_t>();
  const int64_t* qc = q_camids.const_data_ptr<int64_t>();
  const int64_t* gc = g_camids.const_data_ptr<int64_t>();

  std::vector<std::pair<int64_t, int64_t>> by_pid(G);  // (pid, gallery index), sorted
  for (int64_t j = 0; j < G; ++j) by_pid[j] = {gp[j], j};
  std::sort(by_pid.begin(), by_pid.end());
  const auto range_of = [&](int64_t pid) {
    const auto lo = std::lower_bound(by_pid.begin(), by_pid.end(), std::make_pair(pid, int64_t(0)));
    auto hi = lo;
    while (hi != by_pid.end() && hi->first == pid) ++hi;
    return std::make_pair(lo, hi);
  };
  const bool has_junk = junk_pid.has_value();
  const int64_t junk = junk_pid.value_or(0);

  at::Tensor offsets = at::empty({Q + 1}, q_pids.options());
  int64_t* off = offsets.mutable_data_ptr<int64_t>();
  off[0] = 0;
  at::parallel_for(0, Q, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t n = 0;
      if (!(has_junk && qp[i] == junk)) {
        const auto [lo, hi] = range_of(qp[i]);
        for (auto it = lo; it != hi; ++it) n += gc[it->second] != qc[i] ? 1 : 0;
      }
      off[i + 1] = n;
    }
  });
  for (int64_t i = 0; i < Q; ++i) off[i + 1] += off[i];
  at::Tensor index = at::empty({off[Q]}, q_pids.options());
  int64_t* idx = index.mutable_data_ptr<int64_t>();
  at::parallel_for(0, Q, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (off[i] == off[i + 1]) continue;
      int64_t k = off[i];
      const auto [lo, hi] = range_of(qp[i]);
      for (auto it = lo; it != hi; ++it) {
        if (gc[it->second] != qc[i]) idx[k++] = it->second;
      }
    }
  });
  return {offsets, index};
}

std::tuple<at::Tensor, at::Tensor> evaluate_matches_cpu(const at::Tensor& q_pids,
                                                        const at::Tensor& g_pids,
                                                        const at::Tensor& q_camids,
                                                        const at::Tensor& g_camids,
                                                        std::optional<int64_t> junk_pid) {
  check_matches_inputs(q_pids, g_pids, q_camids, g_camids);
  return matches_impl(q_pids, g_pids, q_camids, g_camids, junk_pid);
}

void count_impl(const at::Tensor& dist, const at::Tensor& q_pids_in, const at::Tensor& g_pids_in,
                int64_t g_start, const at::Tensor& offsets_in, const at::Tensor& index_in,
                const at::Tensor& match_dist_in, std::optional<int64_t> junk_pid,
                const at::Tensor& counts) {
  const at::Tensor q_pids = q_pids_in.contiguous(), g_pids = g_pids_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), index = index_in.contiguous();
  const at::Tensor match_dist = match_dist_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dist.scalar_type(), "evaluate_count_cpu", [&] {
    count_kernel<scalar_t>(dist, q_pids.const_data_ptr<int64_t>(), g_pids.const_data_ptr<int64_t>(),
                           g_start, offsets.const_data_ptr<int64_t>(), index.const_data_ptr<int64_t>(),
                           match_dist.const_data_ptr<scalar_t>(), junk_of(junk_pid),
                           counts.mutable_data_ptr<int64_t>());
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finalize_impl(const at::Tensor& offsets_in,
                                                             const at::Tensor& index_in,
                                                             const at::Tensor& match_dist_in,
                                                             const at::Tensor& counts_in) {
  const at::Tensor offsets = offsets_in.contiguous(), index = index_in.contiguous();
  const at::Tensor match_dist = match_dist_in.contiguous(), counts = counts_in.contiguous();
  const int64_t Q = offsets.size(0) - 1;
  at::Tensor first_hit = at::empty({Q}, offsets.options());
  at::Tensor ap = at::empty({Q}, offsets.options().dtype(at::kDouble));
  at::Tensor inp = at::empty({Q}, offsets.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, match_dist.scalar_type(), "evaluate_finalize_cpu", [&] {
    finalize_kernel<scalar_t>(offsets.const_data_ptr<int64_t>(), Q, index.const_data_ptr<int64_t>(),
                              match_dist.const_data_ptr<scalar_t>(), counts.const_data_ptr<int64_t>(),
                              first_hit.mutable_data_ptr<int64_t>(), ap.mutable_data_ptr<double>(),
                              inp.mutable_data_ptr<double>());
  });
  return {first_hit, ap, inp};
}

void evaluate_count_cpu(const at::Tensor& dist, const at::Tensor& q_pids, const at::Tensor& g_pids,
                        int64_t g_start, const at::Tensor& offsets, const at::Tensor& index,
                        const at::Tensor& match_dist, std::optional<int64_t> junk_pid,
                        const at::Tensor& counts) {
  const char* op = "evaluate_count";
  check_defined(op, {{"dist", &dist}, {"q_pids", &q_pids}, {"g_pids", &g_pids}, {"match_offsets", &offsets},
                     {"match_index", &index}, {"match_dist", &match_dist}, {"counts", &counts}});
  check_distance_block(op, "dist", dist);
  check_id_vector(op, "q_pids", q_pids, dist.size(0), "Q");
  check_id_vector(op, "g_pids", g_pids, dist.size(1), "G");
  // gallery indices g_start + j, j < G, are compared as int64
  TORCH_CHECK_VALUE(g_start >= 0 && g_start <= std::numeric_limits<int64_t>::max() - dist.size(1),
                    "fgreid_ops.evaluate_count: expected g_start in [0, 2^63 - 1 - G], got ", g_start);
  check_same_devices(op, {{"dist", &dist}, {"q_pids", &q_pids}, {"g_pids", &g_pids}, {"match_offsets", &offsets}});
  check_match_lists(op, offsets, index, match_dist, counts, dist.size(0), /*counts_written=*/true);
  check_same_dtype(op, "match_dist", match_dist, "dist", dist);
  const std::pair<const char*, const at::Tensor*> read[] = {{"dist", &dist},          {"q_pids", &q_pids},
                                                            {"g_pids", &g_pids},      {"match_offsets", &offsets},
                                                            {"match_index", &index}, {"match_dist", &match_dist}};
  for (const auto& [arg, t] : read) check_no_overlap(op, "counts", counts, arg, *t);
  count_impl(dist, q_pids, g_pids, g_start, offsets, index, match_dist, junk_pid, counts);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> evaluate_finalize_cpu(const at::Tensor& offsets,
                                                                     const at::Tensor& index,
                                                                     const at::Tensor& match_dist,
                                                                     const at::Tensor& counts) {
  check_defined("evaluate_finalize", {{"match_offsets", &offsets}, {"match_index", &index}, {"match_dist", &match_dist},
                                      {"counts", &counts}});
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) >= 2,
                    "fgreid_ops.evaluate_finalize: expected match_offsets of shape [num_query + 1] "
                    "with num_query >= 1, got ", offsets.sizes());
  check_match_lists("evaluate_finalize", offsets, index, match_dist, counts, offsets.size(0) - 1,
                    /*counts_written=*/false);
  check_nonnegative("evaluate_finalize", "counts", counts);
  check_nonnegative("evaluate_finalize", "match_index", index);
  return finalize_impl(offsets, index, match_dist, counts);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> evaluate_cpu(const at::Tensor& distmat,
                                                            const at::Tensor& q_pids,
                                                            const at::Tensor& g_pids,
                                                            const at::Tensor& q_camids,
                                                            const at::Tensor& g_camids,
                                                            std::optional<int64_t> junk_pid) {
  check_evaluate_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  auto [offsets, index] = matches_impl(q_pids, g_pids, q_camids, g_camids, junk_pid);
  const int64_t Q = distmat.size(0), nnz = index.size(0);
  at::Tensor match_dist = at::empty({nnz}, distmat.options());
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int64_t* idx = index.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, distmat.scalar_type(), "evaluate_gather_cpu", [&] {
    const scalar_t* d = distmat.const_data_ptr<scalar_t>();
    scalar_t* md = match_dist.mutable_data_ptr<scalar_t>();
    const int64_t s0 = distmat.stride(0), s1 = distmat.stride(1);
    at::parallel_for(0, Q, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t m = off[i]; m < off[i + 1]; ++m) md[m] = d[i * s0 + idx[m] * s1];
      }
    });
  });
  at::Tensor counts = at::zeros({nnz}, offsets.options());
  count_impl(distmat, q_pids, g_pids, 0, offsets, index, match_dist, junk_pid, counts);
  return finalize_impl(offsets, index, match_dist, counts);
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) {
  m.impl("evaluate", &evaluate_cpu);
  m.impl("evaluate_matches", &evaluate_matches_cpu);
  m.impl("evaluate_count", &evaluate_count_cpu);
  m.impl("evaluate_finalize", &evaluate_finalize_cpu);
}

}  // namespace fgreid_ops
