// The engine-wide episode scheduler alone (rollout/engine/fair_scheduler.h),
// on a simulated clock: episodes are slots held for a simulated duration.
#include "rollout/engine/fair_scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <queue>
#include <vector>

namespace paddock::rollout {
namespace {

using Clock = FairScheduler::Clock;
using std::chrono::milliseconds;

// Runs the scheduler to saturation on a simulated clock: each granted slot
// ends `length(flow)` later; whoever gets the freed slot is the scheduler's
// choice. Sums each flow's sandbox-time within [0, until).
class Simulation {
 public:
  explicit Simulation(size_t capacity) : sched_(capacity, [this] { return now_; }) {}

  FairScheduler& sched() { return sched_; }
  Clock::time_point now() const { return now_; }

  void SetLength(FairScheduler::FlowId f, milliseconds d) { length_[f] = d; }

  // Fills free slots, then advances to the next end, until `until` or no slot
  // is held. Returns the sandbox-time per flow within the run.
  std::map<FairScheduler::FlowId, double> Run(Clock::duration span) {
    const Clock::time_point until = now_ + span;
    std::map<FairScheduler::FlowId, double> used;
    for (;;) {
      while (auto s = sched_.Next()) {
        ends_.push({s->since + Length(s->flow), *s});
        grants_[s->flow]++;
      }
      if (ends_.empty() || ends_.top().at > until) break;
      End e = ends_.top();
      ends_.pop();
      now_ = e.at;
      used[e.slot.flow] += std::chrono::duration<double>(e.at - e.slot.since).count();
      sched_.Release(e.slot);
    }
    now_ = until;
    return used;
  }

  std::map<FairScheduler::FlowId, int> grants_;

 private:
  struct End {
    Clock::time_point at;
    FairScheduler::Slot slot;
    bool operator<(const End& o) const { return at > o.at; }  // earliest first
  };
  Clock::duration Length(FairScheduler::FlowId f) {
    auto it = length_.find(f);
    return it == length_.end() ? milliseconds(1000) : it->second;
  }

  Clock::time_point now_{};  // the epoch of the steady clock
  FairScheduler sched_;
  std::map<FairScheduler::FlowId, Clock::duration> length_;
  std::priority_queue<End> ends_;
};

TEST(FairScheduler, NeverGrantsMoreThanTheBoundOrAFlowsConcurrency) {
  FairScheduler s(3, [] { return Clock::time_point{}; });
  s.Add(1, {.weight = 1, .priority = 0, .concurrency = 2}, 10);
  s.Add(2, {.weight = 1, .priority = 0, .concurrency = 5}, 10);
  int granted = 0;
  while (s.Next()) ++granted;
  EXPECT_EQ(granted, 3);
  EXPECT_EQ(s.running(), 3u);
  EXPECT_LE(s.running(1), 2u);
  // Ready and under their concurrency, waiting only for the bound.
  EXPECT_EQ(s.queued(), (2 - s.running(1)) + (5 - s.running(2)));
}

TEST(FairScheduler, Weights3To1_SlotsAndSandboxTime3To1) {
  Simulation sim(4);
  sim.sched().Add(1, {.weight = 3, .priority = 0, .concurrency = 8}, 1000);
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 1000);
  auto used = sim.Run(std::chrono::seconds(200));
  EXPECT_NEAR(used[1] / used[2], 3.0, 0.1);
  EXPECT_NEAR(double(sim.grants_[1]) / sim.grants_[2], 3.0, 0.1);
}

TEST(FairScheduler, Weights3To1_FractionalShareOfTwoSlots) {
  // Two slots cannot split 1.5 : 0.5 at any instant; over time they do.
  Simulation sim(2);
  sim.sched().Add(1, {.weight = 3, .priority = 0, .concurrency = 8}, 1000);
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 1000);
  auto used = sim.Run(std::chrono::seconds(400));
  EXPECT_NEAR(used[1] / used[2], 3.0, 0.15);
}

TEST(FairScheduler, StartedOneAfterTheOther_TheSecondGetsItsShareInTheFirstRound) {
  // The first flow takes every slot before the second exists, and no episode
  // length is known yet (the mean is a default, half the real length): the
  // second still starts as the first slot frees, and shares 3:1 from then on.
  Simulation sim(4);
  sim.SetLength(1, milliseconds(500));
  sim.SetLength(2, milliseconds(500));
  sim.sched().Add(1, {.weight = 3, .priority = 0, .concurrency = 4}, 1000);
  sim.Run(Clock::duration::zero());
  EXPECT_EQ(sim.sched().running(1), 4u);
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 4}, 1000);
  sim.Run(milliseconds(500));
  EXPECT_EQ(sim.sched().running(2), 1u) << "started as the first round ended";
  auto used = sim.Run(std::chrono::seconds(50));
  EXPECT_NEAR(used[1] / used[2], 3.0, 0.1);
}

TEST(FairScheduler, SandboxTimeNotEpisodeCount_LongEpisodesGetFewerSlots) {
  // Equal weights, flow 1's episodes 4x as long: equal time, not equal counts.
  Simulation sim(4);
  sim.SetLength(1, milliseconds(4000));
  sim.SetLength(2, milliseconds(1000));
  sim.sched().Add(1, {.weight = 1, .priority = 0, .concurrency = 8}, 1000);
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 1000);
  auto used = sim.Run(std::chrono::seconds(400));
  EXPECT_NEAR(used[1] / used[2], 1.0, 0.1);
  EXPECT_NEAR(double(sim.grants_[2]) / sim.grants_[1], 4.0, 0.4);
}

TEST(FairScheduler, HigherPriorityFirst_LowerRunsWhenHigherHasNothingToStart) {
  Simulation sim(2);
  sim.sched().Add(1, {.weight = 100, .priority = 0, .concurrency = 8}, 1000);
  sim.sched().Add(2, {.weight = 1, .priority = 5, .concurrency = 8}, 4);
  auto used = sim.Run(std::chrono::seconds(2));
  EXPECT_EQ(used[1], 0.0) << "strict priority: the weight of a lower priority does not count";
  EXPECT_EQ(sim.grants_[2], 4);
  // Flow 2 has nothing left to start: flow 1 gets the slots.
  sim.Run(std::chrono::seconds(1));
  EXPECT_EQ(sim.sched().running(1), 2u);
}

TEST(FairScheduler, AHigherPriorityAtItsConcurrencyLeavesTheRestToLowerOnes) {
  FairScheduler s(4, [] { return Clock::time_point{}; });
  s.Add(1, {.weight = 1, .priority = 9, .concurrency = 1}, 100);
  s.Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 100);
  while (s.Next()) {
  }
  EXPECT_EQ(s.running(1), 1u);
  EXPECT_EQ(s.running(2), 3u);
}

TEST(FairScheduler, NoStarvationAmongEqualPriorities_WeightOneAgainstWeightHundred) {
  Simulation sim(4);
  sim.sched().Add(1, {.weight = 100, .priority = 0, .concurrency = 8}, 100000);
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 100000);
  sim.Run(std::chrono::seconds(200));
  // 4 slots * 200 s / 101 shares: about 7.9 s of sandbox-time, about 8 grants.
  EXPECT_GE(sim.grants_[2], 6);
  EXPECT_LE(sim.grants_[2], 10);
}

TEST(FairScheduler, ALateFlowGetsItsShareFromThenOn_NotCreditForTheTimeBefore) {
  Simulation sim(4);
  sim.sched().Add(1, {.weight = 1, .priority = 0, .concurrency = 8}, 100000);
  sim.Run(std::chrono::seconds(100));  // flow 1 alone: 400 s of sandbox-time
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 100000);
  auto used = sim.Run(std::chrono::seconds(100));
  EXPECT_NEAR(used[1] / used[2], 1.0, 0.1) << "flow 2 joined at flow 1's virtual time";
}

TEST(FairScheduler, AFinishedFlowFreesItsShare) {
  Simulation sim(4);
  sim.sched().Add(1, {.weight = 1, .priority = 0, .concurrency = 8}, 100000);
  sim.sched().Add(2, {.weight = 1, .priority = 0, .concurrency = 8}, 100000);
  sim.Run(std::chrono::seconds(10));
  EXPECT_EQ(sim.sched().running(1), 2u);
  EXPECT_EQ(sim.sched().running(2), 2u);
  sim.sched().SetPending(2, 0);  // its last episodes run out
  sim.Run(std::chrono::seconds(2));
  EXPECT_EQ(sim.sched().running(1), 4u);
  sim.sched().Remove(2);
  EXPECT_EQ(sim.sched().running(), 4u);
}

TEST(FairScheduler, RemoveFreesHeldSlots_UnusedCountsNoTime) {
  FairScheduler s(2, [] { return Clock::time_point{}; });
  s.Add(1, {}, 5);
  auto a = s.Next();
  auto b = s.Next();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(s.Next()) << "bound reached";
  s.Unused(*a);
  EXPECT_EQ(s.running(), 1u);
  EXPECT_EQ(s.used(1), Clock::duration::zero());
  s.Remove(1);
  EXPECT_EQ(s.running(), 0u);
  s.Release(*b);  // after Remove: ignored
  EXPECT_EQ(s.running(), 0u);
}

TEST(FairScheduler, ZeroCapacityIsUnbounded) {
  FairScheduler s(0, [] { return Clock::time_point{}; });
  s.Add(1, {.weight = 0, .priority = 0, .concurrency = 100}, 100);
  int n = 0;
  while (s.Next()) ++n;
  EXPECT_EQ(n, 100);
  EXPECT_EQ(s.queued(), 0u);
}

}  // namespace
}  // namespace paddock::rollout
