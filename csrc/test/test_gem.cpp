// C++ unit test of the CPU GeM kernel, called through the dispatcher like a C++ consumer would,
// against the ATen formula of docs/ops.md#gem, in both layouts, plus an input-check error.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  failures += ok ? 0 : 1;
}

at::Tensor reference(const at::Tensor& x, const at::Tensor& p, double eps) {
  const auto pv = p.to(at::kDouble).reshape({1, -1});
  return x.to(at::kDouble).clamp_min(eps).pow(pv.unsqueeze(-1).unsqueeze(-1)).mean({2, 3}).pow(1.0 / pv);
}

}  // namespace

int main() {
  auto gem = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("fgreid::gem", "")
                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  at::manual_seed(0);
  const auto x = at::rand({3, 70, 5, 7});
  const auto p1 = at::full({1}, 3.0);
  const auto pc = at::rand({70}) * 3 + 1;

  expect(at::allclose(gem.call(x, p1, 1e-6).to(at::kDouble), reference(x, p1, 1e-6), 1e-5, 1e-6),
         "gem forward, contiguous, p [1]");
  expect(at::allclose(gem.call(x.contiguous(at::MemoryFormat::ChannelsLast), pc, 1e-6).to(at::kDouble),
                      reference(x, pc, 1e-6), 1e-5, 1e-6),
         "gem forward, channels_last, p [C]");
  expect(at::allclose(gem.call(x.to(at::kDouble), p1, 1e-6), reference(x, p1, 1e-6), 1e-12, 1e-12),
         "gem forward, float64");

  bool threw = false;
  try {
    gem.call(at::rand({2, 3}), p1, 1e-6);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("fgreid_ops.gem: expected x to be 4-D") != std::string::npos;
  }
  expect(threw, "gem rejects a 2-D x with a message naming x");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
