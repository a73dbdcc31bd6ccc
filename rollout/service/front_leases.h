// Leases of the fronts that place sandboxes on this daemon (a node; see
// rollout/fleet). Fencing, so that no partition makes a tool call run twice:
//
// - A front sends `paddock-front: <id>` and `paddock-epoch: <n>` with every call
//   (its epoch grows each time it starts). Its heartbeats (Stats) renew its
//   lease on this node; every other call of it needs a live lease. Only the
//   heartbeats renew, so the front, which counts from its last answered
//   heartbeat, knows an upper bound on when the lease ends here.
// - A call carrying an epoch older than the newest this node has seen from that
//   front is refused (FAILED_PRECONDITION): an old incarnation of a front never
//   reaches sandboxes again. A newer epoch destroys the older one's sandboxes
//   (the front restarted; its episodes get new sandboxes from the log).
// - A front not heard from for the lease time loses its sandboxes here: they
//   are destroyed, so nothing runs in them while the front (which waits longer
//   than the lease before it re-places their episodes) builds replacements.
// Calls without front metadata (a harness, the CLI) are not leased.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/server_context.h>

#include "sandbox/base/status.h"
#include "sandbox/manager.h"

namespace paddock::service {

inline constexpr char kFrontIdMetadata[] = "paddock-front";
inline constexpr char kFrontEpochMetadata[] = "paddock-epoch";
// Labels a front's sandboxes carry on the node.
inline constexpr char kFrontLabel[] = "paddock.front";
inline constexpr char kEpochLabel[] = "paddock.epoch";

struct FrontCall {
  std::string front;  // empty: not a front's call
  int64_t epoch = 0;
};

class FrontLeases {
 public:
  FrontLeases(SandboxManager& manager, std::chrono::milliseconds lease);
  ~FrontLeases();
  FrontLeases(const FrontLeases&) = delete;
  FrontLeases& operator=(const FrontLeases&) = delete;

  // The call's front and epoch (INVALID_ARGUMENT when malformed); renewing
  // its lease (a heartbeat), or else checking it is live. FAILED_PRECONDITION
  // for a superseded epoch or a lease that is not live.
  Result<FrontCall> Check(const grpc::ServerContext& ctx, bool renew);
  // The same for a front and epoch already read (tests, and Check itself).
  Result<FrontCall> Renew(const std::string& front, int64_t epoch);
  Result<FrontCall> Verify(const std::string& front, int64_t epoch) const;
  // Sandboxes destroyed because their front's lease ran out or was superseded.
  uint64_t fenced() const;
  std::chrono::milliseconds lease() const { return lease_; }

 private:
  struct Lease {
    int64_t epoch = 0;
    std::chrono::steady_clock::time_point renewed;
    bool expired = false;  // its sandboxes were destroyed; the next call starts afresh
  };
  void SweepLoop();
  // Destroys the sandboxes of `front` made before `created_before_ms` whose
  // epoch is `epoch` (all_older: whose epoch is older than it).
  void DestroyOf(const std::string& front, int64_t epoch, bool all_older, int64_t created_before_ms);

  SandboxManager& manager_;
  const std::chrono::milliseconds lease_;
  mutable std::mutex mu_;
  std::map<std::string, Lease> leases_;
  uint64_t fenced_ = 0;
  bool stopping_ = false;
  std::condition_variable cv_;
  std::thread sweeper_;
};

}  // namespace paddock::service
