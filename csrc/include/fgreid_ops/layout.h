// Memory layouts the kernels walk in place: NCHW tensors are read either as contiguous or as
// channels_last; anything else is copied to contiguous first.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "fgreid_ops/huge_pages.h"

namespace fgreid_ops {

inline bool is_channels_last_4d(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// t itself when it is contiguous or channels_last, else a contiguous copy.
inline at::Tensor contiguous_or_channels_last(const at::Tensor& t) {
  return (t.is_contiguous() || is_channels_last_4d(t)) ? t : t.contiguous();
}

inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return is_channels_last_4d(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A new tensor of t's sizes and dtype, channels_last when t is, else contiguous (the rule the
// fakes in fgreid_ops/ops follow), for a kernel to overwrite entirely (huge_pages.h).
inline at::Tensor empty_in_layout_of(const at::Tensor& t) {
  return empty_output(t.sizes(), t.options().memory_format(layout_of(t)));
}

}  // namespace fgreid_ops
