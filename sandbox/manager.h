// Owns every live sandbox: creates them through the substrate registered under
// the spec's name, enforces the global cap and each sandbox's time to live, and
// destroys what is left at shutdown.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/latency_histogram.h"
#include "sandbox/sandbox.h"

namespace paddock {

struct ManagerOptions {
  uint32_t max_sandboxes = 1000;        // global cap on live sandboxes
  uint32_t default_ttl_seconds = 3600;  // when a spec says 0
  uint32_t max_ttl_seconds = 7 * 24 * 3600;
};

struct SandboxInfo {
  std::string id;
  SandboxSpec spec;
  int64_t created_unix_ms = 0;
  int64_t expires_unix_ms = 0;
  std::string state;  // "running" | "failed" | "paused"
};

class SandboxManager {
 public:
  explicit SandboxManager(ManagerOptions options);
  ~SandboxManager();

  // `usable`: whether it can create sandboxes on this host (a microVM substrate
  // without an accelerator is registered to say why creates fail, but a front
  // must not place microVMs here).
  void RegisterSubstrate(std::unique_ptr<Substrate> substrate, bool usable = true);
  std::vector<std::string> SubstrateNames() const;
  std::vector<std::string> UsableSubstrateNames() const;

  Result<SandboxInfo> Create(const SandboxSpec& spec);
  // The sandbox stays alive while the returned pointer is held, even if it is
  // destroyed concurrently (its calls then fail with UNAVAILABLE).
  Result<std::shared_ptr<Sandbox>> Get(const std::string& id);
  Result<SandboxInfo> Info(const std::string& id);
  Status Destroy(const std::string& id);
  // Pause with memory and resume (Sandbox::Pause/Resume; microVMs): a paused
  // sandbox keeps its id, time to live and spec, releases its host memory
  // and survives a daemon restart (RecoverPaused).
  Result<PauseResult> Pause(const std::string& id);
  Status Resume(const std::string& id);
  // `count` (1..kMaxForks) running copies of a sandbox, each a new sandbox
  // with the parent's spec and a time to live of its own.
  static constexpr uint32_t kMaxForks = 64;
  Result<std::vector<SandboxInfo>> Fork(const std::string& id, uint32_t count);
  // Takes in the paused sandboxes an earlier daemon of this state dir left
  // (Substrate::Recover); call after registering the substrates. Returns how many.
  size_t RecoverPaused();
  // Deletes a microVM memory snapshot (Substrate::RemoveMemorySnapshot) by its
  // image, kMemorySnapshotPrefix + name; the bytes freed. NOT_FOUND when no
  // substrate has it.
  Result<uint64_t> RemoveMemorySnapshot(const std::string& image);
  // Every substrate's memory snapshots: image (kMemorySnapshotPrefix + name)
  // and bytes on disk.
  std::vector<std::pair<std::string, uint64_t>> MemorySnapshots();
  std::vector<SandboxInfo> List();
  uint32_t live() const;
  uint32_t max_sandboxes() const { return options_.max_sandboxes; }
  std::map<std::string, uint32_t> CountBySubstrate();
  uint64_t execs_total() const { return execs_total_.load(); }
  // For /metrics: every exec of every sandbox (API and rollout engine alike),
  // and every create through this manager.
  const LatencyHistogram& exec_latency() const { return exec_latency_; }
  const LatencyHistogram& create_latency() const { return create_latency_; }
  uint64_t creates_total() const { return creates_total_.load(); }
  uint64_t create_failures_total() const { return create_failures_.load(); }
  void CountExec() { execs_total_.fetch_add(1); }

  // Draining: creates are refused (UNAVAILABLE), the sandboxes there run on
  // (a node given notice, paddockd --drain-grace-s).
  void SetDraining(bool draining) { draining_ = draining; }
  bool draining() const { return draining_.load(); }

  // Destroys every sandbox and stops substrates. Called on SIGTERM.
  void Shutdown();

 private:
  struct Entry {
    SandboxInfo info;
    std::shared_ptr<Sandbox> sandbox;
  };
  void ExpiryLoop();
  SandboxInfo Snapshot(const Entry& e) const;
  // Under mu_: registers `e` (a create, a fork's copy, a recovered paused
  // sandbox), waking the expiry loop if it expires first; returns its info.
  SandboxInfo AddLocked(Entry e);

  ManagerOptions options_;
  std::map<std::string, std::unique_ptr<Substrate>> substrates_;
  std::vector<std::string> usable_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> sandboxes_;
  uint32_t reserved_ = 0;  // creates in flight, counted against the cap
  std::atomic<uint64_t> execs_total_{0};
  std::atomic<bool> draining_{false};
  LatencyHistogram exec_latency_, create_latency_;
  std::atomic<uint64_t> creates_total_{0}, create_failures_{0};
  std::condition_variable expiry_cv_;
  int64_t next_expiry_ms_ = 0;  // when the expiry loop wakes next (unix ms), under mu_
  bool stopping_ = false;
  std::thread expiry_thread_;
};

// 12 lowercase hex characters from the kernel's random source.
std::string NewSandboxId();

// Refuses paths with ".." components, NUL bytes or empty names.
Status ValidateSandboxPath(const std::string& path);

}  // namespace paddock
