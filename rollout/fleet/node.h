// One node of a front's fleet: its connection, heartbeat thread, state, what it
// last reported, and its creation rate. See fleet.h for the states.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>

#include "rollout/fleet/fleet.h"
#include "rollout/fleet/placement.h"
#include "sandbox/base/status.h"

namespace paddock::client {
class ExecCancel;
}  // namespace paddock::client

namespace paddock::fleet {

// The "gone" report of one sandbox placed on a node (Sandbox::WatchGone): the
// node fires it when it is declared lost. Fires once; a watcher set after
// that is called at once.
class GoneSignal {
 public:
  void Watch(std::function<void()> fn);
  void Fire();
  bool fired() const;

 private:
  mutable std::mutex mu_;  // held while the watcher runs, so that Watch(nullptr) waits for it
  bool fired_ = false;
  std::function<void()> fn_;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  Node(std::string address, const FleetOptions& options, std::function<void()> on_change);
  ~Node();  // stops the heartbeat
  void Stop();

  const std::string& address() const { return address_; }
  // The connection while the node is usable for calls made in `generation`;
  // UNAVAILABLE saying the node was lost (its sandboxes with it) otherwise.
  Result<std::shared_ptr<NodeConnection>> ClientFor(uint64_t generation) const;
  uint64_t generation() const;
  bool Usable(uint64_t generation) const;

  // For placement; `now` for the rate, `image` for locality. Of the node's
  // substrates the view holds `substrate` only (when it has it), so that a
  // view costs no copy of the set.
  NodeView View(std::chrono::steady_clock::time_point now, const std::string& image,
                const std::string& substrate) const;
  // A create starts here: takes a token of the rate and counts it pending.
  // False when the state changed since the view (choose again).
  bool BeginCreate(std::chrono::steady_clock::time_point now, uint64_t* generation);
  void EndCreate(bool placed);
  void Released();  // one of this front's sandboxes there is gone
  void Adopted(size_t n);  // n more of them made there, not by a create (a fork)
  // A call failed in a way that says the node may be gone (UNAVAILABLE): the
  // next heartbeat comes at once.
  void Suspect();
  // After a call failed for the transport: waits until the node answers a
  // heartbeat again (true) or is declared lost (false: the sandboxes of
  // `generation` are gone), so the caller knows which it was. Bounded by the
  // time loss takes to detect.
  bool AwaitVerdict(uint64_t generation);

  // Whether the node holds image `image` (a name or an id) as it last
  // reported, or since it was handed the image (NoteImage).
  bool HasImage(const std::string& image) const;
  void NoteImage(const std::string& id);
  void ForgetImage(const std::string& id);  // removed there (until a heartbeat says otherwise)

  void SetDrained();
  NodeStatus Status() const;
  bool ready() const;
  // In-flight execs, cancelled when the node is declared lost.
  void Track(client::ExecCancel* c);
  void Untrack(client::ExecCancel* c);
  // The gone signals of this front's sandboxes placed in `generation`, fired
  // when the node is declared lost (at once when that generation is over).
  void Watch(uint64_t generation, const std::shared_ptr<GoneSignal>& s);
  void Unwatch(const std::shared_ptr<GoneSignal>& s);

 private:
  void HeartbeatLoop();
  void Beat();
  std::chrono::milliseconds LostAfter() const;  // under mu_

  const std::string address_;
  const FleetOptions options_;
  std::function<void()> on_change_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool suspect_ = false;
  std::shared_ptr<NodeConnection> client_;
  std::string state_ = "connecting";
  std::string detail_;
  bool drained_ = false;
  uint64_t generation_ = 1;
  std::chrono::steady_clock::time_point last_ok_{};
  std::condition_variable verdict_cv_;  // each heartbeat's outcome
  int64_t last_ok_unix_ms_ = 0;
  // As last reported.
  std::set<std::string> substrates_, images_;  // images_: names and ids
  uint32_t images_held_ = 0;
  uint32_t live_ = 0, max_ = 0, cpus_ = 0, api_version_ = 0;
  uint64_t mem_available_ = 0;
  std::chrono::milliseconds lease_{0};  // the node's lease for fronts
  std::string version_;
  bool node_draining_ = false;
  // This front's.
  uint32_t pending_ = 0, placed_ = 0;
  uint64_t placed_total_ = 0;
  double tokens_ = 1;
  std::chrono::steady_clock::time_point tokens_at_{};
  std::set<client::ExecCancel*> in_flight_;
  std::unordered_set<std::shared_ptr<GoneSignal>> watched_;
  std::thread thread_;
};

}  // namespace paddock::fleet
