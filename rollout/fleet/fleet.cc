#include "rollout/fleet/fleet.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "paddock/client.h"
#include "rollout/fleet/image_transfer.h"
#include "rollout/fleet/node.h"
#include "rollout/fleet/placement.h"
#include "rollout/fleet/remote_sandbox.h"

namespace paddock::fleet {

namespace {

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "front";
  std::string s;
  for (char c : std::string(buf))
    s.push_back(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ? c : '-');
  return s.substr(0, 64);
}

// Whether a create failed because of the node (try another) rather than the
// request (report it).
// A node's own condition (unreachable, full, draining, its lease of this front
// lapsed) is tried elsewhere; anything else (the image, the spec, the node's
// set-up) is the answer, returned as the node gave it.
bool NodeFault(const Status& st) {
  switch (st.code()) {
    case Code::kUnavailable:
    case Code::kDeadlineExceeded:
    case Code::kResourceExhausted:
    case Code::kCancelled:
      return true;
    case Code::kFailedPrecondition:
      return st.message().find("lease") != std::string::npos || st.message().find("superseded") != std::string::npos;
    default:
      return false;
  }
}

}  // namespace

Result<std::unique_ptr<Fleet>> Fleet::Start(FleetOptions options) {
  PADDOCK_ASSIGN_OR_RETURN(NodeDiscovery discovery, NodeDiscovery::Parse(options.nodes));
  if (options.front_id.empty()) options.front_id = HostName();
  if (options.epoch <= 0)
    options.epoch = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  if (options.heartbeat.count() <= 0)
    return Error(Code::kInvalidArgument, "the node heartbeat must be positive ({} ms)", options.heartbeat.count());
  auto fleet = std::unique_ptr<Fleet>(new Fleet(std::move(options), std::move(discovery)));
  auto first = fleet->discovery_.Resolve();
  if (first.ok()) {
    fleet->SetNodes(*first);
  } else {
    spdlog::warn("fleet: {}", first.status().message());
    fleet->discovery_error_ = first.status().message();
  }
  fleet->discovery_thread_ = std::thread([f = fleet.get()] { f->DiscoveryLoop(); });
  spdlog::info("front {} (epoch {}): nodes from {}", fleet->options_.front_id, fleet->options_.epoch,
               fleet->discovery_.spec());
  return fleet;
}

Fleet::Fleet(FleetOptions options, NodeDiscovery discovery)
    : options_(std::move(options)), discovery_(std::move(discovery)) {
  if (options_.images) image_sender_ = std::make_shared<ImageSender>(*options_.images, options_.image_timeout);
}

Fleet::~Fleet() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (discovery_thread_.joinable()) discovery_thread_.join();
  std::map<std::string, std::shared_ptr<Node>> nodes;
  std::vector<std::shared_ptr<Node>> retired;
  {
    std::lock_guard l(mu_);
    nodes.swap(nodes_);
    retired.swap(retired_);
    snapshot_.reset();
  }
  // Stopped, a node makes no more calls back into the fleet; sandboxes still
  // held elsewhere keep its client for their Destroy.
  for (auto& [_, n] : nodes) n->Stop();
  for (auto& n : retired) n->Stop();
}

void Fleet::SetNodes(const std::vector<std::string>& addresses) {
  std::vector<std::shared_ptr<Node>> gone;
  {
    std::lock_guard l(mu_);
    std::set<std::string> want(addresses.begin(), addresses.end());
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      if (!want.count(it->first)) {
        spdlog::info("fleet: node {} left the node list", it->first);
        gone.push_back(it->second);
        retired_.push_back(it->second);
        it = nodes_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& a : addresses)
      if (!nodes_.count(a)) {
        spdlog::info("fleet: node {} joined", a);
        nodes_.emplace(a, std::make_shared<Node>(a, options_, [this] { cv_.notify_all(); }));
      }
    auto snap = std::make_shared<std::vector<std::shared_ptr<Node>>>();
    for (auto& [_, n] : nodes_) snap->push_back(n);
    snapshot_ = std::move(snap);
  }
  // Their sandboxes stay reachable through the nodes they hold; no new ones.
  for (auto& n : gone) n->SetDrained();
}

void Fleet::DiscoveryLoop() {
  std::unique_lock l(mu_);
  while (!stopping_) {
    cv_.wait_for(l, options_.rediscover, [&] { return stopping_; });
    if (stopping_) break;
    l.unlock();
    auto addrs = discovery_.Resolve();
    if (addrs.ok()) SetNodes(*addrs);
    l.lock();
    std::string err = addrs.ok() ? "" : addrs.status().message();
    if (err != discovery_error_ && !err.empty()) spdlog::warn("fleet: {} (keeping the nodes known)", err);
    discovery_error_ = err;
  }
}

Result<std::unique_ptr<Sandbox>> Fleet::Create(const std::string& id, const SandboxSpec& spec_in) {
  SandboxSpec spec = spec_in;
  // The node sets the lease labels itself; these say where it came from.
  spec.labels["paddock.front_sandbox"] = id;
  // An image of this front's store goes by its id: placed by it, and handed
  // to a node that lacks it. Anything else is the node's to resolve.
  std::string image_id;
  const std::string image_name = spec.image;
  if (image_sender_ && !spec.image.empty() && spec.image[0] != '/') {
    if (auto found = image_sender_->Lookup(spec.image); found.ok()) {
      image_id = *found;
      spec.image = image_id;
      spec.labels["paddock.image"] = image_name;
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + options_.place_timeout;
  std::set<std::string> failed;  // nodes that failed this create
  Status last = Error(Code::kUnavailable, "no node");
  for (;;) {
    auto now = std::chrono::steady_clock::now();
    std::shared_ptr<Node> chosen;
    uint64_t generation = 0;
    Result<Placement> choice = Error(Code::kUnavailable, "no node");
    // The views are built outside the fleet's lock, from the node list as it
    // was (a copy of one pointer): with 1,000 nodes a create reads 1,000
    // nodes, and creates from many threads must not queue behind each other
    // for that. BeginCreate checks the chosen node again under its own lock.
    std::shared_ptr<const std::vector<std::shared_ptr<Node>>> all;
    {
      std::lock_guard l(mu_);
      if (stopping_) return Error(Code::kUnavailable, "the front is shutting down");
      all = snapshot_;
    }
    std::vector<size_t> held;  // index into *all of each view
    std::vector<NodeView> views;
    if (all) {
      held.reserve(all->size());
      views.reserve(all->size());
      for (size_t i = 0; i < all->size(); ++i) {
        const auto& n = (*all)[i];
        if (!failed.empty() && failed.count(n->address())) continue;
        held.push_back(i);
        views.push_back(n->View(now, spec.image, spec.substrate));
      }
    }
    choice = ChooseNode(views, spec);
    if (choice.status().code() == Code::kNotFound) return choice.status();  // waiting would not change it
    if (choice.ok() && (*all)[held[choice->index]]->BeginCreate(now, &generation)) chosen = (*all)[held[choice->index]];
    if (!chosen) {
      std::unique_lock l(mu_);
      if (stopping_) return Error(Code::kUnavailable, "the front is shutting down");
      if (now >= deadline) {
        if (choice.ok()) return Error(Code::kUnavailable, "placing a {} sandbox: no node took it", spec.substrate);
        return choice.status().code() == Code::kUnavailable && !failed.empty()
                   ? last.Prefix(fmt::format("placing a {} sandbox", spec.substrate))
                   : choice.status();
      }
      // Wait for the rate's next token, a heartbeat or a node to join.
      auto wait = choice.status().code() == Code::kResourceExhausted
                      ? std::chrono::milliseconds(static_cast<int64_t>(1000.0 / std::max(1.0, options_.creates_per_second)) + 1)
                      : std::chrono::milliseconds(200);
      cv_.wait_for(l, std::min<std::chrono::steady_clock::duration>(wait, deadline - now));
      if (failed.size() && failed.size() >= nodes_.size()) failed.clear();  // every node failed once: try again
      continue;
    }
    auto c = chosen->ClientFor(generation);
    Result<client::SandboxInfo> made =
        c.ok() ? CreateOn(*chosen, **c, spec, image_id, image_name) : Result<client::SandboxInfo>(c.status());
    chosen->EndCreate(made.ok());
    if (made.ok()) {
      spdlog::info("sandbox {} placed on node {} as {}{}", id, chosen->address(), made->id,
                   choice.ok() && choice->image_local ? " (image there)" : "");
      auto sandbox = std::make_unique<RemoteSandbox>(id, made->id, chosen, generation);
      if (auto keeper = KeeperFor(chosen)) sandbox->KeepSnapshotsWith(std::move(keeper));
      return std::unique_ptr<Sandbox>(std::move(sandbox));
    }
    last = made.status().Prefix(fmt::format("node {}", chosen->address()));
    if (!NodeFault(made.status())) return last;
    spdlog::warn("creating sandbox {}: {}; placing it elsewhere", id, last.message());
    if (made.status().code() == Code::kUnavailable || made.status().code() == Code::kDeadlineExceeded)
      chosen->Suspect();
    failed.insert(chosen->address());
  }
}

Result<client::SandboxInfo> Fleet::CreateOn(Node& node, NodeConnection& c, const SandboxSpec& spec,
                                            const std::string& image_id, const std::string& image_name) {
  bool handed = false;
  auto hand_over = [&]() -> Result<ImageHanded> {
    client::Client* grpc = c.GrpcClient();
    if (!grpc) return Error(Code::kFailedPrecondition, "node {} cannot receive images over its transport", node.address());
    return image_sender_->Ensure(node.address(), *grpc, image_id, image_name);
  };
  if (!image_id.empty() && !node.HasImage(image_id)) {
    auto h = hand_over();
    if (!h.ok()) return h.status();
    node.NoteImage(image_id);
    handed = true;
  }
  auto made = c.Create(spec);
  // The node dropped the image since it last reported it: hand it over again, once.
  if (!made.ok() && made.status().code() == Code::kNotFound && !handed && !image_id.empty() &&
      made.status().message().find(image_id.substr(7, 12)) != std::string::npos) {
    auto h = hand_over();
    if (!h.ok()) return h.status();
    made = c.Create(spec);
  }
  return made;
}

SnapshotKeeper Fleet::KeeperFor(std::shared_ptr<Node> node) const {
  if (!image_sender_) return {};
  // Captures what outlives the fleet's own lifetime questions: the sender (shared),
  // the store (the daemon's, which outlives every sandbox) and the node.
  return [sender = image_sender_, store = options_.images, node = std::move(node)](
             NodeConnection& c, SnapshotResult snap) -> Result<SnapshotResult> {
    client::Client* grpc = c.GrpcClient();
    if (!grpc) return snap;  // a simulated node: nothing to copy
    const std::string what = fmt::format("snapshot {} of a sandbox on node {}", snap.image, node->address());
    auto copied = sender->Fetch(node->address(), *grpc, snap.image, snap.name);
    if (!copied.ok()) return copied.status().Prefix(what + " was taken, but the front could not keep it");
    if (!snap.name.empty()) {
      Status tagged = store->Tag(copied->image, snap.name);
      if (!tagged.ok()) return tagged.Prefix(what + " was kept by the front, but naming it " + snap.name);
    }
    node->NoteImage(snap.image);  // creates from it prefer the node that holds it
    return snap;
  };
}

std::vector<NodeStatus> Fleet::List() const {
  std::vector<std::shared_ptr<Node>> nodes;
  {
    std::lock_guard l(mu_);
    for (auto& [_, n] : nodes_) nodes.push_back(n);
  }
  std::vector<NodeStatus> out;
  for (auto& n : nodes) out.push_back(n->Status());
  return out;
}

Result<NodeStatus> Fleet::Drain(const std::string& address) {
  std::shared_ptr<Node> n;
  {
    std::lock_guard l(mu_);
    auto it = nodes_.find(address);
    if (it == nodes_.end()) {
      std::string known;
      for (auto& [a, _] : nodes_) known += (known.empty() ? "" : ", ") + a;
      return Error(Code::kNotFound, "no node {} in this front's fleet; its nodes: {}", address,
                   known.empty() ? "none" : known);
    }
    n = it->second;
  }
  n->SetDrained();
  return n->Status();
}

uint64_t Fleet::images_handed() const { return image_sender_ ? image_sender_->handed() : 0; }

void Fleet::ForEachReadyNodeClient(const std::function<void(Node&, client::Client&)>& fn) const {
  std::vector<std::shared_ptr<Node>> nodes;
  {
    std::lock_guard l(mu_);
    for (auto& [_, n] : nodes_) nodes.push_back(n);
  }
  for (const auto& n : nodes) {
    if (!n->ready()) continue;
    auto c = n->ClientFor(n->generation());
    client::Client* grpc = c.ok() ? (*c)->GrpcClient() : nullptr;
    if (grpc) fn(*n, *grpc);  // else lost meanwhile, or a simulated node
  }
}

std::vector<std::pair<std::string, uint64_t>> Fleet::MemorySnapshots() const {
  std::vector<std::pair<std::string, uint64_t>> out;
  ForEachReadyNodeClient([&](Node& n, client::Client& grpc) {
    auto listed = grpc.ImageList();
    if (!listed.ok()) {
      spdlog::warn("listing memory snapshots on node {}: {}", n.address(), listed.status().ToString());
      return;
    }
    for (const auto& image : *listed)
      for (const auto& name : image.names)
        if (name.rfind(kMemorySnapshotPrefix, 0) == 0)
          out.emplace_back(name.substr(std::strlen(kMemorySnapshotPrefix)), image.stored_bytes);
  });
  return out;
}

Result<uint64_t> Fleet::RemoveMemorySnapshot(const std::string& name) {
  const std::string image = kMemorySnapshotPrefix + name;
  uint64_t freed = 0;
  bool found = false;
  Status failed = Status::Ok();
  ForEachReadyNodeClient([&](Node& n, client::Client& grpc) {
    auto listed = grpc.ImageList();
    if (!listed.ok()) return;
    for (const auto& held : *listed) {
      if (std::find(held.names.begin(), held.names.end(), image) == held.names.end()) continue;
      auto removed = grpc.ImageRemove(image);
      if (!removed.ok() && removed.status().code() != Code::kNotFound) {
        failed = removed.status().Prefix(fmt::format("removing {} on node {}", image, n.address()));
        return;
      }
      n.ForgetImage(image);
      found = true;
      if (removed.ok()) freed += held.stored_bytes;
    }
  });
  if (!failed.ok()) return failed;
  if (!found) return Error(Code::kNotFound, "no node holds memory snapshot {}", image);
  return freed;
}

bool Fleet::WaitForReady(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock l(mu_);
  return cv_.wait_for(l, timeout, [&] {
    size_t ready = 0;
    for (auto& [_, n] : nodes_) ready += n->ready();
    return ready >= count;
  });
}

namespace {

class FleetSubstrate final : public Substrate {
 public:
  FleetSubstrate(Fleet& fleet, std::string name) : fleet_(fleet), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  Result<std::unique_ptr<Sandbox>> Create(const std::string& id, const SandboxSpec& spec) override {
    return fleet_.Create(id, spec);
  }
  // The nodes' microVM memory snapshots, listed and removed through the front
  // (by the microvm substrate only, so that each is listed once).
  Result<uint64_t> RemoveMemorySnapshot(const std::string& name) override {
    if (name_ != "microvm") return Substrate::RemoveMemorySnapshot(name);
    return fleet_.RemoveMemorySnapshot(name);
  }
  std::vector<std::pair<std::string, uint64_t>> MemorySnapshots() override {
    if (name_ != "microvm") return {};
    return fleet_.MemorySnapshots();
  }

 private:
  Fleet& fleet_;
  std::string name_;
};

}  // namespace

std::unique_ptr<Substrate> MakeFleetSubstrate(Fleet& fleet, const std::string& name) {
  return std::make_unique<FleetSubstrate>(fleet, name);
}

}  // namespace paddock::fleet
