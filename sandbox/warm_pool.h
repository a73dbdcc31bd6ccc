// Ready sandboxes kept per recipe (image, limits, workdir) so that Create is
// a hand-over, not a boot. A key is filled only after a Create has asked for
// it; one background thread refills whatever was taken. Keys nobody asked
// for in `idle_drop` are emptied, and at most `max_keys` keys are kept.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "sandbox/sandbox.h"

namespace paddock {

// The pool builds at the lowest CPU priority, and threads and processes
// inherit their creator's. A factory starts what a sandbox keeps for its whole
// life (its init client's reader thread, a VM) inside this scope, at normal
// priority: a handed-over sandbox must not stay at the lowest (under load, an
// exec's reply would then wait behind every other runnable thread).
class NormalPriorityScope {
 public:
  NormalPriorityScope();
  ~NormalPriorityScope();
  NormalPriorityScope(const NormalPriorityScope&) = delete;
  NormalPriorityScope& operator=(const NormalPriorityScope&) = delete;

 private:
  int saved_ = 0;
};

class WarmPool {
 public:
  using Factory = std::function<Result<std::unique_ptr<Sandbox>>()>;

  WarmPool(size_t per_key, size_t max_keys = 8,
           std::chrono::seconds idle_drop = std::chrono::seconds(300));
  ~WarmPool();

  // A ready sandbox for `key`, or nullptr when none is ready.
  std::unique_ptr<Sandbox> Take(const std::string& key);
  // Keeps `per_key` sandboxes ready for `key` from now on, built by
  // `factory`. Called after a create of that recipe succeeded, so a recipe
  // that cannot be built is never retried in the background.
  void Want(const std::string& key, Factory factory);
  // Destroys every pooled sandbox and stops the filler. Idempotent.
  void Stop();
  size_t ready(const std::string& key);

 private:
  struct Slot {
    Factory factory;
    std::deque<std::unique_ptr<Sandbox>> ready;
    size_t building = 0;
    std::chrono::steady_clock::time_point last_demand;
    std::chrono::steady_clock::time_point retry_after;
  };
  void FillLoop();
  void EvictLocked(std::vector<std::unique_ptr<Sandbox>>* doomed);

  const size_t per_key_, max_keys_;
  const std::chrono::seconds idle_drop_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Slot> slots_;
  bool stopping_ = false;
  std::thread filler_;
};

}  // namespace paddock
