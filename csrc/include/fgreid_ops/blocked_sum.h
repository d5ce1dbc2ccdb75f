// Accurate long sums: a loop adds at most kSumBlock terms into one running float, and the block
// sums are combined pairwise (CascadeSum), so the rounding error grows with log2(n / kSumBlock)
// rather than with n. One float32 running sum over 2^26 terms of similar size saturates: once
// the sum is 2^24 times a term, adding the term rounds it away.
#pragma once

#include <cstdint>
#include <vector>

#include "fgreid_ops/macros.h"

namespace fgreid_ops {

// Terms per block: with 8 or 16 vector lanes, each lane's running sum stays under ~256 terms.
constexpr int64_t kSumBlock = 4096;

// Pairwise sum of a stream of partial sums, with O(log n) state: level[k] holds the sum of 2^k
// consecutive partials whenever bit k of `count` is set, like a binary counter whose carries
// are additions of equal-sized sums.
template <typename acc_t>
class CascadeSum {
 public:
  FGREID_HOST_DEVICE void add(acc_t v) {
    uint64_t c = count_;
    int k = 0;
    for (; (c & 1) != 0; c >>= 1, ++k) v = level_[k] + v;
    level_[k] = v;
    ++count_;
  }

  FGREID_HOST_DEVICE acc_t total() const {
    acc_t sum = 0;
    bool first = true;
    uint64_t c = count_;
    for (int k = 0; c != 0; c >>= 1, ++k) {
      if ((c & 1) == 0) continue;
      sum = first ? level_[k] : level_[k] + sum;
      first = false;
    }
    return sum;
  }

 private:
  acc_t level_[48];  // 2^48 partial sums is beyond any tensor
  uint64_t count_ = 0;
};

// A running sum that restarts every kSumBlock terms, the blocks combined pairwise: for loops
// that add one term at a time (gathers, one GPU thread's loop). Up to kSumBlock terms it is the
// plain running sum, bit for bit.
template <typename acc_t>
class BlockedSum {
 public:
  FGREID_HOST_DEVICE void add(acc_t v) {
    block_ += v;
    if (++count_ == kSumBlock) {
      blocks_.add(block_);
      block_ = 0;
      count_ = 0;
      long_ = true;
    }
  }

  FGREID_HOST_DEVICE acc_t total() const {
    if (!long_) return block_;
    CascadeSum<acc_t> all = blocks_;
    if (count_ > 0) all.add(block_);
    return all.total();
  }

 private:
  acc_t block_ = 0;
  int64_t count_ = 0;
  bool long_ = false;
  CascadeSum<acc_t> blocks_;
};

// One pairwise sum per channel, fed one block's partial sums of all channels at a time.
template <typename acc_t>
class CascadeSums {
 public:
  explicit CascadeSums(int64_t n) : sums_(static_cast<size_t>(n)) {}

  void add(const acc_t* partial) {
    for (size_t k = 0; k < sums_.size(); ++k) sums_[k].add(partial[k]);
  }
  acc_t total(int64_t k) const { return sums_[static_cast<size_t>(k)].total(); }
  void reset() { sums_.assign(sums_.size(), CascadeSum<acc_t>()); }

 private:
  std::vector<CascadeSum<acc_t>> sums_;
};

}  // namespace fgreid_ops
