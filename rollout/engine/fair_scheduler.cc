#include "rollout/engine/fair_scheduler.h"

#include <algorithm>
#include <tuple>

namespace paddock::rollout {

namespace {

// Before any slot was released, a held slot is charged this long: the same for
// every flow, so only the count of held slots per weight matters then.
constexpr double kDefaultSlotSeconds = 1.0;
// How fast the mean slot time follows a change of episode lengths.
constexpr double kMeanAlpha = 0.1;

double Seconds(FairScheduler::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

FairScheduler::FairScheduler(size_t capacity, std::function<Clock::time_point()> now)
    : capacity_(capacity), now_(std::move(now)) {}

double FairScheduler::MeanSlotSeconds() const { return released_ ? released_s_ : kDefaultSlotSeconds; }

size_t FairScheduler::Ready(const Flow& f) const {
  size_t conc = std::max<size_t>(1, f.spec.concurrency);
  return f.held.size() >= conc ? 0 : std::min(f.pending, conc - f.held.size());
}

FairScheduler::Charge FairScheduler::ChargeOf(const Flow& f, Clock::time_point now, double mean_s) const {
  Charge c{f.base_s + Seconds(f.used), f.base_slots};
  for (Clock::time_point since : f.held) {
    double elapsed = Seconds(now - since);
    if (elapsed >= mean_s) c.s += elapsed; else c.slots += 1;
  }
  return c;
}

double FairScheduler::Key(const Flow& f, Clock::time_point now, double mean_s) const {
  Charge c = ChargeOf(f, now, mean_s);
  return (c.s + c.slots * mean_s) / std::max<uint32_t>(1, f.spec.weight);
}

void FairScheduler::Add(FlowId id, FlowSpec spec, size_t pending) {
  std::lock_guard lock(mu_);
  auto existing = flows_.find(id);
  if (existing != flows_.end()) {
    existing->second.spec = spec;
    existing->second.pending = pending;
    return;
  }
  Flow f;
  f.spec = spec;
  f.pending = pending;
  // Join at the least virtual time of the active flows of this priority.
  const Clock::time_point now = now_();
  const double mean = MeanSlotSeconds();
  const Flow* least = nullptr;
  double least_key = 0;
  for (const auto& [oid, o] : flows_) {
    if (o.spec.priority != spec.priority || (o.pending == 0 && o.held.empty())) continue;
    double k = Key(o, now, mean);
    if (!least || k < least_key) {
      least = &o;
      least_key = k;
    }
  }
  if (least) {
    Charge c = ChargeOf(*least, now, mean);
    double scale = double(std::max<uint32_t>(1, spec.weight)) / std::max<uint32_t>(1, least->spec.weight);
    f.base_s = c.s * scale;
    f.base_slots = c.slots * scale;
    if (released_) {  // the mean is known: fixed in seconds now
      f.base_s += f.base_slots * mean;
      f.base_slots = 0;
    }
  }
  flows_.emplace(id, std::move(f));
}

void FairScheduler::Remove(FlowId id) {
  std::lock_guard lock(mu_);
  auto it = flows_.find(id);
  if (it == flows_.end()) return;
  running_ -= it->second.held.size();
  flows_.erase(it);
}

void FairScheduler::SetPending(FlowId id, size_t pending) {
  std::lock_guard lock(mu_);
  if (auto it = flows_.find(id); it != flows_.end()) it->second.pending = pending;
}

std::optional<FairScheduler::Slot> FairScheduler::Next() {
  std::lock_guard lock(mu_);
  if (capacity_ && running_ >= capacity_) return std::nullopt;
  const Clock::time_point now = now_();
  const double mean = MeanSlotSeconds();
  FlowId best_id = 0;
  Flow* best = nullptr;
  // (priority, then the least virtual time, then the fewest held slots per
  // weight, then the oldest flow): the first three as a key to minimize.
  std::tuple<int64_t, double, double> best_key{};
  // A key costs a pass over the flow's held slots: with one flow ready there
  // is nothing to compare (100,000 episodes of one rollout made that pass per
  // start quadratic; fleet_sim_bench).
  size_t ready = 0;
  for (auto& [id, f] : flows_)
    if (Ready(f) > 0 && ++ready == 1) {
      best = &f;
      best_id = id;
    }
  if (ready > 1) best = nullptr;
  for (auto& [id, f] : flows_) {
    if (ready <= 1) break;
    if (Ready(f) == 0) continue;
    std::tuple<int64_t, double, double> k{-int64_t{f.spec.priority}, Key(f, now, mean),
                                          double(f.held.size()) / std::max<uint32_t>(1, f.spec.weight)};
    if (!best || k < best_key) {
      best = &f;
      best_id = id;
      best_key = k;
    }
  }
  if (!best) return std::nullopt;
  best->pending--;
  best->held.insert(now);
  running_++;
  return Slot{best_id, now};
}

void FairScheduler::ReleaseLocked(const Slot& slot, bool count) {
  auto it = flows_.find(slot.flow);
  if (it == flows_.end()) return;  // removed: its slots were freed then
  Flow& f = it->second;
  auto h = f.held.find(slot.since);
  if (h == f.held.end()) return;
  f.held.erase(h);
  running_--;
  if (!count) return;
  Clock::duration d = std::max(Clock::duration::zero(), now_() - slot.since);
  f.used += d;
  if (released_ == 0) {
    // The first slot length known: the points flows joined at, counted in
    // slots of unknown length so far, become seconds at this length (the
    // length of the episodes held then), no longer moving with the mean.
    for (auto& [id, o] : flows_) {
      o.base_s += o.base_slots * Seconds(d);
      o.base_slots = 0;
    }
  }
  released_s_ = released_ ? released_s_ + kMeanAlpha * (Seconds(d) - released_s_) : Seconds(d);
  released_++;
}

void FairScheduler::Release(const Slot& slot) {
  std::lock_guard lock(mu_);
  ReleaseLocked(slot, true);
}

void FairScheduler::Unused(const Slot& slot) {
  std::lock_guard lock(mu_);
  ReleaseLocked(slot, false);
}

size_t FairScheduler::running() const {
  std::lock_guard lock(mu_);
  return running_;
}

size_t FairScheduler::queued() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [id, f] : flows_) n += Ready(f);
  return n;
}

size_t FairScheduler::queued(FlowId id) const {
  std::lock_guard lock(mu_);
  auto it = flows_.find(id);
  return it == flows_.end() ? 0 : Ready(it->second);
}

size_t FairScheduler::running(FlowId id) const {
  std::lock_guard lock(mu_);
  auto it = flows_.find(id);
  return it == flows_.end() ? 0 : it->second.held.size();
}

FairScheduler::Clock::duration FairScheduler::used(FlowId id) const {
  std::lock_guard lock(mu_);
  auto it = flows_.find(id);
  return it == flows_.end() ? Clock::duration::zero() : it->second.used;
}

}  // namespace paddock::rollout
