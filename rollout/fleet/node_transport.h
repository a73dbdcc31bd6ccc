// How a front talks to one node: the calls its Node (heartbeats) and
// RemoteSandbox (the Sandbox interface) make. The real transport is the
// node's Sandboxes gRPC API over TCP with the node token (and TLS),
// GrpcNodeTransport(); a benchmark or test may put another one in
// FleetOptions::transport — bench/fleet_sim_bench and fleet_sim_test use the
// in-process simulated nodes of sim_node.h to drive the real front at a scale
// this machine cannot host.
//
// A connection carries the front's lease (front id, epoch, API version) on
// every call, as node.h's heartbeats and the node's FrontLeases expect.
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "paddock/client.h"
#include "sandbox/base/status.h"
#include "sandbox/image_source.h"
#include "sandbox/types.h"

namespace paddock::fleet {

struct FleetOptions;

class NodeConnection {
 public:
  virtual ~NodeConnection() = default;
  // The heartbeat: what the node reports (capacity, substrates, images, its
  // lease); renews this front's lease there. Bounded by `timeout`.
  virtual Result<client::DaemonStats> Report(std::chrono::milliseconds timeout) = 0;
  virtual Result<client::SandboxInfo> Create(const SandboxSpec& spec) = 0;
  // Streams output to `on_output`; `cancel` (may be null) stops the call with
  // CANCELLED from any thread. The result's stdout/stderr are empty.
  virtual Result<ExecResult> Exec(const std::string& id, const ExecRequest& req, const OutputCallback& on_output,
                                  client::ExecCancel* cancel) = 0;
  virtual Status WriteFile(const std::string& id, const std::string& path, std::string_view content, uint32_t mode,
                           bool make_parents) = 0;
  virtual Result<std::string> ReadFile(const std::string& id, const std::string& path, uint64_t max_bytes) = 0;
  virtual Result<std::vector<FileInfo>> ListDir(const std::string& id, const std::string& path) = 0;
  virtual Result<FileInfo> Stat(const std::string& id, const std::string& path) = 0;
  virtual Result<Usage> GetUsage(const std::string& id) = 0;
  virtual Status Destroy(const std::string& id) = 0;
  virtual Result<client::SnapshotInfo> Snapshot(const std::string& id, const std::string& name) = 0;
  // Pause with memory, resume and fork (microVMs on the node). A fork's copies
  // are the node's sandboxes, under this front's lease as their parent is.
  // Simulated nodes answer UNIMPLEMENTED.
  virtual Result<PauseResult> Pause(const std::string& id) {
    (void)id;
    return Error(Code::kUnimplemented, "this node connection cannot pause sandboxes");
  }
  virtual Status Resume(const std::string& id) {
    (void)id;
    return Error(Code::kUnimplemented, "this node connection cannot resume sandboxes");
  }
  virtual Result<std::vector<client::SandboxInfo>> Fork(const std::string& id, uint32_t count) {
    (void)id;
    (void)count;
    return Error(Code::kUnimplemented, "this node connection cannot fork sandboxes");
  }
  // The node's gRPC client where this connection is one (an image hand-over,
  // Images.Receive, streams on it: image_transfer.h); null for simulated nodes,
  // which hold every image.
  virtual client::Client* GrpcClient() { return nullptr; }
};

// What becomes of a snapshot a node took (remote_sandbox.h): the front copies
// it into its own store (fleet.h), so that it outlives the node and serves
// creates anywhere.
using SnapshotKeeper = std::function<Result<SnapshotResult>(NodeConnection&, SnapshotResult)>;

class NodeTransport {
 public:
  virtual ~NodeTransport() = default;
  // A connection to the node at `address` for this front (its token, TLS,
  // front id and epoch from `options`); waits at most a heartbeat for it.
  // UNAVAILABLE when nothing answers there.
  virtual Result<std::shared_ptr<NodeConnection>> Connect(const std::string& address, const FleetOptions& options) = 0;
};

// The node's Sandboxes gRPC API (paddock/client.h), as paddockd nodes serve it.
std::shared_ptr<NodeTransport> GrpcNodeTransport();

}  // namespace paddock::fleet
