// Outputs that the CPU kernels write whole: a large fresh buffer is faulted in page by page on
// its first write, and on the machines measured those 4 KiB faults cost more than the kernel
// itself (off's 48 MB forward output: 58% of the time in the kernel's fault path, and two threads
// contend for it). Advising transparent huge pages on the buffer's 2 MiB-aligned interior makes
// that 512x fewer faults; this is what PyTorch does for every allocation under
// THP_MEM_ALLOC_ENABLE=1. Only a hint: with THP off the call fails and nothing changes. The
// buffer is overwritten entirely, so huge pages add no resident memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fgreid_ops {

// Buffers under this size keep 4 KiB pages (their faults are few, and smaller blocks are often
// reused from the heap without faulting).
constexpr int64_t kHugePageMinBytes = int64_t(4) << 20;

inline void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!out.device().is_cpu() || out.nbytes() < static_cast<size_t>(kHugePageMinBytes)) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + out.nbytes()) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)out;
#endif
}

// A new tensor that the caller's kernel overwrites entirely, huge pages advised when it is large.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  return out;
}

}  // namespace fgreid_ops
