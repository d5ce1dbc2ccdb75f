// Input checks shared by every kernel. Messages match fgreid_ops/_checks.py so that eager,
// compiled and direct torch.ops calls fail the same way: "fgreid_ops.<op>: <arg> ...".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace fgreid_ops {

inline void check_float_dtype(const char* op, const char* arg, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(
      dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
      "fgreid_ops.", op, ": expected ", arg,
      " to be float32, float16, bfloat16 or float64, got ", dt);
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, "fgreid_ops.", op, ": expected ", arg, " to be ", dim,
                    "-D ", layout, ", got ", t.dim(), "-D");
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fgreid_ops.", op, ": expected ", arg,
                    " on the same device as ", ref_arg, " (", ref.device(), "), got ",
                    t.device());
}

inline void check_nonempty(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.numel() > 0, "fgreid_ops.", op, ": expected ", arg,
                    " to be non-empty, got shape ", t.sizes());
}

// NCHW tensors are walked either as contiguous or as channels_last; anything else is copied.
inline bool is_channels_last_4d(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() &&
         t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace fgreid_ops
