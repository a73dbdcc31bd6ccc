// Several rollouts sharing one engine (rollout/engine/fair_scheduler.h), in
// process on real parts (tests/rollout_engine_fixture.h): sandbox-time split
// by weight under a daemon-wide bound smaller than the rollouts' demand, and
// episodes that queue, never fail, while the daemon is full.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "tests/rollout_engine_fixture.h"
#include "tests/rollout_test_util.h"

namespace paddock {
namespace {

// Tasks whose one turn sleeps `sleep_s` in a function sandbox, then submit.
std::string SleepTasks(const std::string& rootfs, const std::string& prefix, int tasks) {
  std::string out;
  for (int i = 0; i < tasks; ++i) {
    nlohmann::json t = {{"id", prefix + std::to_string(i)},
                        {"image", rootfs},
                        {"substrate", "function"},
                        {"instruction", "Sleep, then submit."},
                        {"tools", {"bash", "submit"}},
                        {"max_turns", 4},
                        {"verifier", "true"}};
    out += t.dump() + "\n";
  }
  return out;
}

bool Stopped(const v1::RolloutProgress& p) { return p.state() != "running" && p.state() != "waiting_for_nodes"; }

// An episode's hold on a slot, in microseconds since the epoch.
struct Interval {
  int64_t start, end;
};

std::vector<Interval> Intervals(const v1::RolloutProgress& p, const std::vector<nlohmann::json>& lines) {
  std::vector<Interval> out;
  for (const auto& l : lines) {
    int64_t start = p.started_unix_ms() * 1000 + l["timings_us"]["queue"].get<int64_t>();
    out.push_back({start, start + l["timings_us"]["total"].get<int64_t>()});
  }
  return out;
}

int64_t FirstStart(const std::vector<Interval>& v) {
  return std::min_element(v.begin(), v.end(), [](auto& a, auto& b) { return a.start < b.start; })->start;
}
int64_t LastStart(const std::vector<Interval>& v) {
  return std::max_element(v.begin(), v.end(), [](auto& a, auto& b) { return a.start < b.start; })->start;
}
// Sandbox-time within [from, to).
double TimeWithin(const std::vector<Interval>& v, int64_t from, int64_t to) {
  double s = 0;
  for (const auto& i : v) s += std::max<int64_t>(0, std::min(i.end, to) - std::max(i.start, from));
  return s / 1e6;
}

class FourSlots : public RolloutEngineTest {
 protected:
  FourSlots() { engine_options_.max_running_episodes = 4; }
};

TEST_F(FourSlots, TwoRolloutsWeighted3To1_GetSandboxTimeWithin10PercentOf3To1) {
  // Each rollout alone would run 4 episodes at once: together they ask for
  // 8 slots of 4. A has three times B's episodes so both stay busy together.
  const std::string script = testing::CountingScript(1, "0.3");
  auto ra = Request(SleepTasks(*rootfs_, "a", 60), script, 4);
  ra.set_weight(3);
  auto rb = Request(SleepTasks(*rootfs_, "b", 20), script, 4);
  rb.set_weight(1);
  auto a = engine_->Start(ra);
  auto b = engine_->Start(rb);
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE(b.ok()) << b.status().message();

  // While both run: never more than 4 episodes, the rest queued (not failed).
  uint32_t max_running = 0, max_queued = 0;
  uint64_t max_stats_queued = 0;
  for (;;) {
    auto pa = engine_->Progress(a->rollout_id());
    auto pb = engine_->Progress(b->rollout_id());
    ASSERT_TRUE(pa.ok() && pb.ok());
    max_running = std::max(max_running, pa->running() + pb->running());
    max_queued = std::max(max_queued, pa->queued() + pb->queued());
    max_stats_queued = std::max(max_stats_queued, engine_->stats().queued_episodes);
    if (Stopped(*pa) && Stopped(*pb)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_LE(max_running, 4u);
  EXPECT_GT(max_queued, 0u);
  EXPECT_GT(max_stats_queued, 0u);
  auto pa = WaitDone(a->rollout_id());
  auto pb = WaitDone(b->rollout_id());
  EXPECT_EQ(pa.done(), 60u);
  EXPECT_EQ(pb.done(), 20u);
  EXPECT_EQ(pa.failed() + pb.failed(), 0u);
  EXPECT_EQ(pa.queued() + pb.queued(), 0u);

  // Sandbox-time while both had episodes to start: from the later first
  // start to the earlier last start.
  auto ia = Intervals(pa, Export(a->rollout_id()));
  auto ib = Intervals(pb, Export(b->rollout_id()));
  ASSERT_EQ(ia.size(), 60u);
  ASSERT_EQ(ib.size(), 20u);
  int64_t from = std::max(FirstStart(ia), FirstStart(ib));
  int64_t to = std::min(LastStart(ia), LastStart(ib));
  ASSERT_GT(to - from, 2'000'000) << "both ran together for at least 2 s";
  double ta = TimeWithin(ia, from, to), tb = TimeWithin(ib, from, to);
  ASSERT_GT(tb, 0);
  double ratio = ta / tb;
  std::printf("sandbox-time over %.2f s together: A %.2f s, B %.2f s, ratio %.3f (want 3 +- 10%%)\n",
              (to - from) / 1e6, ta, tb, ratio);
  RecordProperty("ratio", std::to_string(ratio));
  EXPECT_GE(ratio, 2.7);
  EXPECT_LE(ratio, 3.3);
}

TEST_F(FourSlots, AHigherPriorityRunsFirst_TheLowerOneStillFinishes) {
  const std::string script = testing::CountingScript(1, "0.2");
  auto low = Request(SleepTasks(*rootfs_, "low", 8), script, 4);
  auto high = Request(SleepTasks(*rootfs_, "high", 8), script, 4);
  high.set_priority(1);
  auto l = engine_->Start(low);  // first: it takes the 4 slots
  auto h = engine_->Start(high);
  ASSERT_TRUE(l.ok() && h.ok());
  auto ph = WaitDone(h->rollout_id());
  auto pl = WaitDone(l->rollout_id());
  EXPECT_EQ(ph.done(), 8u);
  EXPECT_EQ(pl.done(), 8u);
  // Once a slot freed, every start went to the high priority until it had
  // nothing left to start: at most the 4 first low episodes began before the
  // high rollout's last one.
  auto il = Intervals(pl, Export(l->rollout_id()));
  auto ih = Intervals(ph, Export(h->rollout_id()));
  int64_t high_last = LastStart(ih);
  int early = 0;
  for (const auto& i : il) early += i.start < high_last;
  EXPECT_LE(early, 4);
}

class TwoSandboxes : public RolloutEngineTest {
 protected:
  TwoSandboxes() { manager_options_.max_sandboxes = 2; }  // the engine's bound follows: 2
};

TEST_F(TwoSandboxes, DaemonFull_NewEpisodesQueueAndNoneFails) {
  // A sandbox the engine does not run holds one of the two places.
  SandboxSpec spec;
  spec.substrate = "function";
  spec.image = *rootfs_;
  auto foreign = manager_->Create(spec);
  ASSERT_TRUE(foreign.ok()) << foreign.status().message();

  auto started = engine_->Start(Request(SleepTasks(*rootfs_, "t", 6), testing::CountingScript(1, "0.2"), 6));
  ASSERT_TRUE(started.ok()) << started.status().message();
  uint32_t max_queued = 0, max_waiting = 0, max_running = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (std::chrono::steady_clock::now() < until) {
    auto p = engine_->Progress(started->rollout_id());
    ASSERT_TRUE(p.ok());
    max_queued = std::max(max_queued, p->queued());
    max_waiting = std::max(max_waiting, p->waiting_for_sandbox());
    max_running = std::max(max_running, p->running());
    EXPECT_EQ(p->failed(), 0u);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(max_running, 2u) << "the engine's bound: the daemon's 2 sandboxes";
  EXPECT_GE(max_queued, 4u) << "6 episodes, 2 slots";
  EXPECT_GE(max_waiting, 1u) << "the daemon's cap, reached by the foreign sandbox, made one wait";
  ASSERT_TRUE(manager_->Destroy(foreign->id).ok());

  auto p = WaitDone(started->rollout_id());
  EXPECT_EQ(p.done(), 6u);
  EXPECT_EQ(p.failed(), 0u);
  EXPECT_EQ(p.infra(), 0u);
  EXPECT_EQ(p.queued(), 0u);
  EXPECT_EQ(engine_->stats().queued_episodes, 0u);
  for (const auto& l : Export(started->rollout_id())) EXPECT_EQ(l["outcome"]["class"], "agent") << l.dump();
}

}  // namespace
}  // namespace paddock
