// A front's nodes (a paddockd started with --nodes): discovery, heartbeats,
// node states, placement and the creation of sandboxes on them.
//
// Each node has a heartbeat thread: it connects (TCP, the node token, TLS when
// configured), asks Stats every `heartbeat` with the front's lease in the call
// metadata (which renews the lease on the node, rollout/service/front_leases.h),
// and keeps what the node reports for placement.
//
// States: connecting (never answered, or not since it was lost) → ready →
// draining (the node said so, or `paddock node drain`) | lost (no answer for the
// nodes' lease time plus a margin: by then the node has destroyed this front's
// sandboxes, so their episodes may be rebuilt elsewhere without a call running
// twice) | refused (another API version, a wrong token: no sandbox goes there).
// A lost node that answers again is ready again; its old sandboxes stay gone.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "rollout/fleet/node_discovery.h"
#include "rollout/fleet/node_transport.h"
#include "sandbox/sandbox.h"

namespace paddock::client {
class Client;
struct SandboxInfo;
}
namespace paddock::storage {
class ImageStore;
}

namespace paddock::fleet {

struct FleetOptions {
  std::string nodes;  // --nodes SPEC (node_discovery.h)
  std::string token;  // the nodes' bearer token (--node-token-file)
  // TLS to nodes: on when `tls` or a CA file is set; a client certificate for
  // nodes that ask for one (mutual TLS).
  bool tls = false;
  std::string tls_ca_file, tls_cert_file, tls_key_file;
  std::chrono::milliseconds heartbeat{1000};
  // A node silent for the lease it reports (its --front-lease-ms) plus a heartbeat
  // and a quarter of the lease is lost: by then it has destroyed this front's
  // sandboxes (only heartbeats renew the lease; see front_leases.h).
  // A node that reports no lease is not placed on (`refused`).
  std::chrono::milliseconds rediscover{5000};  // DNS and file specs are read again this often
  // Creates per second per node (bursts are smoothed: a create waits for its
  // turn, never refused for the rate).
  double creates_per_second = 50;
  // How long a create waits for a node that can take it.
  std::chrono::milliseconds place_timeout{30000};
  // The front's image store: an image named by a create that is there is
  // placed by its id and handed to nodes that lack it (image_transfer.h),
  // each offer bounded by `image_timeout`. Null: images are passed to nodes as
  // named.
  storage::ImageStore* images = nullptr;
  std::chrono::milliseconds image_timeout{600000};
  std::string front_id;  // default: the host name
  int64_t epoch = 0;     // default: the start time in ms (grows each start)
  // How the front reaches its nodes; null: their gRPC API (GrpcNodeTransport).
  // Benchmarks and tests put simulated nodes here (sim_node.h).
  std::shared_ptr<NodeTransport> transport;
};

struct NodeStatus {
  std::string address;
  std::string state;   // connecting | ready | draining | lost | refused
  std::string detail;  // why not ready
  std::vector<std::string> substrates;
  uint32_t live = 0, max = 0;
  uint32_t placed = 0;         // this front's sandboxes there now
  uint64_t placed_total = 0;
  uint64_t mem_available_bytes = 0;
  uint32_t cpus = 0;
  std::string version;
  uint32_t api_version = 0;
  uint32_t images = 0;
  int64_t last_heartbeat_unix_ms = 0;
};

class Node;
class ImageSender;

class Fleet {
 public:
  // Parses the spec and starts discovery and heartbeats; does not wait for nodes.
  static Result<std::unique_ptr<Fleet>> Start(FleetOptions options);
  ~Fleet();  // stops the heartbeats; sandboxes on nodes are left to their leases
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  // Places a sandbox on a node and creates it there; waits (up to
  // place_timeout) while no node can take it or the rate says wait. The
  // returned sandbox's id is `id` (the front's); the node's id stays inside.
  Result<std::unique_ptr<Sandbox>> Create(const std::string& id, const SandboxSpec& spec);

  std::vector<NodeStatus> List() const;
  // Takes no new sandboxes on `address`; NOT_FOUND when it is not a node.
  Result<NodeStatus> Drain(const std::string& address);
  // Until a node has answered (tests, startup logs); false at the deadline.
  bool WaitForReady(size_t nodes, std::chrono::milliseconds timeout) const;

  // Images this front handed to nodes that lacked them (image_transfer.h).
  uint64_t images_handed() const;

  // MicroVM memory snapshots on the nodes, each on the node that took it (a
  // front keeps none): name (without kMemorySnapshotPrefix) and bytes, from
  // every ready node's Images.List, asked now; a node that does not answer is
  // left out (logged). As Substrate::MemorySnapshots.
  std::vector<std::pair<std::string, uint64_t>> MemorySnapshots() const;
  // Deletes memory snapshot `name` on each node that holds it; the bytes
  // freed. NOT_FOUND when no ready node holds it.
  Result<uint64_t> RemoveMemorySnapshot(const std::string& name);

  const std::string& front_id() const { return options_.front_id; }
  int64_t epoch() const { return options_.epoch; }
  const FleetOptions& options() const { return options_; }

 private:
  explicit Fleet(FleetOptions options, NodeDiscovery discovery);
  void DiscoveryLoop();
  void SetNodes(const std::vector<std::string>& addresses);
  // Creates on `node`, handing it the image first when it lacks it.
  Result<client::SandboxInfo> CreateOn(Node& node, NodeConnection& c, const SandboxSpec& spec,
                                       const std::string& image_id, const std::string& image_name);
  // Calls fn with each ready node and its gRPC client (simulated nodes have none).
  void ForEachReadyNodeClient(const std::function<void(Node&, client::Client&)>& fn) const;
  // A sandbox's snapshot keeper (remote_sandbox.h): the node's snapshot copied
  // into this front's store under its name; null without a store.
  SnapshotKeeper KeeperFor(std::shared_ptr<Node> node) const;

  FleetOptions options_;
  NodeDiscovery discovery_;
  std::shared_ptr<ImageSender> image_sender_;  // when options_.images (shared with sandboxes' snapshot keepers)
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // node state changes, stop
  std::map<std::string, std::shared_ptr<Node>> nodes_;
  // nodes_ as a list, replaced (never changed) when nodes join or leave: what
  // a create reads without holding mu_.
  std::shared_ptr<const std::vector<std::shared_ptr<Node>>> snapshot_;
  // Nodes that left the list: their sandboxes still use them (heartbeats go on,
  // renewing the lease); stopped with the fleet.
  std::vector<std::shared_ptr<Node>> retired_;
  std::string discovery_error_;
  bool stopping_ = false;
  std::thread discovery_thread_;
};

// A Substrate whose sandboxes live on the fleet's nodes (registered by a front
// under each substrate name in place of the local ones).
std::unique_ptr<Substrate> MakeFleetSubstrate(Fleet& fleet, const std::string& name);

}  // namespace paddock::fleet
