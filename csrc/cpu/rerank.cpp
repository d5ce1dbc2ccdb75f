// k-reciprocal re-ranking on CPU (docs/ops.md#rerank) in O(N * (k1 + k2)) memory plus one distance tile.
//
// Rows are x = cat(q, g) (N = Q + G), d[i, j] = (|x_i|^2 + |x_j|^2) - 2 x_i.x_j, d' = d / max_j d.
// Three stages, each its own op so that a streamed evaluation can call the last one per chunk:
// - rerank_knn: the k nearest of every row by GEMM tiles (the upper triangle of tiles only) and a
//   running top-k, plus each row's max. Rows are ranked by d itself: dividing a row by its
//   positive max keeps the order.
// - rerank_neighbours: the expanded k-reciprocal sets, V as CSR (after query expansion) and its
//   transpose (for each column, the rows where V is non-zero): the inverted index.
// - rerank_blend_: one [rows, cols] tile of the result from its Gram tile, with the Jaccard term
//   summed through the inverted index, in place.
// Every row is computed by one thread in a fixed order, so results do not depend on the
// number of threads; ties rank to the lower index.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "fgreid_ops/checks.h"
#include "fgreid_ops/order_key.h"

namespace fgreid_ops {
namespace {

// A [kTile, kTile] float32 Gram tile is 4 MiB.
constexpr int64_t kTile = 1024;
// Row indices are packed into the low 32 bits of the ranking keys.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();

// (d, j) as one integer: ascending distance (NaN last), ties to the lower index j.
inline uint64_t rank_key(float d, int64_t j) {
  return (static_cast<uint64_t>(order_key(d)) << 32) | static_cast<uint64_t>(j);
}

inline float distance(float sq_i, float sq_j, float gram) { return (sq_i + sq_j) - 2.0f * gram; }

inline float normalized(float d, float row_max) { return row_max > 0.0f ? d / row_max : 0.0f; }

// Eight independent partial sums: the same order whatever the vector width.
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

void check_feats(const char* op, const at::Tensor& feats, const at::Tensor& sqnorms) {
  check_defined(op, {{"feats", &feats}, {"sqnorms", &sqnorms}});
  check_dim(op, "feats", feats, 2, "(N, D)");
  TORCH_CHECK_TYPE(feats.scalar_type() == at::kFloat, "fgreid_ops.", op,
                   ": expected feats to be float32, got ", feats.scalar_type());
  TORCH_CHECK_VALUE(feats.size(0) > 0 && feats.size(1) > 0, "fgreid_ops.", op,
                    ": expected feats to be non-empty, got shape ", feats.sizes());
  TORCH_CHECK_VALUE(feats.size(0) <= kMaxRows, "fgreid_ops.", op,
                    ": expected feats to have at most 2^31-1 rows, got ", feats.size(0));
  TORCH_CHECK_TYPE(sqnorms.scalar_type() == at::kFloat, "fgreid_ops.", op,
                   ": expected sqnorms to be float32, got ", sqnorms.scalar_type());
  TORCH_CHECK_VALUE(sqnorms.dim() == 1 && sqnorms.size(0) == feats.size(0), "fgreid_ops.", op,
                    ": expected sqnorms of shape [N]=[", feats.size(0), "], got ", sqnorms.sizes());
  check_same_device(op, "sqnorms", sqnorms, "feats", feats);
}

void check_vector(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype,
                  int64_t n, const char* size_name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "fgreid_ops.", op, ": expected ", arg, " to be ",
                   dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && (n < 0 || t.size(0) == n), "fgreid_ops.", op, ": expected ",
                    arg, " of shape [", size_name, "]", n < 0 ? "" : "=[", n < 0 ? "" : std::to_string(n),
                    n < 0 ? "" : "]", ", got ", t.sizes());
  check_same_device(op, arg, t, "feats", ref);
}

// Inserts key into the ascending list keys[0, count) of capacity k, dropping the last when full.
inline void insert_key(uint64_t* keys, int64_t& count, int64_t k, uint64_t key) {
  if (count == k && key >= keys[k - 1]) return;
  int64_t p = count < k ? count++ : k - 1;
  while (p > 0 && keys[p - 1] > key) {
    keys[p] = keys[p - 1];
    --p;
  }
  keys[p] = key;
}

// Running top-k and max of rows r0 .. r0 + rows from a [rows, cols] tile of d's Gram matrix
// whose columns are c0 .. c0 + cols.
void update_rows(const float* gram, int64_t rows, int64_t cols, int64_t r0, int64_t c0, const float* sq,
                 int64_t k, uint64_t* keys, int64_t* count, float* rmax) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r0 + r;
      const float* gi = gram + r * cols;
      uint64_t* ki = keys + i * k;
      int64_t n = count[i];
      float mx = rmax[i];
      for (int64_t c = 0; c < cols; ++c) {
        const float d = distance(sq[i], sq[c0 + c], gi[c]);
        mx = d > mx ? d : mx;
        insert_key(ki, n, k, rank_key(d, c0 + c));
      }
      count[i] = n;
      rmax[i] = mx;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rerank_knn_cpu(const at::Tensor& feats, const at::Tensor& sqnorms,
                                                  int64_t k) {
  const char* op = "rerank_knn";
  check_feats(op, feats, sqnorms);
  const int64_t N = feats.size(0);
  TORCH_CHECK_VALUE(k >= 1 && k <= N, "fgreid_ops.", op, ": expected 1 <= k <= N (", N, "), got ", k);
  const at::Tensor x = feats.contiguous();
  const at::Tensor sq_t = sqnorms.contiguous();
  const float* sq = sq_t.const_data_ptr<float>();

  std::vector<uint64_t> keys(static_cast<size_t>(N * k));
  std::vector<int64_t> count(N, 0);
  at::Tensor row_max = at::empty({N}, feats.options());
  float* rmax = row_max.mutable_data_ptr<float>();
  std::fill(rmax, rmax + N, -std::numeric_limits<float>::infinity());

  // d is symmetric: each off-diagonal tile serves its rows and, transposed, its columns, which
  // halves the GEMM work. The k smallest of distinct keys do not depend on the arrival order.
  for (int64_t r0 = 0; r0 < N; r0 += kTile) {
    const int64_t rows = std::min(kTile, N - r0);
    const at::Tensor a = x.narrow(0, r0, rows);
    for (int64_t c0 = r0; c0 < N; c0 += kTile) {
      const int64_t cols = std::min(kTile, N - c0);
      const at::Tensor gram = at::mm(a, x.narrow(0, c0, cols).t()).contiguous();
      update_rows(gram.const_data_ptr<float>(), rows, cols, r0, c0, sq, k, keys.data(), count.data(), rmax);
      if (c0 != r0) {
        const at::Tensor gram_t = gram.t().contiguous();
        update_rows(gram_t.const_data_ptr<float>(), cols, rows, c0, r0, sq, k, keys.data(), count.data(), rmax);
      }
    }
  }

  at::Tensor index = at::empty({N, k}, feats.options().dtype(at::kLong));
  int64_t* idx = index.mutable_data_ptr<int64_t>();
  at::parallel_for(0, N * k, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) idx[p] = static_cast<int64_t>(keys[p] & 0xffffffffu);
  });
  return {index, row_max};
}

// R(i, k): the j among the kk = min(k + 1, N) first of i's list that have i among their own kk
// first, in i's ranking order.
void reciprocal(const int64_t* knn, int64_t width, int64_t i, int64_t kk, std::vector<int64_t>& out) {
  out.clear();
  const int64_t* forward = knn + i * width;
  for (int64_t a = 0; a < kk; ++a) {
    const int64_t* backward = knn + forward[a] * width;
    for (int64_t b = 0; b < kk; ++b) {
      if (backward[b] == i) {
        out.push_back(forward[a]);
        break;
      }
    }
  }
}

struct SparseRows {
  std::vector<std::vector<int64_t>> columns;
  std::vector<std::vector<float>> values;
  explicit SparseRows(int64_t n) : columns(n), values(n) {}
};

// (offsets [N + 1], columns [nnz], values [nnz]) of the rows, and the transpose in the same form.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> to_csr_and_csc(
    const SparseRows& v, int64_t N, const at::TensorOptions& opts) {
  const auto long_opts = opts.dtype(at::kLong);
  at::Tensor offsets = at::empty({N + 1}, long_opts);
  int64_t* off = offsets.mutable_data_ptr<int64_t>();
  off[0] = 0;
  for (int64_t i = 0; i < N; ++i) off[i + 1] = off[i] + static_cast<int64_t>(v.columns[i].size());
  const int64_t nnz = off[N];
  at::Tensor columns = at::empty({nnz}, long_opts);
  at::Tensor values = at::empty({nnz}, opts);
  int64_t* col = columns.mutable_data_ptr<int64_t>();
  float* val = values.mutable_data_ptr<float>();
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::copy(v.columns[i].begin(), v.columns[i].end(), col + off[i]);
      std::copy(v.values[i].begin(), v.values[i].end(), val + off[i]);
    }
  });

  at::Tensor inv_offsets = at::zeros({N + 1}, long_opts);
  int64_t* ioff = inv_offsets.mutable_data_ptr<int64_t>();
  for (int64_t p = 0; p < nnz; ++p) ++ioff[col[p] + 1];
  for (int64_t c = 0; c < N; ++c) ioff[c + 1] += ioff[c];
  at::Tensor inv_rows = at::empty({nnz}, long_opts);
  at::Tensor inv_values = at::empty({nnz}, opts);
  int64_t* irow = inv_rows.mutable_data_ptr<int64_t>();
  float* ival = inv_values.mutable_data_ptr<float>();
  std::vector<int64_t> fill(ioff, ioff + N);
  for (int64_t i = 0; i < N; ++i) {  // rows in ascending order: each column's rows come sorted
    for (int64_t p = off[i]; p < off[i + 1]; ++p) {
      const int64_t q = fill[col[p]]++;
      irow[q] = i;
      ival[q] = val[p];
    }
  }
  return {offsets, columns, values, inv_offsets, inv_rows, inv_values};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rerank_neighbours_cpu(const at::Tensor& feats, const at::Tensor& sqnorms, const at::Tensor& knn_index,
                      const at::Tensor& row_max, int64_t k1, int64_t k2) {
  const char* op = "rerank_neighbours";
  check_feats(op, feats, sqnorms);
  check_defined(op, {{"knn_index", &knn_index}, {"row_max", &row_max}});
  const int64_t N = feats.size(0), D = feats.size(1);
  TORCH_CHECK_VALUE(k1 >= 1, "fgreid_ops.", op, ": expected k1 >= 1, got ", k1);
  TORCH_CHECK_VALUE(k2 >= 1, "fgreid_ops.", op, ": expected k2 >= 1, got ", k2);
  // h = round(k1 / 2), half to even (numpy.around)
  const int64_t h = (k1 % 2 == 0) ? k1 / 2 : ((k1 / 2) % 2 == 0 ? k1 / 2 : k1 / 2 + 1);
  const int64_t kk1 = std::min(k1 + 1, N), kkh = std::min(h + 1, N), kq = std::min(k2, N);
  TORCH_CHECK_TYPE(knn_index.scalar_type() == at::kLong, "fgreid_ops.", op,
                   ": expected knn_index to be int64, got ", knn_index.scalar_type());
  TORCH_CHECK_VALUE(knn_index.dim() == 2 && knn_index.size(0) == N &&
                        knn_index.size(1) >= std::max(kk1, kq) && knn_index.size(1) <= N,
                    "fgreid_ops.", op, ": expected knn_index of shape [N, K]=[", N, ", K] with ",
                    std::max(kk1, kq), " <= K <= N, got ", knn_index.sizes());
  check_same_device(op, "knn_index", knn_index, "feats", feats);
  check_vector(op, "row_max", row_max, at::kFloat, N, "N", feats);

  const at::Tensor x_t = feats.contiguous(), sq_t = sqnorms.contiguous();
  const at::Tensor knn_t = knn_index.contiguous(), rmax_t = row_max.contiguous();
  const float* x = x_t.const_data_ptr<float>();
  const float* sq = sq_t.const_data_ptr<float>();
  const float* rmax = rmax_t.const_data_ptr<float>();
  const int64_t* knn = knn_t.const_data_ptr<int64_t>();
  const int64_t width = knn_index.size(1);
  for (int64_t p = 0; p < N * width; ++p) {
    TORCH_CHECK_VALUE(knn[p] >= 0 && knn[p] < N, "fgreid_ops.", op,
                      ": expected knn_index values in [0, N)=[0, ", N, "), got ", knn[p]);
  }

  SparseRows v(N);
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> r, rc, sorted_r;
    for (int64_t i = begin; i < end; ++i) {
      reciprocal(knn, width, i, kk1, r);
      sorted_r = r;
      std::sort(sorted_r.begin(), sorted_r.end());
      std::vector<int64_t>& s = v.columns[i];
      s = r;
      for (const int64_t c : r) {
        reciprocal(knn, width, c, kkh, rc);
        int64_t shared = 0;
        for (const int64_t j : rc) shared += std::binary_search(sorted_r.begin(), sorted_r.end(), j);
        if (3 * shared > 2 * static_cast<int64_t>(rc.size())) s.insert(s.end(), rc.begin(), rc.end());
      }
      std::sort(s.begin(), s.end());
      s.erase(std::unique(s.begin(), s.end()), s.end());
      std::vector<float>& w = v.values[i];
      w.resize(s.size());
      double total = 0.0;
      for (size_t a = 0; a < s.size(); ++a) {
        const float d = distance(sq[i], sq[s[a]], dot(x + i * D, x + s[a] * D, D));
        w[a] = std::exp(-normalized(d, rmax[i]));
        total += w[a];
      }
      const float sum = static_cast<float>(total);
      for (float& value : w) value /= sum;
    }
  });

  if (kq > 1) {
    SparseRows expanded(N);
    at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(N, 0.0f);
      std::vector<char> seen(N, 0);
      for (int64_t i = begin; i < end; ++i) {
        std::vector<int64_t>& cols = expanded.columns[i];
        for (int64_t a = 0; a < kq; ++a) {  // rank order: the same summation order for every column
          const int64_t r = knn[i * width + a];
          for (size_t p = 0; p < v.columns[r].size(); ++p) {
            const int64_t c = v.columns[r][p];
            if (!seen[c]) {
              seen[c] = 1;
              acc[c] = 0.0f;
              cols.push_back(c);
            }
            acc[c] += v.values[r][p];
          }
        }
        std::sort(cols.begin(), cols.end());
        std::vector<float>& vals = expanded.values[i];
        vals.resize(cols.size());
        for (size_t p = 0; p < cols.size(); ++p) {
          vals[p] = acc[cols[p]] / static_cast<float>(kq);
          seen[cols[p]] = 0;
        }
      }
    });
    return to_csr_and_csc(expanded, N, feats.options());
  }
  return to_csr_and_csc(v, N, feats.options());
}

void rerank_blend_cpu(const at::Tensor& gram, const at::Tensor& row_sq, const at::Tensor& col_sq,
                      const at::Tensor& row_max, const at::Tensor& v_offsets, const at::Tensor& v_columns,
                      const at::Tensor& v_values, const at::Tensor& inv_offsets, const at::Tensor& inv_rows,
                      const at::Tensor& inv_values, int64_t row_start, int64_t col_start,
                      double lambda_value) {
  const char* op = "rerank_blend_";
  check_defined(op, {{"gram", &gram}, {"row_sq", &row_sq}, {"col_sq", &col_sq}, {"row_max", &row_max},
                     {"v_offsets", &v_offsets}, {"v_columns", &v_columns}, {"v_values", &v_values},
                     {"inv_offsets", &inv_offsets}, {"inv_rows", &inv_rows}, {"inv_values", &inv_values}});
  check_dim(op, "gram", gram, 2, "(rows, cols)");
  TORCH_CHECK_TYPE(gram.scalar_type() == at::kFloat, "fgreid_ops.", op,
                   ": expected gram to be float32, got ", gram.scalar_type());
  TORCH_CHECK_VALUE(gram.is_contiguous(), "fgreid_ops.", op, ": expected gram to be contiguous");
  const int64_t R = gram.size(0), C = gram.size(1);
  TORCH_CHECK_TYPE(v_offsets.scalar_type() == at::kLong && v_offsets.dim() == 1 && v_offsets.size(0) >= 1,
                   "fgreid_ops.", op, ": expected v_offsets to be a 1-D int64 tensor of shape [N + 1], got ",
                   v_offsets.scalar_type(), " ", v_offsets.sizes());
  const int64_t N = v_offsets.size(0) - 1;
  const at::Tensor& ref = gram;
  const char* ref_name = "gram";
  auto same_device = [&](const char* arg, const at::Tensor& t) { check_same_device(op, arg, t, ref_name, ref); };
  auto vector_of = [&](const char* arg, const at::Tensor& t, at::ScalarType dt, int64_t n, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == dt, "fgreid_ops.", op, ": expected ", arg, " to be ", dt,
                     ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && (n < 0 || t.size(0) == n), "fgreid_ops.", op, ": expected ", arg,
                      " to be 1-D of size ", name, n < 0 ? "" : "=", n < 0 ? "" : std::to_string(n),
                      ", got ", t.sizes());
    same_device(arg, t);
  };
  vector_of("row_sq", row_sq, at::kFloat, R, "rows");
  vector_of("col_sq", col_sq, at::kFloat, C, "cols");
  vector_of("row_max", row_max, at::kFloat, R, "rows");
  same_device("v_offsets", v_offsets);
  vector_of("v_columns", v_columns, at::kLong, -1, "nnz");
  vector_of("v_values", v_values, at::kFloat, v_columns.size(0), "nnz");
  vector_of("inv_offsets", inv_offsets, at::kLong, N + 1, "N + 1");
  vector_of("inv_rows", inv_rows, at::kLong, -1, "nnz");
  vector_of("inv_values", inv_values, at::kFloat, inv_rows.size(0), "nnz");
  TORCH_CHECK_VALUE(row_start >= 0 && row_start + R <= N, "fgreid_ops.", op,
                    ": expected 0 <= row_start and row_start + rows <= N (", N, "), got row_start=",
                    row_start, ", rows=", R);
  TORCH_CHECK_VALUE(col_start >= 0 && col_start + C <= N, "fgreid_ops.", op,
                    ": expected 0 <= col_start and col_start + cols <= N (", N, "), got col_start=",
                    col_start, ", cols=", C);
  TORCH_CHECK_VALUE(lambda_value >= 0.0 && lambda_value <= 1.0, "fgreid_ops.", op,
                    ": expected 0 <= lambda_value <= 1, got ", lambda_value);
  if (R == 0 || C == 0) return;

  const at::Tensor rsq_t = row_sq.contiguous(), csq_t = col_sq.contiguous(), rmax_t = row_max.contiguous();
  const at::Tensor vo_t = v_offsets.contiguous(), vc_t = v_columns.contiguous(), vv_t = v_values.contiguous();
  const at::Tensor io_t = inv_offsets.contiguous(), ir_t = inv_rows.contiguous(), iv_t = inv_values.contiguous();
  const int64_t* vo = vo_t.const_data_ptr<int64_t>();
  const int64_t* vc = vc_t.const_data_ptr<int64_t>();
  const int64_t* io = io_t.const_data_ptr<int64_t>();
  const int64_t* ir = ir_t.const_data_ptr<int64_t>();
  const float* vv = vv_t.const_data_ptr<float>();
  const float* iv = iv_t.const_data_ptr<float>();
  const int64_t v_nnz = v_columns.size(0), inv_nnz = inv_rows.size(0);
  // Everything used as an index is checked here, before the parallel loop.
  TORCH_CHECK_VALUE(io[0] >= 0, "fgreid_ops.", op, ": expected inv_offsets[0] >= 0, got ", io[0]);
  for (int64_t c = 0; c < N; ++c) {
    TORCH_CHECK_VALUE(io[c] <= io[c + 1], "fgreid_ops.", op, ": expected inv_offsets to be non-decreasing");
  }
  TORCH_CHECK_VALUE(io[N] <= inv_nnz, "fgreid_ops.", op, ": expected inv_offsets[N] <= nnz of inv_rows (",
                    inv_nnz, "), got ", io[N]);
  for (int64_t i = row_start; i < row_start + R; ++i) {
    TORCH_CHECK_VALUE(vo[i] >= 0 && vo[i] <= vo[i + 1] && vo[i + 1] <= v_nnz, "fgreid_ops.", op,
                      ": expected v_offsets non-decreasing within [0, nnz of v_columns]");
    for (int64_t p = vo[i]; p < vo[i + 1]; ++p) {
      TORCH_CHECK_VALUE(vc[p] >= 0 && vc[p] < N, "fgreid_ops.", op,
                        ": expected v_columns values in [0, N)=[0, ", N, "), got ", vc[p]);
    }
  }

  const float* rsq = rsq_t.const_data_ptr<float>();
  const float* csq = csq_t.const_data_ptr<float>();
  const float* rmax = rmax_t.const_data_ptr<float>();
  float* g = gram.mutable_data_ptr<float>();
  const float keep = static_cast<float>(1.0 - lambda_value), mix = static_cast<float>(lambda_value);
  const int64_t col_end = col_start + C;
  at::parallel_for(0, R, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> m(C);
    for (int64_t r = begin; r < end; ++r) {
      std::fill(m.begin(), m.end(), 0.0f);
      const int64_t i = row_start + r;
      for (int64_t p = vo[i]; p < vo[i + 1]; ++p) {  // columns ascending: a fixed order per pair
        const int64_t k = vc[p];
        const float vik = vv[p];
        int64_t q = std::lower_bound(ir + io[k], ir + io[k + 1], col_start) - ir;
        for (; q < io[k + 1] && ir[q] < col_end; ++q) {
          if (ir[q] >= col_start) m[ir[q] - col_start] += std::min(vik, iv[q]);
        }
      }
      float* gr = g + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float dn = normalized(distance(rsq[r], csq[c], gr[c]), rmax[r]);
        const float jaccard = 1.0f - m[c] / (2.0f - m[c]);
        gr[c] = keep * jaccard + mix * dn;
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fgreid, CPU, m) {
  m.impl("rerank_knn", &rerank_knn_cpu);
  m.impl("rerank_neighbours", &rerank_neighbours_cpu);
  m.impl("rerank_blend_", &rerank_blend_cpu);
}

}  // namespace fgreid_ops
