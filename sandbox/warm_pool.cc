#include "sandbox/warm_pool.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>

#include <spdlog/spdlog.h>

namespace paddock {

using Clock = std::chrono::steady_clock;

// On Linux, PRIO_PROCESS with who 0 is the calling thread's nice value.
NormalPriorityScope::NormalPriorityScope() {
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, 0);
  saved_ = errno == 0 ? nice : 0;
  if (saved_ > 0) setpriority(PRIO_PROCESS, 0, 0);
}

NormalPriorityScope::~NormalPriorityScope() {
  if (saved_ > 0) setpriority(PRIO_PROCESS, 0, saved_);
}

WarmPool::WarmPool(size_t per_key, size_t max_keys, std::chrono::seconds idle_drop)
    : per_key_(per_key), max_keys_(max_keys), idle_drop_(idle_drop) {
  if (per_key_ > 0) filler_ = std::thread([this] { FillLoop(); });
}

WarmPool::~WarmPool() { Stop(); }

std::unique_ptr<Sandbox> WarmPool::Take(const std::string& key) {
  if (per_key_ == 0) return nullptr;
  std::vector<std::unique_ptr<Sandbox>> doomed;
  std::unique_ptr<Sandbox> out;
  {
    std::lock_guard lock(mu_);
    auto it = slots_.find(key);
    if (stopping_ || it == slots_.end()) return nullptr;
    Slot& slot = it->second;
    slot.last_demand = Clock::now();
    while (!slot.ready.empty() && !out) {
      out = std::move(slot.ready.front());
      slot.ready.pop_front();
      if (!out->Alive()) doomed.push_back(std::move(out));
    }
  }
  cv_.notify_all();  // refill what was taken
  for (auto& sb : doomed) {
    Status ignored = sb->Destroy();
    (void)ignored;
  }
  return out;
}

void WarmPool::Want(const std::string& key, Factory factory) {
  if (per_key_ == 0) return;
  std::vector<std::unique_ptr<Sandbox>> doomed;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    Slot& slot = slots_[key];
    slot.factory = std::move(factory);
    slot.last_demand = Clock::now();
    EvictLocked(&doomed);
  }
  cv_.notify_all();
  for (auto& sb : doomed) {
    Status ignored = sb->Destroy();
    (void)ignored;
  }
}

// Drops keys idle for too long, then the least recently asked-for keys
// beyond max_keys_.
void WarmPool::EvictLocked(std::vector<std::unique_ptr<Sandbox>>* doomed) {
  auto now = Clock::now();
  auto drop = [doomed](std::map<std::string, Slot>::iterator it) {
    for (auto& sb : it->second.ready) doomed->push_back(std::move(sb));
    it->second.ready.clear();
  };
  for (auto it = slots_.begin(); it != slots_.end();) {
    if (now - it->second.last_demand > idle_drop_ && it->second.building == 0) {
      drop(it);
      it = slots_.erase(it);
    } else {
      ++it;
    }
  }
  while (slots_.size() > max_keys_) {
    auto oldest = slots_.end();
    for (auto it = slots_.begin(); it != slots_.end(); ++it)
      if (it->second.building == 0 &&
          (oldest == slots_.end() || it->second.last_demand < oldest->second.last_demand))
        oldest = it;
    if (oldest == slots_.end()) break;
    drop(oldest);
    slots_.erase(oldest);
  }
}

size_t WarmPool::ready(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = slots_.find(key);
  return it == slots_.end() ? 0 : it->second.ready.size();
}

void WarmPool::FillLoop() {
  // Building ahead must not slow down the sandboxes in use: the filler runs
  // at the lowest CPU priority (the substrate lowers the new sandbox's
  // processes the same way while they are being built).
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  std::unique_lock lock(mu_);
  while (!stopping_) {
    auto now = Clock::now();
    std::string key;
    Factory factory;
    auto next_retry = Clock::time_point::max();
    for (auto& [k, slot] : slots_) {
      if (slot.ready.size() + slot.building >= per_key_) continue;
      if (slot.retry_after > now) {
        next_retry = std::min(next_retry, slot.retry_after);
        continue;
      }
      key = k;
      factory = slot.factory;
      break;
    }
    if (key.empty()) {
      if (next_retry == Clock::time_point::max()) cv_.wait(lock);
      else cv_.wait_until(lock, next_retry);
      continue;
    }
    slots_[key].building++;
    lock.unlock();
    auto built = factory();
    lock.lock();
    auto it = slots_.find(key);
    if (it != slots_.end()) it->second.building--;
    if (it == slots_.end() || stopping_) {
      lock.unlock();
      if (built.ok()) {
        Status ignored = built.value()->Destroy();
        (void)ignored;
      }
      lock.lock();
      continue;
    }
    if (built.ok()) {
      it->second.ready.push_back(std::move(built).value());
    } else {
      spdlog::warn("warm pool: could not prepare a sandbox: {}; retrying in 5 s",
                   built.status().ToString());
      it->second.retry_after = Clock::now() + std::chrono::seconds(5);
    }
  }
}

void WarmPool::Stop() {
  std::vector<std::unique_ptr<Sandbox>> doomed;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& [_, slot] : slots_)
      for (auto& sb : slot.ready) doomed.push_back(std::move(sb));
    slots_.clear();
  }
  cv_.notify_all();
  if (filler_.joinable()) filler_.join();
  for (auto& sb : doomed) {
    Status ignored = sb->Destroy();
    (void)ignored;
  }
}

}  // namespace paddock
