// Throttled progress for registry pulls and pushes: a progress callback called
// at most every 200 ms, and always when the caller forces it (phase changes).
// Not thread-safe: callers reporting from several threads hold their own lock.
#pragma once

#include <chrono>
#include <functional>

namespace paddock::storage::registry {

template <typename Progress>
class ThrottledProgress {
 public:
  // `fn` (may be empty: nothing is reported) must outlive this.
  explicit ThrottledProgress(const std::function<void(const Progress&)>& fn) : fn_(fn) {}

  void Say(Progress p, bool force = true) {
    if (!fn_) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < kInterval) return;
    last_ = now;
    fn_(p);
  }

 private:
  static constexpr std::chrono::milliseconds kInterval{200};
  const std::function<void(const Progress&)>& fn_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace paddock::storage::registry
