#include "rollout/fleet/node.h"

#include <utility>

#include <spdlog/spdlog.h>

#include "paddock/client.h"
#include "proto/api_version.h"

namespace paddock::fleet {

namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void GoneSignal::Watch(std::function<void()> fn) {
  std::lock_guard l(mu_);
  fn_ = std::move(fn);
  if (fired_ && fn_) std::exchange(fn_, nullptr)();
}

void GoneSignal::Fire() {
  std::lock_guard l(mu_);
  if (fired_) return;
  fired_ = true;
  if (fn_) std::exchange(fn_, nullptr)();
}

bool GoneSignal::fired() const {
  std::lock_guard l(mu_);
  return fired_;
}

Node::Node(std::string address, const FleetOptions& options, std::function<void()> on_change)
    : address_(std::move(address)), options_(options), on_change_(std::move(on_change)) {
  tokens_ = std::max(1.0, options_.creates_per_second);
  tokens_at_ = std::chrono::steady_clock::now();
  thread_ = std::thread([this] { HeartbeatLoop(); });
}

Node::~Node() { Stop(); }

void Node::Stop() {
  {
    std::lock_guard l(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  verdict_cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

std::chrono::milliseconds Node::LostAfter() const { return lease_ + options_.heartbeat + lease_ / 4; }

Result<std::shared_ptr<NodeConnection>> Node::ClientFor(uint64_t generation) const {
  std::lock_guard l(mu_);
  if (generation != generation_ || !client_)
    return Error(Code::kUnavailable,
                 "node {} was lost (no heartbeat for {} ms); the sandboxes this front had there are gone", address_,
                 LostAfter().count());
  return client_;
}

uint64_t Node::generation() const {
  std::lock_guard l(mu_);
  return generation_;
}

bool Node::Usable(uint64_t generation) const {
  std::lock_guard l(mu_);
  return generation == generation_ && state_ != "lost";
}

bool Node::ready() const {
  std::lock_guard l(mu_);
  return state_ == "ready";
}

NodeView Node::View(std::chrono::steady_clock::time_point now, const std::string& image,
                    const std::string& substrate) const {
  std::lock_guard l(mu_);
  NodeView v;
  v.address = address_;
  v.ready = state_ == "ready";
  if (substrates_.count(substrate)) v.substrates.insert(substrate);
  v.live = live_;
  v.max = max_;
  v.pending = pending_;
  v.mem_available_bytes = mem_available_;
  v.has_image = images_.count(image) > 0;
  const double rate = options_.creates_per_second;
  double tokens = std::min(std::max(1.0, rate), tokens_ + rate * std::chrono::duration<double>(now - tokens_at_).count());
  v.rate_limited = rate > 0 && tokens < 1.0;
  return v;
}

bool Node::BeginCreate(std::chrono::steady_clock::time_point now, uint64_t* generation) {
  std::lock_guard l(mu_);
  if (state_ != "ready") return false;
  const double rate = options_.creates_per_second;
  if (rate > 0) {
    tokens_ = std::min(std::max(1.0, rate), tokens_ + rate * std::chrono::duration<double>(now - tokens_at_).count());
    tokens_at_ = now;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
  }
  ++pending_;
  *generation = generation_;
  return true;
}

void Node::EndCreate(bool placed) {
  std::lock_guard l(mu_);
  --pending_;
  if (placed) {
    ++placed_;
    ++placed_total_;
    ++live_;  // until the next heartbeat says
  }
}

void Node::Released() {
  std::lock_guard l(mu_);
  if (placed_) --placed_;
  if (live_) --live_;
}

void Node::Adopted(size_t n) {
  std::lock_guard l(mu_);
  placed_ += static_cast<uint32_t>(n);
  placed_total_ += n;
  live_ += static_cast<uint32_t>(n);  // until the next heartbeat says
}

void Node::Suspect() {
  {
    std::lock_guard l(mu_);
    suspect_ = true;
  }
  cv_.notify_all();
}

bool Node::AwaitVerdict(uint64_t generation) {
  Suspect();
  std::unique_lock l(mu_);
  const auto asked = std::chrono::steady_clock::now();
  const auto until = asked + LostAfter() + 2 * options_.heartbeat;
  verdict_cv_.wait_until(l, until, [&] { return stopping_ || generation_ != generation || last_ok_ > asked; });
  return generation_ == generation && state_ != "lost";
}

bool Node::HasImage(const std::string& image) const {
  std::lock_guard l(mu_);
  return images_.count(image) > 0;
}

void Node::NoteImage(const std::string& id) {
  std::lock_guard l(mu_);
  images_.insert(id);
}

void Node::ForgetImage(const std::string& id) {
  std::lock_guard l(mu_);
  images_.erase(id);
}

void Node::SetDrained() {
  {
    std::lock_guard l(mu_);
    drained_ = true;
    if (state_ == "ready") state_ = "draining";
  }
  on_change_();
}

NodeStatus Node::Status() const {
  std::lock_guard l(mu_);
  NodeStatus s;
  s.address = address_;
  s.state = state_;
  s.detail = detail_;
  s.substrates.assign(substrates_.begin(), substrates_.end());
  s.live = live_;
  s.max = max_;
  s.placed = placed_;
  s.placed_total = placed_total_;
  s.mem_available_bytes = mem_available_;
  s.cpus = cpus_;
  s.version = version_;
  s.api_version = api_version_;
  s.images = images_held_;
  s.last_heartbeat_unix_ms = last_ok_unix_ms_;
  return s;
}

void Node::Track(client::ExecCancel* c) {
  std::lock_guard l(mu_);
  in_flight_.insert(c);
}

void Node::Untrack(client::ExecCancel* c) {
  std::lock_guard l(mu_);
  in_flight_.erase(c);
}

void Node::Watch(uint64_t generation, const std::shared_ptr<GoneSignal>& s) {
  {
    std::lock_guard l(mu_);
    if (generation == generation_ && state_ != "lost") {
      watched_.insert(s);
      return;
    }
  }
  s->Fire();
}

void Node::Unwatch(const std::shared_ptr<GoneSignal>& s) {
  std::lock_guard l(mu_);
  watched_.erase(s);
}

void Node::HeartbeatLoop() {
  std::unique_lock l(mu_);
  while (!stopping_) {
    l.unlock();
    Beat();
    l.lock();
    cv_.wait_for(l, options_.heartbeat, [&] { return stopping_ || suspect_; });
    suspect_ = false;
  }
}

void Node::Beat() {
  std::shared_ptr<NodeConnection> c;
  {
    std::lock_guard l(mu_);
    c = client_;
  }
  auto now = std::chrono::steady_clock::now();
  Result<client::DaemonStats> stats = Error(Code::kUnavailable, "not connected");
  if (!c) {
    auto made = (options_.transport ? options_.transport : GrpcNodeTransport())->Connect(address_, options_);
    if (made.ok()) {
      c = std::move(*made);
    } else {
      stats = made.status();
    }
  }
  if (c) stats = c->Report(options_.heartbeat);

  bool changed = false;
  std::vector<client::ExecCancel*> cancel;
  std::unordered_set<std::shared_ptr<GoneSignal>> gone;
  {
    std::lock_guard l(mu_);
    const std::string before = state_;
    if (stats.ok()) {
      client_ = c;
      last_ok_ = now;
      last_ok_unix_ms_ = NowUnixMs();
      substrates_ = std::set<std::string>(stats->substrates.begin(), stats->substrates.end());
      images_ = std::set<std::string>(stats->images.begin(), stats->images.end());
      images_.insert(stats->image_ids.begin(), stats->image_ids.end());
      images_held_ = static_cast<uint32_t>(stats->image_ids.empty() ? stats->images.size() : stats->image_ids.size());
      live_ = stats->live_sandboxes;
      max_ = stats->max_sandboxes;
      cpus_ = stats->cpus;
      api_version_ = stats->api_version;
      mem_available_ = stats->mem_available_bytes;
      version_ = stats->version;
      node_draining_ = stats->draining;
      lease_ = std::chrono::milliseconds(stats->front_lease_ms);
      if (api_version_ != kApiVersion) {
        state_ = "refused";
        detail_ = fmt::format("the node speaks API version {} (paddockd {}), this front {}; run the same release "
                              "on both",
                              api_version_, version_.empty() ? "unknown" : version_, kApiVersion);
      } else if (lease_.count() == 0) {
        state_ = "refused";
        detail_ = "the node grants fronts no lease (it is not serving TCP with --front-lease-ms)";
      } else if (drained_ || node_draining_) {
        state_ = "draining";
        detail_ = drained_ ? "drained by `paddock node drain`" : "the node is shutting down";
      } else {
        state_ = "ready";
        detail_.clear();
      }
    } else {
      detail_ = stats.status().message();
      const Code code = stats.status().code();
      if (code == Code::kUnauthenticated || code == Code::kPermissionDenied || code == Code::kInvalidArgument ||
          code == Code::kFailedPrecondition) {
        // A wrong token, or a lease the node refuses: nothing goes there, and
        // whatever was there is fenced by the node's lease.
        if (state_ != "lost" && state_ != "connecting" && state_ != "refused") ++generation_;
        state_ = "refused";
      } else if (state_ == "ready" || state_ == "draining") {
        if (now - last_ok_ > LostAfter()) {
          state_ = "lost";
          ++generation_;
          cancel.assign(in_flight_.begin(), in_flight_.end());
          // Lost only after the node's lease fenced this front's sandboxes:
          // their episodes may be rebuilt elsewhere now, without waiting for
          // their next call (Sandbox::WatchGone).
          gone.swap(watched_);
        }
      } else if (state_ == "refused") {
        state_ = "connecting";
      }
    }
    changed = before != state_;
    if (changed)
      spdlog::log(state_ == "ready" ? spdlog::level::info : spdlog::level::warn, "node {}: {} → {}{}", address_,
                  before, state_, detail_.empty() ? "" : " (" + detail_ + ")");
  }
  verdict_cv_.notify_all();
  for (auto* x : cancel) x->Cancel();
  if (!gone.empty()) spdlog::warn("node {}: {} sandbox(es) of this front gone with it; telling their users", address_, gone.size());
  for (const auto& s : gone) s->Fire();
  if (changed) on_change_();
}

}  // namespace paddock::fleet
