// A thread-safe, one-shot cancellation signal shared between a caller and the
// calls it started. Cancel() may come from any thread, before or during a call.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

namespace paddock::policy {

class CancelToken {
 public:
  // Fires every registered callback once (outside the lock); later Register
  // calls see the token as cancelled. Idempotent.
  void Cancel();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Registers `on_cancel`; returns 0 without registering if already cancelled.
  // The callback must be cheap and thread-safe (it typically posts work).
  uint64_t Register(std::function<void()> on_cancel);
  void Unregister(uint64_t id);

 private:
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::function<void()>> callbacks_;
};

}  // namespace paddock::policy
