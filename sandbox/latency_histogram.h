// A fixed-bucket latency histogram that many threads update without a lock
// (exec and create times for /metrics). Buckets are Prometheus-style upper
// bounds in seconds, from 1 ms to 60 s.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace paddock {

class LatencyHistogram {
 public:
  static constexpr std::array<double, 15> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,      2.5,   5,    10,    30,    60};
  struct Counts {
    std::array<uint64_t, kBounds.size() + 1> per_bucket{};  // the last: above every bound
    uint64_t count = 0;
    double sum_seconds = 0;
  };

  void Observe(double seconds) {
    size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(static_cast<uint64_t>(seconds * 1e6), std::memory_order_relaxed);
  }

  Counts Read() const {
    Counts c;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      c.per_bucket[i] = buckets_[i].load(std::memory_order_relaxed);
      c.count += c.per_bucket[i];
    }
    c.sum_seconds = sum_us_.load(std::memory_order_relaxed) / 1e6;
    return c;
  }

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace paddock
