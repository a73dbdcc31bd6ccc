#include "rollout/service/front_leases.h"

#include <charconv>

#include <spdlog/spdlog.h>

namespace paddock::service {

namespace {

std::string MetadataValue(const grpc::ServerContext& ctx, const char* key) {
  const auto& md = ctx.client_metadata();
  auto it = md.find(key);
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool ValidFrontId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

}  // namespace

FrontLeases::FrontLeases(SandboxManager& manager, std::chrono::milliseconds lease)
    : manager_(manager), lease_(lease) {
  sweeper_ = std::thread([this] { SweepLoop(); });
}

FrontLeases::~FrontLeases() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  sweeper_.join();
}

Result<FrontCall> FrontLeases::Check(const grpc::ServerContext& ctx, bool renew) {
  std::string front = MetadataValue(ctx, kFrontIdMetadata);
  std::string epoch_text = MetadataValue(ctx, kFrontEpochMetadata);
  if (front.empty() && epoch_text.empty()) return FrontCall{};
  int64_t epoch = 0;
  auto [end, ec] = std::from_chars(epoch_text.data(), epoch_text.data() + epoch_text.size(), epoch);
  if (!ValidFrontId(front) || ec != std::errc() || end != epoch_text.data() + epoch_text.size() || epoch <= 0)
    return Error(Code::kInvalidArgument,
                 "malformed front lease: '{}: {}' and '{}: {}' must be an id of letters, digits, '-', '_' or '.' "
                 "and a positive epoch",
                 kFrontIdMetadata, front.substr(0, 80), kFrontEpochMetadata, epoch_text.substr(0, 40));
  return renew ? Renew(front, epoch) : Verify(front, epoch);
}

Result<FrontCall> FrontLeases::Verify(const std::string& front, int64_t epoch) const {
  std::lock_guard l(mu_);
  auto it = leases_.find(front);
  if (it == leases_.end() || epoch > it->second.epoch)
    return Error(Code::kFailedPrecondition,
                 "front {} epoch {} holds no lease on this node yet; its heartbeat (Stats) takes one", front, epoch);
  const Lease& lease = it->second;
  if (epoch < lease.epoch)
    return Error(Code::kFailedPrecondition,
                 "front {} epoch {} is superseded on this node by epoch {} (the front restarted); calls of the "
                 "old incarnation are refused",
                 front, epoch, lease.epoch);
  if (lease.expired || std::chrono::steady_clock::now() - lease.renewed > lease_)
    return Error(Code::kFailedPrecondition,
                 "the lease of front {} on this node ran out ({} ms without a heartbeat); its sandboxes here were "
                 "destroyed",
                 front, lease_.count());
  return FrontCall{front, epoch};
}

Result<FrontCall> FrontLeases::Renew(const std::string& front, int64_t epoch) {
  bool superseded = false;
  {
    std::lock_guard l(mu_);
    auto now = std::chrono::steady_clock::now();
    // Bounded: a client naming ever new fronts cannot grow this table.
    constexpr size_t kMaxFronts = 1024;
    if (!leases_.count(front) && leases_.size() >= kMaxFronts) {
      for (auto it = leases_.begin(); it != leases_.end();)
        it = it->second.expired ? leases_.erase(it) : std::next(it);
      if (leases_.size() >= kMaxFronts)
        return Error(Code::kResourceExhausted, "this node holds leases of {} fronts already; front {} is refused",
                     kMaxFronts, front);
    }
    auto [it, fresh] = leases_.try_emplace(front);
    Lease& lease = it->second;
    if (!fresh && epoch < lease.epoch)
      return Error(Code::kFailedPrecondition,
                   "front {} epoch {} is superseded on this node by epoch {} (the front restarted); calls of the "
                   "old incarnation are refused",
                   front, epoch, lease.epoch);
    superseded = !fresh && epoch > lease.epoch;
    lease.epoch = epoch;
    lease.renewed = now;
    lease.expired = false;
  }
  if (superseded) DestroyOf(front, epoch, /*all_older=*/true, NowUnixMs());
  return FrontCall{front, epoch};
}

uint64_t FrontLeases::fenced() const {
  std::lock_guard l(mu_);
  return fenced_;
}

void FrontLeases::DestroyOf(const std::string& front, int64_t epoch, bool all_older, int64_t created_before_ms) {
  uint64_t n = 0;
  for (const SandboxInfo& info : manager_.List()) {
    if (info.created_unix_ms > created_before_ms) continue;  // made under a lease renewed since
    auto f = info.spec.labels.find(kFrontLabel);
    if (f == info.spec.labels.end() || f->second != front) continue;
    auto e = info.spec.labels.find(kEpochLabel);
    int64_t sb_epoch = 0;
    if (e != info.spec.labels.end()) std::from_chars(e->second.data(), e->second.data() + e->second.size(), sb_epoch);
    if (all_older ? sb_epoch >= epoch : sb_epoch != epoch) continue;
    if (manager_.Destroy(info.id).ok()) ++n;
  }
  if (n) {
    spdlog::warn("fenced {} sandbox(es) of front {} ({})", n, front,
                 all_older ? fmt::format("superseded by epoch {}", epoch)
                           : fmt::format("epoch {}: lease of {} ms ran out", epoch, lease_.count()));
    std::lock_guard l(mu_);
    fenced_ += n;
  }
}

void FrontLeases::SweepLoop() {
  std::unique_lock l(mu_);
  while (!stopping_) {
    cv_.wait_for(l, std::max(lease_ / 8, std::chrono::milliseconds(20)));
    if (stopping_) break;
    auto now = std::chrono::steady_clock::now();
    std::vector<std::pair<std::string, int64_t>> expired;
    const int64_t cutoff = NowUnixMs();
    for (auto& [front, lease] : leases_)
      if (!lease.expired && now - lease.renewed > lease_) {
        lease.expired = true;
        expired.emplace_back(front, lease.epoch);
      }
    if (expired.empty()) continue;
    l.unlock();
    for (const auto& [front, epoch] : expired) DestroyOf(front, epoch, /*all_older=*/false, cutoff);
    l.lock();
  }
}

}  // namespace paddock::service
