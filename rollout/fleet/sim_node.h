// SIMULATED nodes, in process: a NodeTransport (node_transport.h) whose nodes
// are records in this process, not paddockds. No sandbox runs anywhere; an exec
// waits its configured latency and answers exit 0. They exist so that the real
// front (Fleet, placement, leases, RemoteSandbox, the rollout engine and its
// trajectory log) can be driven against 1,000 nodes and 100,000 sandboxes on
// one machine (bench/fleet_sim_bench, tests/fleet_sim_test.cc); every number
// measured with them is labelled a simulation.
//
// What a simulated node does like a real one (rollout/service/front_leases.h):
// it reports capacity, substrates, images and a front lease on each heartbeat
// (Report); only heartbeats renew the lease; a call after the lease lapsed is
// refused (FAILED_PRECONDITION) and the front's sandboxes there are destroyed
// (fenced); a fork makes copies that are new sandboxes there. What it does
// not: epochs of several fronts, files, snapshots, pause and resume (answered
// UNIMPLEMENTED), images fetched on demand.
//
// Faults: Kill() (a crashed machine: every call and heartbeat fails with
// UNAVAILABLE, calls in flight end so, its sandboxes are gone), Partition()
// (calls and heartbeats fail, the sandboxes stay until the lease fences them),
// Heal() / Revive() (answers again; a revived node holds no sandboxes),
// SetForkSurplus() (a lying node: its forks make more or fewer copies than
// asked, which no real paddockd does).
//
// With SimFleetOptions::record_execs, every exec is counted per (episode label,
// command): how often it started on any node and how often its result reached
// the front — what a test needs to show that nothing acknowledged ran twice.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "rollout/fleet/node_transport.h"

namespace paddock::fleet {

// A latency drawn uniformly from [min, max] for each call.
struct SimLatency {
  std::chrono::microseconds min{0}, max{0};
};

struct SimNodeOptions {
  uint32_t max_sandboxes = 1000;
  std::vector<std::string> substrates{"function", "container"};
  std::vector<std::string> images;  // names it reports holding
  uint64_t mem_available_bytes = 64ull << 30;
  uint32_t cpus = 32;
  std::chrono::milliseconds front_lease{5000};
  SimLatency connect{std::chrono::microseconds(200), std::chrono::microseconds(500)};
  SimLatency report{std::chrono::microseconds(100), std::chrono::microseconds(400)};
  SimLatency create{std::chrono::microseconds(1000), std::chrono::microseconds(3000)};
  SimLatency exec{std::chrono::microseconds(1000), std::chrono::microseconds(5000)};
  SimLatency call{std::chrono::microseconds(100), std::chrono::microseconds(300)};  // destroy, files, usage
  // Each exec's stdout (a command's own text is appended after it).
  std::string exec_stdout = "ok ";
};

struct SimFleetOptions {
  bool record_execs = false;
  // Keep each sandbox's `episode` label (implied by record_execs), for
  // SimNode::Episodes and TrackFirstExecs.
  bool label_sandboxes = false;
};

class SimNode;

class SimFleet final : public NodeTransport {
 public:
  explicit SimFleet(SimFleetOptions options = {});
  ~SimFleet() override;

  // Adds a node at `address` (host:port, as --nodes names it).
  SimNode& Add(const std::string& address, SimNodeOptions options = {});
  SimNode* Find(const std::string& address);
  // "a:1,b:2,…" of every node added, for FleetOptions::nodes.
  std::string Spec() const;

  Result<std::shared_ptr<NodeConnection>> Connect(const std::string& address, const FleetOptions& options) override;

  struct ExecCount {
    uint32_t started = 0;   // began on some node
    uint32_t answered = 0;  // its result went back to the front
  };
  // Per "EPISODE\nCOMMAND" (the sandbox's `episode` label, the argv joined
  // by spaces); only with record_execs.
  std::map<std::string, ExecCount> ExecCounts() const;
  void CountExec(const std::string& key, bool answered);
  void NoteAnswered(const std::string& episode, const std::string& command, const std::string& node);
  uint64_t execs_total() const { return execs_.load(); }

  // From now on, notes for each of `episodes` (labels) the first exec whose
  // answer reached the front on a node not in `elsewhere_than`, and on which
  // node: when an episode moved off a lost node runs again. Needs
  // label_sandboxes (or record_execs).
  struct FirstExec {
    std::string node, command;
    std::chrono::steady_clock::time_point at{};
  };
  void TrackFirstExecs(const std::vector<std::string>& episodes, const std::vector<std::string>& elsewhere_than);
  std::map<std::string, FirstExec> FirstExecs() const;  // only the episodes seen so far
  // With record_execs: every answered exec in order (episode, command, node, when).
  struct ExecEvent {
    std::string episode, command, node;
    std::chrono::steady_clock::time_point at;
  };
  std::vector<ExecEvent> Events() const;
  uint64_t creates_total() const { return creates_.load(); }

 private:
  const SimFleetOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<SimNode>> nodes_;
  std::vector<std::string> order_;
  std::unordered_map<std::string, ExecCount> counts_;
  std::atomic<bool> tracking_{false};
  std::unordered_map<std::string, FirstExec> first_;  // tracked episodes (at unset: not seen yet)
  std::vector<std::string> first_not_on_;
  std::vector<ExecEvent> events_;
  std::atomic<uint64_t> execs_{0}, creates_{0};
  friend class SimNode;
};

class SimNode {
 public:
  SimNode(SimFleet& fleet, std::string address, SimNodeOptions options);

  const std::string& address() const { return address_; }
  void Kill();            // crashed: calls fail, sandboxes gone
  void Revive();          // answers again, empty
  void Partition();       // unreachable; sandboxes kept until the lease fences them
  void Heal();            // reachable again
  bool dead() const;
  uint32_t live() const;  // sandboxes held now
  uint64_t fenced() const;  // sandboxes destroyed because the front's lease lapsed
  // The `episode` labels of the sandboxes it holds (label_sandboxes).
  std::vector<std::string> Episodes() const;
  // What it reports as its cap from its next heartbeat on (and enforces).
  void SetCapacity(uint32_t max_sandboxes);
  // From now on each fork makes `count + surplus` copies (at least none).
  void SetForkSurplus(int surplus);

  // NodeConnection's calls (the connection forwards here).
  Result<client::DaemonStats> Report();
  Result<client::SandboxInfo> Create(const SandboxSpec& spec);
  Result<ExecResult> Exec(const std::string& id, const ExecRequest& req, const OutputCallback& on_output,
                          client::ExecCancel* cancel);
  Result<std::vector<client::SandboxInfo>> Fork(const std::string& id, uint32_t count);
  Status Destroy(const std::string& id);
  Status Touch(const std::string& id);  // a file or usage call: the sandbox must be there

 private:
  // Waits the latency; UNAVAILABLE when the node is (or becomes) unreachable.
  Status Wait(const SimLatency& l, client::ExecCancel* cancel = nullptr, uint64_t* incarnation = nullptr);
  // Under mu_: a new sandbox record (a create's or a fork copy's), running.
  client::SandboxInfo AddSandboxLocked(std::string episode);
  // Under mu_: refuses a call of a front whose lease lapsed, fencing first.
  Status CheckLease();
  Status Unreachable() const;

  SimFleet& fleet_;
  const std::string address_;
  const SimNodeOptions options_;
  mutable std::mutex mu_;
  bool dead_ = false, partitioned_ = false;
  uint64_t incarnation_ = 1;  // grows at each Kill: calls in flight end
  std::chrono::steady_clock::time_point last_report_{};
  uint64_t next_id_ = 1;
  // Its sandboxes: id → episode label (empty unless record_execs).
  std::unordered_map<uint64_t, std::string> sandboxes_;
  uint64_t fenced_ = 0;
  uint32_t max_sandboxes_;
  int fork_surplus_ = 0;
};

}  // namespace paddock::fleet
