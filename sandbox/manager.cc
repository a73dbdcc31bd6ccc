#include "sandbox/manager.h"

#include <sys/random.h>

#include <cstring>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "sandbox/limits_json.h"

namespace paddock {

namespace {
int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
// Every sandbox the manager hands out: the substrate's, with its execs timed
// for /metrics (one clock read on each side of a call that costs milliseconds).
class TimedSandbox final : public Sandbox {
 public:
  TimedSandbox(std::unique_ptr<Sandbox> inner, LatencyHistogram* execs) : inner_(std::move(inner)), execs_(execs) {}
  const std::string& id() const override { return inner_->id(); }
  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = inner_->Exec(req, on_output);
    execs_->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return r;
  }
  Status WriteFile(const std::string& path, std::string_view content, uint32_t mode, bool make_parents) override {
    return inner_->WriteFile(path, content, mode, make_parents);
  }
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override {
    return inner_->ReadFile(path, max_bytes);
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override { return inner_->ListDir(path); }
  Result<FileInfo> Stat(const std::string& path) override { return inner_->Stat(path); }
  Result<Usage> GetUsage() override { return inner_->GetUsage(); }
  bool Alive() const override { return inner_->Alive(); }
  std::string placement() const override { return inner_->placement(); }
  void WatchGone(std::function<void()> on_gone) override { inner_->WatchGone(std::move(on_gone)); }
  Status Destroy() override { return inner_->Destroy(); }
  Result<SnapshotResult> Snapshot(const std::string& name) override { return inner_->Snapshot(name); }
  Result<PauseResult> Pause(const std::string& record) override { return inner_->Pause(record); }
  Status Resume() override { return inner_->Resume(); }
  bool Paused() const override { return inner_->Paused(); }
  Result<std::vector<std::unique_ptr<Sandbox>>> Fork(const std::vector<std::string>& ids) override {
    return inner_->Fork(ids);
  }
  Status Release() override { return inner_->Release(); }

 private:
  std::unique_ptr<Sandbox> inner_;
  LatencyHistogram* execs_;
};

// What a paused sandbox's substrate keeps for the next daemon: its
// SandboxInfo (the spec, when it was made and when it expires).
std::string EncodeRecord(const SandboxInfo& info) {
  const SandboxSpec& s = info.spec;
  nlohmann::json j = {
      {"id", info.id},
      {"substrate", s.substrate},
      {"image", s.image},
      {"limits", s.limits},
      {"env", s.env},
      {"workdir", s.workdir},
      {"ttl_seconds", s.ttl_seconds},
      {"labels", s.labels},
      {"host_dir_image_ok", s.host_dir_image_ok},
      {"local_client", s.local_client},
      {"network_allow", s.network_allow},
      {"created_unix_ms", info.created_unix_ms},
      {"expires_unix_ms", info.expires_unix_ms},
  };
  return j.dump();
}

Result<SandboxInfo> DecodeRecord(const std::string& text) {
  try {
    auto j = nlohmann::json::parse(text);
    SandboxInfo info;
    info.id = j.at("id").get<std::string>();
    SandboxSpec& s = info.spec;
    s.substrate = j.at("substrate").get<std::string>();
    s.image = j.at("image").get<std::string>();
    s.limits = j.at("limits").get<Limits>();
    s.env = j.at("env").get<std::map<std::string, std::string>>();
    s.workdir = j.at("workdir").get<std::string>();
    s.ttl_seconds = j.at("ttl_seconds").get<uint32_t>();
    s.labels = j.at("labels").get<std::map<std::string, std::string>>();
    s.host_dir_image_ok = j.at("host_dir_image_ok").get<bool>();
    s.local_client = j.at("local_client").get<bool>();
    s.network_allow = j.at("network_allow").get<std::vector<std::string>>();
    info.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    info.expires_unix_ms = j.at("expires_unix_ms").get<int64_t>();
    return info;
  } catch (const std::exception& e) {
    return Error(Code::kInternal, "a paused sandbox's record is unreadable: {}", e.what());
  }
}

Status UnknownSandbox(const std::string& id) {
  return Error(Code::kNotFound, "sandbox '{}' not found; `paddock sandbox ls` lists sandboxes", id);
}

}  // namespace

std::string NewSandboxId() {
  unsigned char raw[6];
  size_t got = 0;
  while (got < sizeof raw) {
    ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static const char* kHex = "0123456789abcdef";
  std::string id;
  for (unsigned char c : raw) {
    id.push_back(kHex[c >> 4]);
    id.push_back(kHex[c & 15]);
  }
  return id;
}

Status ValidateSandboxPath(const std::string& path) {
  if (path.empty()) return Error(Code::kInvalidArgument, "path is empty");
  if (path.find('\0') != std::string::npos)
    return Error(Code::kInvalidArgument, "path contains a NUL byte");
  if (path.size() > 4096) return Error(Code::kInvalidArgument, "path is longer than 4096 bytes");
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (path.compare(start, end - start, "..") == 0)
      return Error(Code::kInvalidArgument,
                   "path '{}' contains '..'; use a path without parent references", path);
    start = end + 1;
  }
  return Status::Ok();
}

SandboxManager::SandboxManager(ManagerOptions options) : options_(options) {
  expiry_thread_ = std::thread([this] { ExpiryLoop(); });
}

SandboxManager::~SandboxManager() { Shutdown(); }

void SandboxManager::RegisterSubstrate(std::unique_ptr<Substrate> substrate, bool usable) {
  std::string name = substrate->name();
  substrates_[name] = std::move(substrate);
  if (usable) usable_.push_back(name);
}

std::vector<std::string> SandboxManager::UsableSubstrateNames() const { return usable_; }

std::vector<std::string> SandboxManager::SubstrateNames() const {
  std::vector<std::string> names;
  for (const auto& [n, _] : substrates_) names.push_back(n);
  return names;
}

Result<SandboxInfo> SandboxManager::Create(const SandboxSpec& spec_in) {
  SandboxSpec spec = spec_in;
  auto it = substrates_.find(spec.substrate);
  if (it == substrates_.end()) {
    std::string known;
    for (const auto& [n, _] : substrates_) known += (known.empty() ? "" : ", ") + n;
    return Error(Code::kInvalidArgument, "unknown substrate '{}'; available: {}", spec.substrate,
                 known);
  }
  if (draining_.load())
    return Error(Code::kUnavailable, "this paddockd is draining (it was told to stop): it takes no new sandboxes");
  if (spec.image.empty())
    return Error(Code::kInvalidArgument, "no image given; pass --image with an image name (`paddock image ls`) or a root filesystem directory");
  if (spec.ttl_seconds == 0) spec.ttl_seconds = options_.default_ttl_seconds;
  if (spec.ttl_seconds > options_.max_ttl_seconds)
    return Error(Code::kInvalidArgument, "ttl {} s exceeds the daemon's maximum of {} s",
                 spec.ttl_seconds, options_.max_ttl_seconds);
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Error(Code::kUnavailable, "daemon is shutting down");
    if (sandboxes_.size() + reserved_ >= options_.max_sandboxes)
      return Error(Code::kResourceExhausted,
                   "sandbox cap reached ({} live); destroy sandboxes or raise paddockd "
                   "--max-sandboxes",
                   options_.max_sandboxes);
    ++reserved_;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto created = it->second->Create(NewSandboxId(), spec);
  std::lock_guard lock(mu_);
  --reserved_;
  if (!created.ok()) {
    create_failures_.fetch_add(1);
    return created.status();
  }
  creates_total_.fetch_add(1);
  create_latency_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  std::string id = created.value()->id();
  Entry e;
  e.info.id = id;
  e.info.spec = spec;
  e.info.created_unix_ms = NowMs();
  e.info.expires_unix_ms = e.info.created_unix_ms + int64_t{spec.ttl_seconds} * 1000;
  e.sandbox = std::make_shared<TimedSandbox>(std::move(created).value(), &exec_latency_);
  return AddLocked(std::move(e));
}

SandboxInfo SandboxManager::AddLocked(Entry e) {
  SandboxInfo info = Snapshot(e);
  // The expiry loop scans every sandbox when it wakes: woken only when this
  // one expires before the loop's next wake-up (with 100,000 sandboxes a scan
  // per create made creates quadratic; fleet_sim_bench).
  if (e.info.expires_unix_ms < next_expiry_ms_) {
    next_expiry_ms_ = e.info.expires_unix_ms;
    expiry_cv_.notify_all();
  }
  std::string id = e.info.id;
  sandboxes_.emplace(std::move(id), std::move(e));
  return info;
}

SandboxInfo SandboxManager::Snapshot(const Entry& e) const {
  SandboxInfo info = e.info;
  info.state = e.sandbox->Paused() ? "paused" : e.sandbox->Alive() ? "running" : "failed";
  return info;
}

Result<PauseResult> SandboxManager::Pause(const std::string& id) {
  std::shared_ptr<Sandbox> sb;
  SandboxInfo info;
  {
    std::lock_guard lock(mu_);
    auto it = sandboxes_.find(id);
    if (it == sandboxes_.end())
      return UnknownSandbox(id);
    sb = it->second.sandbox;
    info = it->second.info;
  }
  return sb->Pause(EncodeRecord(info));
}

Status SandboxManager::Resume(const std::string& id) {
  PADDOCK_ASSIGN_OR_RETURN(std::shared_ptr<Sandbox> sb, Get(id));
  return sb->Resume();
}

Result<std::vector<SandboxInfo>> SandboxManager::Fork(const std::string& id, uint32_t count) {
  if (count == 0 || count > kMaxForks)
    return Error(Code::kInvalidArgument, "a fork makes 1 to {} copies, not {}", kMaxForks, count);
  if (draining_.load())
    return Error(Code::kUnavailable, "this paddockd is draining (it was told to stop): it takes no new sandboxes");
  std::shared_ptr<Sandbox> parent;
  SandboxSpec spec;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Error(Code::kUnavailable, "daemon is shutting down");
    auto it = sandboxes_.find(id);
    if (it == sandboxes_.end())
      return UnknownSandbox(id);
    if (sandboxes_.size() + reserved_ + count > options_.max_sandboxes)
      return Error(Code::kResourceExhausted,
                   "a fork into {} would pass the sandbox cap ({} live, cap {}); destroy sandboxes or raise "
                   "paddockd --max-sandboxes",
                   count, sandboxes_.size(), options_.max_sandboxes);
    reserved_ += count;
    parent = it->second.sandbox;
    spec = it->second.info.spec;
  }
  std::vector<std::string> ids;
  for (uint32_t i = 0; i < count; ++i) ids.push_back(NewSandboxId());
  const auto t0 = std::chrono::steady_clock::now();
  auto forks = parent->Fork(ids);
  std::lock_guard lock(mu_);
  reserved_ -= count;
  if (!forks.ok()) {
    create_failures_.fetch_add(1);
    return forks.status();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<SandboxInfo> out;
  for (auto& child : *forks) {
    Entry e;
    e.info.id = child->id();
    e.info.spec = spec;
    e.info.spec.labels["paddock.forked-from"] = id;
    e.info.created_unix_ms = NowMs();
    e.info.expires_unix_ms = e.info.created_unix_ms + int64_t{spec.ttl_seconds} * 1000;
    e.sandbox = std::make_shared<TimedSandbox>(std::move(child), &exec_latency_);
    creates_total_.fetch_add(1);
    create_latency_.Observe(seconds);
    out.push_back(AddLocked(std::move(e)));
  }
  return out;
}

size_t SandboxManager::RecoverPaused() {
  size_t n = 0;
  for (auto& [name, substrate] : substrates_) {
    for (auto& r : substrate->Recover()) {
      auto info = DecodeRecord(r.record);
      if (!info.ok() || info->id != r.sandbox->id()) {
        spdlog::warn("paused sandbox {}: {}; destroying it", r.sandbox->id(),
                     info.ok() ? "its record names another sandbox" : info.status().ToString());
        Status ignored = r.sandbox->Destroy();
        (void)ignored;
        continue;
      }
      std::lock_guard lock(mu_);
      Entry e;
      e.info = std::move(info).value();
      e.sandbox = std::make_shared<TimedSandbox>(std::move(r.sandbox), &exec_latency_);
      AddLocked(std::move(e));
      ++n;
    }
  }
  if (n) spdlog::info("recovered {} paused sandboxes", n);
  return n;
}

Result<uint64_t> SandboxManager::RemoveMemorySnapshot(const std::string& image) {
  if (image.rfind(kMemorySnapshotPrefix, 0) != 0)
    return Error(Code::kInvalidArgument, "'{}' is not a microVM memory snapshot ({}NAME)", image.substr(0, 200),
                 kMemorySnapshotPrefix);
  const std::string name = image.substr(std::strlen(kMemorySnapshotPrefix));
  for (auto& [substrate_name, substrate] : substrates_) {
    auto freed = substrate->RemoveMemorySnapshot(name);
    if (freed.ok() || freed.status().code() != Code::kNotFound) return freed;
  }
  return Error(Code::kNotFound, "no microVM memory snapshot named '{}' on this daemon", name);
}

std::vector<std::pair<std::string, uint64_t>> SandboxManager::MemorySnapshots() {
  std::vector<std::pair<std::string, uint64_t>> out;
  for (auto& [substrate_name, substrate] : substrates_)
    for (auto& [name, bytes] : substrate->MemorySnapshots()) out.emplace_back(kMemorySnapshotPrefix + name, bytes);
  return out;
}

Result<std::shared_ptr<Sandbox>> SandboxManager::Get(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = sandboxes_.find(id);
  if (it == sandboxes_.end())
    return UnknownSandbox(id);
  return it->second.sandbox;
}

Result<SandboxInfo> SandboxManager::Info(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = sandboxes_.find(id);
  if (it == sandboxes_.end())
    return UnknownSandbox(id);
  return Snapshot(it->second);
}

Status SandboxManager::Destroy(const std::string& id) {
  std::shared_ptr<Sandbox> sb;
  {
    std::lock_guard lock(mu_);
    auto it = sandboxes_.find(id);
    if (it == sandboxes_.end())
      return UnknownSandbox(id);
    sb = std::move(it->second.sandbox);
    sandboxes_.erase(it);
  }
  return sb->Destroy();
}

std::vector<SandboxInfo> SandboxManager::List() {
  std::lock_guard lock(mu_);
  std::vector<SandboxInfo> out;
  for (const auto& [_, e] : sandboxes_) out.push_back(Snapshot(e));
  return out;
}

uint32_t SandboxManager::live() const {
  std::lock_guard lock(mu_);
  return static_cast<uint32_t>(sandboxes_.size());
}

std::map<std::string, uint32_t> SandboxManager::CountBySubstrate() {
  std::lock_guard lock(mu_);
  std::map<std::string, uint32_t> out;
  for (const auto& [_, e] : sandboxes_) out[e.info.spec.substrate]++;
  return out;
}

void SandboxManager::ExpiryLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    int64_t now = NowMs();
    int64_t next = now + 60'000;
    std::vector<std::string> expired;
    for (const auto& [id, e] : sandboxes_) {
      if (e.info.expires_unix_ms <= now) expired.push_back(id);
      else next = std::min(next, e.info.expires_unix_ms);
    }
    if (!expired.empty()) {
      lock.unlock();
      for (const auto& id : expired) {
        spdlog::info("sandbox {} reached its time to live; destroying", id);
        Status st = Destroy(id);
        if (!st.ok() && st.code() != Code::kNotFound)
          spdlog::warn("destroying expired sandbox {}: {}", id, st.ToString());
      }
      lock.lock();
      continue;
    }
    next_expiry_ms_ = std::max<int64_t>(next, now + 10);
    expiry_cv_.wait_for(lock, std::chrono::milliseconds(next_expiry_ms_ - now));
  }
}

void SandboxManager::Shutdown() {
  std::map<std::string, Entry> victims;
  {
    std::lock_guard lock(mu_);
    if (stopping_ && sandboxes_.empty() && !expiry_thread_.joinable()) return;
    stopping_ = true;
    victims.swap(sandboxes_);
  }
  expiry_cv_.notify_all();
  if (expiry_thread_.joinable()) expiry_thread_.join();
  size_t kept = 0;
  for (auto& [id, e] : victims) {
    // A paused sandbox's saved state stays for the next daemon (RecoverPaused).
    if (e.sandbox->Paused()) ++kept;
    Status st = e.sandbox->Release();
    if (!st.ok()) spdlog::warn("releasing sandbox {} at shutdown: {}", id, st.ToString());
  }
  if (!victims.empty())
    spdlog::info("destroyed {} sandboxes at shutdown; kept {} paused ones", victims.size() - kept, kept);
  for (auto& [_, s] : substrates_) s->Shutdown();
}

}  // namespace paddock
