#include "policy/backends/cancel_token.h"

#include <utility>
#include <vector>

namespace paddock::policy {

void CancelToken::Cancel() {
  std::map<uint64_t, std::function<void()>> fire;
  {
    std::lock_guard lock(mu_);
    if (cancelled_.exchange(true, std::memory_order_acq_rel)) return;
    fire.swap(callbacks_);
  }
  for (auto& [id, cb] : fire) cb();
}

uint64_t CancelToken::Register(std::function<void()> on_cancel) {
  std::lock_guard lock(mu_);
  if (cancelled_.load(std::memory_order_acquire)) return 0;
  uint64_t id = next_id_++;
  callbacks_.emplace(id, std::move(on_cancel));
  return id;
}

void CancelToken::Unregister(uint64_t id) {
  std::lock_guard lock(mu_);
  callbacks_.erase(id);
}

}  // namespace paddock::policy
