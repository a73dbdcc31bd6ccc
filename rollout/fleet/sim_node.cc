#include "rollout/fleet/sim_node.h"

#include <algorithm>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "proto/api_version.h"

namespace paddock::fleet {

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::microseconds Draw(const SimLatency& l) {
  if (l.max <= l.min) return l.min;
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<int64_t> d(l.min.count(), l.max.count());
  return std::chrono::microseconds(d(rng));
}

class SimConnection final : public NodeConnection {
 public:
  explicit SimConnection(SimNode* node) : node_(node) {}
  Result<client::DaemonStats> Report(std::chrono::milliseconds) override { return node_->Report(); }
  Result<client::SandboxInfo> Create(const SandboxSpec& spec) override { return node_->Create(spec); }
  Result<ExecResult> Exec(const std::string& id, const ExecRequest& req, const OutputCallback& on_output,
                          client::ExecCancel* cancel) override {
    return node_->Exec(id, req, on_output, cancel);
  }
  Status WriteFile(const std::string& id, const std::string&, std::string_view, uint32_t, bool) override {
    return node_->Touch(id);
  }
  Result<std::string> ReadFile(const std::string& id, const std::string&, uint64_t) override {
    PADDOCK_RETURN_IF_ERROR(node_->Touch(id));
    return std::string();
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& id, const std::string&) override {
    PADDOCK_RETURN_IF_ERROR(node_->Touch(id));
    return std::vector<FileInfo>{};
  }
  Result<FileInfo> Stat(const std::string& id, const std::string& path) override {
    PADDOCK_RETURN_IF_ERROR(node_->Touch(id));
    return Error(Code::kNotFound, "{}: no such file (a simulated node holds no files)", path);
  }
  Result<Usage> GetUsage(const std::string& id) override {
    PADDOCK_RETURN_IF_ERROR(node_->Touch(id));
    return Usage{};
  }
  Status Destroy(const std::string& id) override { return node_->Destroy(id); }
  Result<std::vector<client::SandboxInfo>> Fork(const std::string& id, uint32_t count) override {
    return node_->Fork(id, count);
  }
  Result<client::SnapshotInfo> Snapshot(const std::string&, const std::string&) override {
    return Error(Code::kUnimplemented, "a simulated node takes no snapshots");
  }

 private:
  SimNode* node_;
};

// "s<N>" → N; 0 when it is not one of ours.
uint64_t ParseId(const std::string& id) {
  if (id.size() < 2 || id[0] != 's') return 0;
  uint64_t n = 0;
  for (size_t i = 1; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9') return 0;
    n = n * 10 + static_cast<uint64_t>(id[i] - '0');
  }
  return n;
}

}  // namespace

// ---- SimFleet ---------------------------------------------------------------

SimFleet::SimFleet(SimFleetOptions options) : options_(options) {}
SimFleet::~SimFleet() = default;

SimNode& SimFleet::Add(const std::string& address, SimNodeOptions options) {
  std::lock_guard l(mu_);
  auto& n = nodes_[address];
  if (!n) order_.push_back(address);
  n = std::make_unique<SimNode>(*this, address, std::move(options));
  return *n;
}

SimNode* SimFleet::Find(const std::string& address) {
  std::lock_guard l(mu_);
  auto it = nodes_.find(address);
  return it == nodes_.end() ? nullptr : it->second.get();
}

std::string SimFleet::Spec() const {
  std::lock_guard l(mu_);
  std::string s;
  for (const auto& a : order_) s += (s.empty() ? "" : ",") + a;
  return s;
}

Result<std::shared_ptr<NodeConnection>> SimFleet::Connect(const std::string& address, const FleetOptions&) {
  SimNode* n = Find(address);
  if (!n) return Error(Code::kUnavailable, "no simulated node at {}", address);
  if (n->dead()) return Error(Code::kUnavailable, "simulated node {}: connection refused", address);
  return std::shared_ptr<NodeConnection>(std::make_shared<SimConnection>(n));
}

void SimFleet::CountExec(const std::string& key, bool answered) {
  std::lock_guard l(mu_);
  auto& c = counts_[key];
  if (answered) ++c.answered;
  else ++c.started;
}

void SimFleet::TrackFirstExecs(const std::vector<std::string>& episodes, const std::vector<std::string>& elsewhere_than) {
  std::lock_guard l(mu_);
  first_.clear();
  first_not_on_ = elsewhere_than;
  for (const auto& e : episodes) first_.emplace(e, FirstExec{});
  tracking_ = !first_.empty();
}

std::map<std::string, SimFleet::FirstExec> SimFleet::FirstExecs() const {
  std::lock_guard l(mu_);
  std::map<std::string, FirstExec> out;
  for (const auto& [e, f] : first_)
    if (f.at != Clock::time_point{}) out.emplace(e, f);
  return out;
}

std::vector<SimFleet::ExecEvent> SimFleet::Events() const {
  std::lock_guard l(mu_);
  return events_;
}

void SimFleet::NoteAnswered(const std::string& episode, const std::string& command, const std::string& node) {
  const auto now = Clock::now();
  std::lock_guard l(mu_);
  if (options_.record_execs) events_.push_back({episode, command, node, now});
  if (!tracking_) return;
  for (const auto& n : first_not_on_)
    if (n == node) return;
  auto it = first_.find(episode);
  if (it != first_.end() && it->second.at == Clock::time_point{}) it->second = FirstExec{node, command, now};
}

std::map<std::string, SimFleet::ExecCount> SimFleet::ExecCounts() const {
  std::lock_guard l(mu_);
  return std::map<std::string, ExecCount>(counts_.begin(), counts_.end());
}

// ---- SimNode ----------------------------------------------------------------

SimNode::SimNode(SimFleet& fleet, std::string address, SimNodeOptions options)
    : fleet_(fleet), address_(std::move(address)), options_(std::move(options)),
      max_sandboxes_(options_.max_sandboxes) {}

std::vector<std::string> SimNode::Episodes() const {
  std::lock_guard l(mu_);
  std::vector<std::string> out;
  for (const auto& [_, e] : sandboxes_)
    if (!e.empty()) out.push_back(e);
  return out;
}

void SimNode::SetCapacity(uint32_t max_sandboxes) {
  std::lock_guard l(mu_);
  max_sandboxes_ = max_sandboxes;
}

void SimNode::Kill() {
  std::lock_guard l(mu_);
  dead_ = true;
  ++incarnation_;
  sandboxes_.clear();
}

void SimNode::Revive() {
  std::lock_guard l(mu_);
  dead_ = false;
  partitioned_ = false;
  last_report_ = {};
}

void SimNode::Partition() {
  std::lock_guard l(mu_);
  partitioned_ = true;
}

void SimNode::Heal() {
  std::lock_guard l(mu_);
  partitioned_ = false;
}

bool SimNode::dead() const {
  std::lock_guard l(mu_);
  return dead_;
}

uint32_t SimNode::live() const {
  std::lock_guard l(mu_);
  if (last_report_ != Clock::time_point{} && Clock::now() - last_report_ > options_.front_lease) return 0;
  return static_cast<uint32_t>(sandboxes_.size());
}

uint64_t SimNode::fenced() const {
  std::lock_guard l(mu_);
  return fenced_;
}

Status SimNode::Unreachable() const {
  return Error(Code::kUnavailable, "simulated node {}: {}", address_, dead_ ? "connection refused" : "no route (partitioned)");
}

Status SimNode::CheckLease() {
  if (last_report_ != Clock::time_point{} && Clock::now() - last_report_ > options_.front_lease) {
    fenced_ += sandboxes_.size();
    sandboxes_.clear();
    return Error(Code::kFailedPrecondition, "this front's lease on node {} lapsed (no heartbeat for {} ms); its "
                 "sandboxes were destroyed", address_, options_.front_lease.count());
  }
  if (last_report_ == Clock::time_point{})
    return Error(Code::kFailedPrecondition, "this front holds no lease on node {} yet", address_);
  return Status::Ok();
}

Status SimNode::Wait(const SimLatency& lat, client::ExecCancel* cancel, uint64_t* incarnation) {
  const auto until = Clock::now() + Draw(lat);
  uint64_t inc;
  {
    std::lock_guard l(mu_);
    if (dead_ || partitioned_) return Unreachable();
    inc = incarnation_;
  }
  for (;;) {
    auto now = Clock::now();
    if (now >= until) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(until - now, std::chrono::milliseconds(20)));
    if (cancel && cancel->cancelled()) return Error(Code::kCancelled, "cancelled");
    std::lock_guard l(mu_);
    if (dead_ || partitioned_ || incarnation_ != inc) return Unreachable();
  }
  if (incarnation) *incarnation = inc;
  return Status::Ok();
}

Result<client::DaemonStats> SimNode::Report() {
  PADDOCK_RETURN_IF_ERROR(Wait(options_.report));
  std::lock_guard l(mu_);
  if (dead_ || partitioned_) return Unreachable();
  auto now = Clock::now();
  if (last_report_ != Clock::time_point{} && now - last_report_ > options_.front_lease && !sandboxes_.empty()) {
    fenced_ += sandboxes_.size();  // the lease lapsed before this heartbeat came: fenced first
    sandboxes_.clear();
  }
  last_report_ = now;
  client::DaemonStats s;
  s.live_sandboxes = static_cast<uint32_t>(sandboxes_.size());
  s.max_sandboxes = max_sandboxes_;
  s.api_version = kApiVersion;
  s.substrates = options_.substrates;
  s.mem_available_bytes = options_.mem_available_bytes;
  s.cpus = options_.cpus;
  s.version = "simulated";
  s.images = options_.images;
  s.front_lease_ms = static_cast<uint32_t>(options_.front_lease.count());
  return s;
}

Result<client::SandboxInfo> SimNode::Create(const SandboxSpec& spec) {
  PADDOCK_RETURN_IF_ERROR(Wait(options_.create));
  std::lock_guard l(mu_);
  if (dead_ || partitioned_) return Unreachable();
  PADDOCK_RETURN_IF_ERROR(CheckLease());
  if (sandboxes_.size() >= max_sandboxes_)
    return Error(Code::kResourceExhausted, "simulated node {} is full ({} sandboxes)", address_, max_sandboxes_);
  std::string episode;
  if (fleet_.options_.record_execs || fleet_.options_.label_sandboxes)
    if (auto it = spec.labels.find("episode"); it != spec.labels.end()) episode = it->second;
  fleet_.creates_.fetch_add(1, std::memory_order_relaxed);
  client::SandboxInfo info = AddSandboxLocked(std::move(episode));
  info.substrate = spec.substrate;
  info.image = spec.image;
  return info;
}

client::SandboxInfo SimNode::AddSandboxLocked(std::string episode) {
  uint64_t n = next_id_++;
  sandboxes_.emplace(n, std::move(episode));
  client::SandboxInfo info;
  info.id = "s" + std::to_string(n);
  info.state = "running";
  return info;
}

Result<ExecResult> SimNode::Exec(const std::string& id, const ExecRequest& req, const OutputCallback& on_output,
                                 client::ExecCancel* cancel) {
  std::string key, episode, command;
  {
    std::lock_guard l(mu_);
    if (dead_ || partitioned_) return Unreachable();
    PADDOCK_RETURN_IF_ERROR(CheckLease());
    auto it = sandboxes_.find(ParseId(id));
    if (it == sandboxes_.end()) return Error(Code::kNotFound, "sandbox {} not found", id);
    episode = it->second;
    if (fleet_.options_.record_execs || fleet_.tracking_.load(std::memory_order_relaxed))
      for (size_t i = 0; i < req.argv.size(); ++i) command += (i ? " " : "") + req.argv[i];
    if (fleet_.options_.record_execs) key = episode + "\n" + command;
  }
  if (!key.empty()) fleet_.CountExec(key, false);
  fleet_.execs_.fetch_add(1, std::memory_order_relaxed);
  PADDOCK_RETURN_IF_ERROR(Wait(options_.exec, cancel));
  {
    std::lock_guard l(mu_);
    if (dead_ || partitioned_) return Unreachable();
    if (!sandboxes_.count(ParseId(id))) return Error(Code::kNotFound, "sandbox {} not found (destroyed while the call ran)", id);
  }
  ExecResult r;
  r.exit_code = 0;
  if (on_output) {
    std::string out = options_.exec_stdout + (req.argv.empty() ? "" : req.argv.back()) + "\n";
    on_output(1, out);
  }
  if (!key.empty()) fleet_.CountExec(key, true);
  if (!episode.empty() && (fleet_.options_.record_execs || fleet_.tracking_.load(std::memory_order_relaxed)))
    fleet_.NoteAnswered(episode, command, address_);
  return r;
}

void SimNode::SetForkSurplus(int surplus) {
  std::lock_guard l(mu_);
  fork_surplus_ = surplus;
}

Result<std::vector<client::SandboxInfo>> SimNode::Fork(const std::string& id, uint32_t count) {
  PADDOCK_RETURN_IF_ERROR(Wait(options_.create));
  std::lock_guard l(mu_);
  if (dead_ || partitioned_) return Unreachable();
  PADDOCK_RETURN_IF_ERROR(CheckLease());
  auto parent = sandboxes_.find(ParseId(id));
  if (parent == sandboxes_.end()) return Error(Code::kNotFound, "sandbox {} not found", id);
  const std::string episode = parent->second;
  const int64_t made = std::max<int64_t>(0, static_cast<int64_t>(count) + fork_surplus_);
  if (sandboxes_.size() + static_cast<size_t>(made) > max_sandboxes_)
    return Error(Code::kResourceExhausted, "simulated node {} is full ({} sandboxes)", address_, max_sandboxes_);
  std::vector<client::SandboxInfo> copies;
  for (int64_t i = 0; i < made; ++i) copies.push_back(AddSandboxLocked(episode));
  return copies;
}

Status SimNode::Destroy(const std::string& id) {
  PADDOCK_RETURN_IF_ERROR(Wait(options_.call));
  std::lock_guard l(mu_);
  if (dead_ || partitioned_) return Unreachable();
  PADDOCK_RETURN_IF_ERROR(CheckLease());
  if (!sandboxes_.erase(ParseId(id))) return Error(Code::kNotFound, "sandbox {} not found", id);
  return Status::Ok();
}

Status SimNode::Touch(const std::string& id) {
  PADDOCK_RETURN_IF_ERROR(Wait(options_.call));
  std::lock_guard l(mu_);
  if (dead_ || partitioned_) return Unreachable();
  PADDOCK_RETURN_IF_ERROR(CheckLease());
  if (!sandboxes_.count(ParseId(id))) return Error(Code::kNotFound, "sandbox {} not found", id);
  return Status::Ok();
}

}  // namespace paddock::fleet
