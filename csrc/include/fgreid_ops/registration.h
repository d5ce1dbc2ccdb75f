// Kernel registration shared by the backends: an op and its backward ("<op>" and "<op>_backward")
// registered in one call, so each backend's TORCH_LIBRARY_IMPL block is one line.
#pragma once

#include <torch/library.h>

#include <string>

namespace fgreid_ops {

template <auto forward, auto backward>
void register_forward_backward(torch::Library& m, const std::string& op) {
  m.impl(op.c_str(), forward);
  m.impl((op + "_backward").c_str(), backward);
}

}  // namespace fgreid_ops
