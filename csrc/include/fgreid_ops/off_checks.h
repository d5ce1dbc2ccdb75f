// Input checks, plane geometry and registration of the OFF ops (docs/ops.md#off), shared by the CPU and
// CUDA kernels: a backend supplies two launchers, run_forward(OffForwardGeometry) and
// run_backward(OffBackwardGeometry), and registers them with register_off_kernels.
//
// Every kernel walks [B0, B1, C, H, W] planes with per-dimension strides: the leading dims of an
// input [..., C, H, W] are folded into at most two batch dims, which covers contiguous tensors,
// one sliced batch dim (segment views x[:, :-d], x[:, d:] of [N, T, C, H, W]) and permuted
// layouts. Only leading dims that cannot fold into two (e.g. two independently sliced dims) are
// copied.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <vector>

#include "fgreid_ops/checks.h"

namespace fgreid_ops {

inline void check_off_tensor(const char* arg, const at::Tensor& t) {
  check_defined("off", {{arg, &t}});
  TORCH_CHECK_VALUE(t.dim() >= 3, "fgreid_ops.off: expected ", arg,
                    " to be at least 3-D (..., C, H, W), got ", t.dim(), "-D");
  check_float_dtype("off", arg, t);
  check_nonempty("off", arg, t);
}

inline void check_off_inputs(const at::Tensor& a, const at::Tensor& b) {
  check_defined("off", {{"a", &a}, {"b", &b}});
  check_off_tensor("a", a);
  check_float_dtype("off", "b", b);
  check_same_device("off", "b", b, "a", a);
  check_same_dtype("off", "b", b, "a", a);
  TORCH_CHECK_VALUE(b.sizes() == a.sizes(), "fgreid_ops.off: expected b to have the same shape as a (",
                    a.sizes(), "), got ", b.sizes());
}

inline void check_off_stride(int64_t T, int64_t stride) {
  TORCH_CHECK_VALUE(stride >= 1 && stride < T, "fgreid_ops.off: expected stride in [1, T-1] for T=", T,
                    ", got ", stride);
}

inline void check_off_segment_input(const at::Tensor& x, int64_t stride) {
  check_defined("off", {{"x", &x}});
  check_dim("off", "x", x, 5, "(N, T, C, H, W)");
  check_float_dtype("off", "x", x);
  check_nonempty("off", "x", x);
  check_off_stride(x.size(1), stride);
}

// grad_out of off: [..., 3C, H, W].
inline void check_off_grad(const at::Tensor& grad_out) {
  check_off_tensor("grad_out", grad_out);
  TORCH_CHECK_VALUE(grad_out.size(-3) % 3 == 0,
                    "fgreid_ops.off: expected grad_out to have 3C channels, got ", grad_out.size(-3));
}

inline void check_off_segment_grad(const at::Tensor& grad_out, int64_t stride) {
  check_defined("off", {{"grad_out", &grad_out}});
  check_dim("off", "grad_out", grad_out, 5, "(N, T-stride, 3C, H, W)");
  check_float_dtype("off", "grad_out", grad_out);
  check_nonempty("off", "grad_out", grad_out);
  TORCH_CHECK_VALUE(grad_out.size(2) % 3 == 0,
                    "fgreid_ops.off: expected grad_out to have 3C channels, got ", grad_out.size(2));
  TORCH_CHECK_VALUE(stride >= 1, "fgreid_ops.off: expected stride >= 1, got ", stride);
  // grad_x has T = grad_out.size(1) + stride frames: an output whose size grows with an int
  // argument, not with the inputs. A stride that makes it larger than any address space holds is
  // an error naming stride, before anything is allocated.
  const int64_t frame = grad_out.size(0) * (grad_out.size(2) / 3) * grad_out.size(3) * grad_out.size(4);
  const int64_t max_stride = kMaxTensorBytes / grad_out.element_size() / frame - grad_out.size(1);
  TORCH_CHECK_VALUE(stride <= max_stride, "fgreid_ops.off: expected stride <= ", max_stride,
                    " (grad_x of T = ", grad_out.size(1), " + stride frames under 2^48 bytes), got ", stride);
}

// Strides of one tensor viewed as [B0, B1, C, H, W].
struct PlaneStrides {
  int64_t b0, b1, c, h, w;
};

// Leading dims of `ts` (same leading sizes, dims [0, lead)) folded into two batch dims with one
// stride set per tensor. Two adjacent dims fold when they do so in every tensor. Returns false
// when more than two remain.
inline bool fold_leading_dims(const std::vector<at::Tensor>& ts, int64_t lead,
                              std::array<int64_t, 2>& sizes, std::vector<PlaneStrides>& strides) {
  struct Dim {
    int64_t size;
    std::vector<int64_t> stride;
  };
  std::vector<Dim> dims;
  for (int64_t d = 0; d < lead; ++d) {
    const int64_t size = ts[0].size(d);
    if (size == 1) continue;
    std::vector<int64_t> st;
    for (const auto& t : ts) st.push_back(t.stride(d));
    if (!dims.empty()) {
      Dim& prev = dims.back();
      bool folds = true;
      for (size_t i = 0; i < ts.size(); ++i) folds = folds && prev.stride[i] == size * st[i];
      if (folds) {
        prev.size *= size;
        prev.stride = st;
        continue;
      }
    }
    dims.push_back({size, st});
  }
  if (dims.size() > 2) return false;
  while (dims.size() < 2) dims.insert(dims.begin(), Dim{1, std::vector<int64_t>(ts.size(), 0)});
  sizes = {dims[0].size, dims[1].size};
  strides.clear();
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    strides.push_back({dims[0].stride[i], dims[1].stride[i], t.stride(lead), t.stride(lead + 1),
                       t.stride(lead + 2)});
  }
  return true;
}

// The planes of off(a, b): a and b as [B0, B1, C, H, W] (copied only when their leading dims do
// not fold into two) and the contiguous output [..., 3C, H, W].
struct OffForwardGeometry {
  at::Tensor a, b;
  int64_t B0, B1, C, H, W;
  PlaneStrides sa, sb;
  std::vector<int64_t> out_shape;
};

inline OffForwardGeometry off_forward_geometry(const at::Tensor& a_in, const at::Tensor& b_in) {
  OffForwardGeometry g;
  g.a = a_in;
  g.b = b_in;
  const int64_t lead = a_in.dim() - 3;
  std::array<int64_t, 2> sizes;
  std::vector<PlaneStrides> st;
  if (!fold_leading_dims({g.a, g.b}, lead, sizes, st)) {
    g.a = a_in.contiguous();
    g.b = b_in.contiguous();
    fold_leading_dims({g.a, g.b}, lead, sizes, st);
  }
  g.B0 = sizes[0];
  g.B1 = sizes[1];
  g.C = a_in.size(-3);
  g.H = a_in.size(-2);
  g.W = a_in.size(-1);
  g.sa = st[0];
  g.sb = st[1];
  g.out_shape = a_in.sizes().vec();
  g.out_shape[lead] = 3 * g.C;
  return g;
}

// The planes of a backward pass, written into a contiguous [B0, B1out, C, H, W] gradient:
// output plane (n, t, c) gets
//   -Sx(g[n, t, c]) - Sy(g[n, t, C + c]) - g[n, t, 2C + c]   when t < B1in,
//   + g[n, t - shift, 2C + c]                                when shift >= 0 and t >= shift,
// where g = grad_out as [B0, B1in, 3C, H, W]. off(a, b) is B1out = B1in, shift = -1 (grad_a; grad_b
// is a view of grad_out); off(x, stride=d) is B1out = B1in + d, shift = d (grad_x in one pass).
struct OffBackwardGeometry {
  at::Tensor grad_out;
  int64_t B0, B1in, B1out, shift, C, H, W;
  PlaneStrides sg;
  std::vector<int64_t> out_shape;
};

inline OffBackwardGeometry off_backward_geometry(const at::Tensor& grad_in) {
  OffBackwardGeometry g;
  g.grad_out = grad_in;
  const int64_t lead = grad_in.dim() - 3;
  std::array<int64_t, 2> sizes;
  std::vector<PlaneStrides> st;
  if (!fold_leading_dims({g.grad_out}, lead, sizes, st)) {
    g.grad_out = grad_in.contiguous();
    fold_leading_dims({g.grad_out}, lead, sizes, st);
  }
  g.B0 = sizes[0];
  g.B1in = g.B1out = sizes[1];
  g.shift = -1;
  g.C = grad_in.size(-3) / 3;
  g.H = grad_in.size(-2);
  g.W = grad_in.size(-1);
  g.sg = st[0];
  g.out_shape = grad_in.sizes().vec();
  g.out_shape[lead] = g.C;
  return g;
}

inline OffBackwardGeometry off_segment_backward_geometry(const at::Tensor& grad_out, int64_t stride) {
  OffBackwardGeometry g;
  g.grad_out = grad_out;
  g.B0 = grad_out.size(0);
  g.B1in = grad_out.size(1);
  g.B1out = g.B1in + stride;
  g.shift = stride;
  g.C = grad_out.size(2) / 3;
  g.H = grad_out.size(3);
  g.W = grad_out.size(4);
  const auto s = grad_out.strides();
  g.sg = {s[0], s[1], s[2], s[3], s[4]};
  g.out_shape = {g.B0, g.B1out, g.C, g.H, g.W};
  return g;
}

inline OffForwardGeometry prepare_off(const at::Tensor& a, const at::Tensor& b) {
  check_off_inputs(a, b);
  return off_forward_geometry(a, b);
}

inline OffForwardGeometry prepare_off_segment(const at::Tensor& x, int64_t stride) {
  check_off_segment_input(x, stride);
  const int64_t pairs = x.size(1) - stride;
  return off_forward_geometry(x.narrow(1, 0, pairs), x.narrow(1, stride, pairs));
}

inline OffBackwardGeometry prepare_off_backward(const at::Tensor& grad_out) {
  check_off_grad(grad_out);
  return off_backward_geometry(grad_out);
}

inline OffBackwardGeometry prepare_off_segment_backward(const at::Tensor& grad_out, int64_t stride) {
  check_off_segment_grad(grad_out, stride);
  return off_segment_backward_geometry(grad_out, stride);
}

// The four OFF ops of one backend, from its two launchers.
template <at::Tensor (*run_forward)(const OffForwardGeometry&), at::Tensor (*run_backward)(const OffBackwardGeometry&)>
struct OffKernels {
  static at::Tensor off(const at::Tensor& a, const at::Tensor& b) { return run_forward(prepare_off(a, b)); }
  static at::Tensor off_backward(const at::Tensor& g) { return run_backward(prepare_off_backward(g)); }
  static at::Tensor off_segment(const at::Tensor& x, int64_t stride) {
    return run_forward(prepare_off_segment(x, stride));
  }
  static at::Tensor off_segment_backward(const at::Tensor& g, int64_t stride) {
    return run_backward(prepare_off_segment_backward(g, stride));
  }
};

template <at::Tensor (*run_forward)(const OffForwardGeometry&), at::Tensor (*run_backward)(const OffBackwardGeometry&)>
void register_off_kernels(torch::Library& m) {
  using K = OffKernels<run_forward, run_backward>;
  m.impl("off", &K::off);
  m.impl("off_backward", &K::off_backward);
  m.impl("off_segment", &K::off_segment);
  m.impl("off_segment_backward", &K::off_segment_backward);
}

}  // namespace fgreid_ops
