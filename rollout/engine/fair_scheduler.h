// Which rollout's episode starts next when several rollouts share one
// daemon: a daemon-wide bound on running episodes (slots), each rollout (a
// flow here) still bounded by its own concurrency.
//
// What a caller may rely on:
// - Next() grants a slot only while fewer than `capacity` slots are held
//   (0: no bound), and only to a flow with episodes pending that runs fewer
//   than its concurrency.
// - Strict priority: the slot goes to the highest priority among the flows
//   that can start an episode. A lower priority waits (starves) only while a
//   higher one has episodes it can start; a higher-priority flow at its own
//   concurrency leaves the remaining slots to the others.
// - Among equal priorities, weighted fair sharing of sandbox-time (the time a
//   slot is held, grant to release): the slot goes to the flow with the least
//   virtual time, its sandbox-time divided by its weight. Every flow that
//   waits has the least virtual time after finitely many grants to the others
//   (theirs only grows), so none starves.
// - Release() gives a slot back; Remove() forgets a flow (and its slots).
// - queued(): episodes ready to start (pending, under their flow's
//   concurrency) that no slot was granted to; after Next() returned nullopt,
//   they wait only for the daemon-wide bound.
//
// Why virtual time and not deficit round robin: episodes are not preemptible
// and their lengths vary (a DRR quantum would be a guess), and what the user
// shares is time, not episode counts. Virtual time charges actual sandbox-time
// once a slot is released; a slot still held is charged max(elapsed, mean
// slot time), so a grant counts at once (no burst of grants to one flow at
// the same instant) and a long episode keeps counting as it runs. A flow that
// joins starts at the least virtual time of the flows of its priority that
// are active, so it gets its share from then on, not credit for the time
// before it existed.
//
// Thread safety: every method may be called from any thread; the lock is a
// leaf (no callback runs under it).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>

namespace paddock::rollout {

class FairScheduler {
 public:
  using Clock = std::chrono::steady_clock;
  using FlowId = uint64_t;

  struct FlowSpec {
    uint32_t weight = 1;      // 0 counts as 1
    int32_t priority = 0;     // higher first
    size_t concurrency = 64;  // the flow's own bound on running episodes (0 counts as 1)
  };

  // A granted slot, handed back to Release (or Unused).
  struct Slot {
    FlowId flow = 0;
    Clock::time_point since;
  };

  // `capacity`: the bound on slots held at once, over all flows (0: none).
  // `now`: the clock (tests pass their own).
  explicit FairScheduler(size_t capacity, std::function<Clock::time_point()> now = Clock::now);

  // A new flow with `pending` episodes to start. Adding an id that exists
  // replaces its spec and pending count.
  void Add(FlowId id, FlowSpec spec, size_t pending);
  // Forgets the flow; slots it still holds are freed.
  void Remove(FlowId id);
  // How many episodes the flow has to start (after a cancel, say).
  void SetPending(FlowId id, size_t pending);

  // The next slot: to whom (see the header comment), its flow's pending count
  // one less and its running count one more. nullopt when the bound is
  // reached or no flow can start an episode.
  std::optional<Slot> Next();
  // The episode of the slot ended: its sandbox-time counts as the flow's use.
  void Release(const Slot& slot);
  // A slot granted for an episode that then did not start (cancelled between
  // the grant and the start): given back, no use counted. The pending count
  // stays as it is: the caller sets it (SetPending) to what is left.
  void Unused(const Slot& slot);

  size_t capacity() const { return capacity_; }
  size_t running() const;
  size_t queued() const;
  size_t queued(FlowId id) const;
  size_t running(FlowId id) const;
  // The flow's sandbox-time of released slots (tests, diagnostics).
  Clock::duration used(FlowId id) const;

 private:
  struct Flow {
    FlowSpec spec;
    size_t pending = 0;
    std::multiset<Clock::time_point> held;  // grant times of the slots it holds
    Clock::duration used{0};                // released slots' sandbox-time
    // The virtual time it joined at, as seconds plus, while no slot length is
    // known yet, slots of unknown length (made seconds at the first release).
    double base_s = 0, base_slots = 0;
  };
  // Virtual time as (seconds, slots charged the mean), before the weight.
  struct Charge {
    double s = 0, slots = 0;
  };

  Charge ChargeOf(const Flow& f, Clock::time_point now, double mean_s) const;
  double Key(const Flow& f, Clock::time_point now, double mean_s) const;
  double MeanSlotSeconds() const;
  size_t Ready(const Flow& f) const;
  void ReleaseLocked(const Slot& slot, bool count);

  const size_t capacity_;
  const std::function<Clock::time_point()> now_;
  mutable std::mutex mu_;
  std::map<FlowId, Flow> flows_;
  size_t running_ = 0;
  // Released slots' sandbox-time, all flows: the mean charged to held slots.
  double released_s_ = 0;
  uint64_t released_ = 0;
};

}  // namespace paddock::rollout
