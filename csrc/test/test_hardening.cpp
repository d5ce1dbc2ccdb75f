// C++ unit tests of the hostile-input guarantees, through the dispatcher as a C++ consumer calls
// the ops: pairwise sums stay accurate over long runs, backward ops check their gradients and
// index ranges (a call that once read out of bounds now raises or returns zeros), an output
// written in place may not alias an input, and an undefined tensor argument is named.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "fgreid_ops/blocked_sum.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  failures += ok ? 0 : 1;
}

// True when call() throws a c10::Error whose message contains `message`.
bool throws_with(const std::function<void()>& call, const std::string& message) {
  try {
    call();
  } catch (const c10::Error& e) {
    return std::string(e.what()).find(message) != std::string::npos;
  }
  return false;
}

c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }

}  // namespace

int main() {
  {
    // 2^14 block sums of 4096 terms each (2^26 terms of 0.7f): one float32 running sum over the
    // terms stalls near 2^24 * 0.7 / 2 (adding a term rounds it away); the block sums combined
    // pairwise stay within a few ulps of the exact total of the blocks.
    constexpr int64_t blocks = int64_t(1) << 14;
    float block = 0;
    for (int64_t i = 0; i < fgreid_ops::kSumBlock; ++i) block += 0.7f;
    fgreid_ops::CascadeSum<float> sum;
    float running = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      sum.add(block);
      for (int64_t i = 0; i < fgreid_ops::kSumBlock; ++i) running += 0.7f;
    }
    const double exact = static_cast<double>(block) * static_cast<double>(blocks);
    const double terms = static_cast<double>(0.7f) * static_cast<double>(blocks * fgreid_ops::kSumBlock);
    expect(std::fabs(sum.total() - exact) / exact < 1e-6, "CascadeSum of 2^14 block sums within 1e-6 relative");
    expect(std::fabs(running - terms) / terms > 0.1, "one float32 running sum over the 2^26 terms is >10% off");
  }

  auto gem_backward = op("fgreid::gem_backward")
                          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, double, bool)>();
  const auto x = at::rand({2, 3, 4, 4});
  const auto p = at::full({1}, 3.0);
  expect(throws_with([&] { gem_backward.call(at::ones({1}), x, p, 1e-6, false); },
                     "fgreid_ops.gem: expected grad_out of shape [N, C]=[2, 3], got [1]"),
         "gem_backward rejects a grad_out of the wrong shape, naming grad_out");

  auto mine_backward =
      op("fgreid::batch_hard_triplet_mine_backward")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, c10::string_view, bool)>();
  const auto none = at::full({3}, -1, at::kLong);
  const auto [grad_emb, grad_ref] = mine_backward.call(at::ones({3}), at::ones({3}), at::rand({3, 4}),
                                                       at::rand({0, 4}), none, none, at::zeros({3}), at::zeros({3}),
                                                       "euclidean", true);
  expect(grad_emb.equal(at::zeros({3, 4})) && grad_ref.sizes() == at::IntArrayRef({0, 4}),
         "triplet backward with an empty ref_emb and no pairs gives zero gradients");
  expect(throws_with(
             [&] {
               mine_backward.call(at::ones({3}), at::ones({3}), at::rand({3, 4}), at::rand({2, 4}),
                                  at::tensor({0, 2, 1}, at::kLong), none, at::zeros({3}), at::zeros({3}), "euclidean", false);
             },
             "expected idx_p in [-1, M)=[-1, 2)"),
         "triplet backward rejects an index past ref_emb, naming idx_p");

  auto matches = op("fgreid::evaluate_matches")
                     .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, std::optional<int64_t>)>();
  auto count = op("fgreid::evaluate_count")
                   .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, std::optional<int64_t>, const at::Tensor&)>();
  const auto q_pids = at::tensor({0, 1}, at::kLong), g_pids = at::tensor({0, 1, 0, 1}, at::kLong);
  const auto [offsets, index] = matches.call(q_pids, g_pids, at::zeros({2}, at::kLong), at::ones({4}, at::kLong),
                                             std::nullopt);
  const auto dist = at::rand({2, 4});
  const auto match_dist = at::rand({index.size(0)});
  expect(throws_with([&] { count.call(dist, q_pids, g_pids, 0, offsets, index, match_dist, std::nullopt, index); },
                     "expected counts (written in place) not to share memory with match_index"),
         "evaluate_count rejects counts aliasing match_index");

  {
    // BlockedSum: the plain running sum, bit for bit, up to kSumBlock terms; past that blocks
    // combined pairwise (2^26 terms of 0.7f, where one running sum is >10% off), measured against
    // the exact sum of the same float blocks, as above.
    fgreid_ops::BlockedSum<float> short_sum;
    float running = 0;
    for (int64_t i = 0; i < fgreid_ops::kSumBlock; ++i) {
      short_sum.add(0.1f * static_cast<float>(i % 7));
      running += 0.1f * static_cast<float>(i % 7);
    }
    expect(short_sum.total() == running, "BlockedSum of kSumBlock terms equals the running sum");
    fgreid_ops::BlockedSum<float> long_sum;
    float block = 0;
    for (int64_t i = 0; i < fgreid_ops::kSumBlock; ++i) block += 0.7f;
    for (int64_t i = 0; i < (int64_t(1) << 26); ++i) long_sum.add(0.7f);
    const double exact = static_cast<double>(block) * static_cast<double>((int64_t(1) << 26) / fgreid_ops::kSumBlock);
    expect(std::fabs(long_sum.total() - exact) / exact < 1e-6, "BlockedSum of 2^26 terms within 1e-6 relative");
  }

  // An undefined tensor (None from Python) among defined ones is an error naming the argument.
  auto gem = op("fgreid::gem").typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  expect(throws_with([&] { gem.call(at::Tensor(), p, 1e-6); }, "fgreid_ops.gem: expected x to be a torch.Tensor, got None"),
         "gem rejects an undefined x, naming x");
  auto segment_backward = op("fgreid::off_segment_backward").typed<at::Tensor(const at::Tensor&, int64_t)>();
  expect(throws_with([&] { segment_backward.call(at::rand({2, 3, 9, 5, 6}), int64_t(1) << 40); },
                     "fgreid_ops.off: expected stride <="),
         "off_segment_backward rejects a stride whose grad_x no address space holds, naming stride");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
