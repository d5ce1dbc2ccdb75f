// Input checks shared by every kernel. Messages match fgreid_ops/_checks.py so that eager,
// compiled and direct torch.ops calls fail the same way: "fgreid_ops.<op>: expected <arg> ...".
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

namespace fgreid_ops {

// The largest tensor any device addresses: 2^48 bytes (256 TiB), the virtual address width of
// x86-64 and AArch64 and of CUDA's unified address space. For outputs whose size an int argument
// sets: past it the allocator would fail with a message that names no argument.
constexpr int64_t kMaxTensorBytes = int64_t{1} << 48;

// A None passed to a torch.ops call arrives as an undefined tensor, whose sizes and dtype are
// meaningless: every kernel rejects it, naming the argument, before reading anything else.
inline void check_defined(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> ts) {
  for (const auto& [arg, t] : ts) {
    TORCH_CHECK_TYPE(t->defined(), "fgreid_ops.", op, ": expected ", arg, " to be a torch.Tensor, got None");
  }
}

inline void check_float_dtype(const char* op, const char* arg, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(
      dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
      "fgreid_ops.", op, ": expected ", arg,
      " to be float32, float16, bfloat16 or float64, got ", dt);
}

inline void check_int64(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "fgreid_ops.", op, ": expected ", arg,
                   " to be int64, got ", t.scalar_type());
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fgreid_ops.", op, ": expected ", arg,
                   " to have the same dtype as ", ref_arg, " (", ref.scalar_type(), "), got ",
                   t.scalar_type());
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, "fgreid_ops.", op, ": expected ", arg, " to be ", dim,
                    "-D ", layout, ", got ", t.dim(), "-D");
}

inline void check_same_shape(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "fgreid_ops.", op, ": expected ", arg,
                    " to have the same shape as ", ref_arg, " ", ref.sizes(), ", got ", t.sizes());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fgreid_ops.", op, ": expected ", arg,
                    " on the same device as ", ref_arg, " (", ref.device(), "), got ",
                    t.device());
}

// Every (name, tensor) on the device of the first.
inline void check_same_devices(const char* op,
                               std::initializer_list<std::pair<const char*, const at::Tensor*>> ts) {
  const auto& first = *ts.begin();
  for (const auto& [arg, t] : ts) check_same_device(op, arg, *t, first.first, *first.second);
}

inline void check_nonempty(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.numel() > 0, "fgreid_ops.", op, ": expected ", arg,
                    " to be non-empty, got shape ", t.sizes());
}

inline void check_nonempty_batch(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.size(0) > 0, "fgreid_ops.", op, ": expected ", arg,
                    " to have a non-empty batch, got N=0");
}

// An output written in place must share no memory with an input the kernel reads.
inline void check_no_overlap(const char* op, const char* out_arg, const at::Tensor& out,
                             const char* arg, const at::Tensor& t) {
  const auto overlap = at::get_overlap_status(out, t);
  TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                    "fgreid_ops.", op, ": expected ", out_arg, " (written in place) not to share memory with ",
                    arg);
}

// The accumulation dtype: float32 for float32/float16/bfloat16, float64 for float64 (the host
// side of at::opmath_type<scalar_t>).
inline at::ScalarType acc_dtype(const at::Tensor& t) { return at::toOpMathType(t.scalar_type()); }

}  // namespace fgreid_ops
