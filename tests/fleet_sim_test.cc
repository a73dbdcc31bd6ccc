// The real front (Fleet, placement, leases, RemoteSandbox), the real rollout
// engine and its trajectory log, against SIMULATED nodes (rollout/fleet/
// sim_node.h) — the same path fleet_test drives against real paddockds, here
// with node crashes at a known moment and every exec counted outside the
// front: every episode finishes, and no tool call whose result reached the
// front ran twice.
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "replay/trajectory_log.h"
#include "rollout/engine/rollout_engine.h"
#include "rollout/fleet/fleet.h"
#include "rollout/fleet/sim_node.h"
#include "sandbox/manager.h"

namespace paddock::fleet {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

std::string Call(const std::string& tool, const std::string& k, const std::string& v) {
  return "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool + "\">\n<｜DSML｜parameter name=\"" + k +
         "\" string=\"true\">" + v + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
}

struct SimFront {
  std::shared_ptr<SimFleet> sim = std::make_shared<SimFleet>(SimFleetOptions{.record_execs = true});
  std::unique_ptr<Fleet> fleet;
  std::unique_ptr<SandboxManager> manager;

  explicit SimFront(int nodes, SimNodeOptions no) {
    for (int i = 0; i < nodes; ++i) sim->Add(fmt::format("sim-{}:7443", i), no);
    FleetOptions fo;
    fo.nodes = sim->Spec();
    fo.transport = sim;
    fo.token = "t";
    fo.heartbeat = std::chrono::milliseconds(100);
    fo.place_timeout = std::chrono::milliseconds(5000);
    fo.front_id = "test-front";
    auto f = Fleet::Start(fo);
    EXPECT_TRUE(f.ok()) << f.status().message();
    fleet = std::move(*f);
    EXPECT_TRUE(fleet->WaitForReady(nodes, std::chrono::seconds(10)));
    manager = std::make_unique<SandboxManager>(ManagerOptions{.max_sandboxes = 10000});
    for (const char* s : {"function", "container"}) manager->RegisterSubstrate(MakeFleetSubstrate(*fleet, s));
  }
  ~SimFront() {
    manager->Shutdown();
    manager.reset();
    fleet.reset();
  }
  std::string State(const std::string& address) {
    for (const auto& s : fleet->List())
      if (s.address == address) return s.state;
    return "";
  }
};

SimNodeOptions FastNode() {
  SimNodeOptions no;
  no.max_sandboxes = 100;
  no.front_lease = std::chrono::milliseconds(600);
  no.create = {std::chrono::microseconds(200), std::chrono::microseconds(1000)};
  no.exec = {std::chrono::microseconds(2000), std::chrono::microseconds(20000)};
  no.report = {std::chrono::microseconds(50), std::chrono::microseconds(200)};
  return no;
}

TEST(FleetSim, TwoNodesCrashMidRolloutEveryEpisodeFinishesNothingAcknowledgedRunsTwice) {
  const std::string dir = fmt::format("/tmp/paddock-fleet-sim-test-{}", ::getpid());
  std::filesystem::remove_all(dir);
  SimFront f(20, FastNode());
  replay::LogOptions lo;
  lo.dir = dir + "/log";
  lo.write_buffer_size = 4 << 20;
  lo.reserve_bytes = 0;
  auto log = replay::TrajectoryLog::Open(lo);
  ASSERT_TRUE(log.ok()) << log.status().message();
  rollout::RolloutEngine engine(*f.manager, **log);

  constexpr int kTurns = 8, kEpisodes = 200;
  json script = {{"completions", {Call("bash", "command", "echo turn-{turn}")}}, {"latency_ms", {10, 60}}};
  std::string tasks;
  for (int i = 0; i < 20; ++i)
    tasks += json({{"id", fmt::format("t{}", i)}, {"image", "busybox:1"}, {"substrate", "function"},
                   {"instruction", "run"}, {"tools", {"bash", "submit"}}, {"max_turns", kTurns}, {"verifier", "true"}})
                 .dump() +
             "\n";
  v1::StartRolloutRequest r;
  r.set_rollout_id("sim");
  r.set_tasks_jsonl(tasks);
  r.set_samples_per_task(kEpisodes / 20);
  r.set_concurrency(kEpisodes);
  r.mutable_policy()->set_kind("scripted");
  r.mutable_policy()->set_script(script.dump());
  ASSERT_TRUE(engine.Start(r).ok());

  // Midway (a third of the tool calls answered), two nodes holding sandboxes crash.
  const uint64_t total_calls = uint64_t{kEpisodes} * kTurns;
  auto t0 = Clock::now();
  while (engine.stats().live_tool_calls < total_calls / 3 && Clock::now() - t0 < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::vector<SimNode*> victims;
  uint32_t held = 0;
  for (int i = 0; i < 20 && victims.size() < 2; ++i) {
    SimNode* n = f.sim->Find(fmt::format("sim-{}:7443", i));
    if (n->live() > 0) {
      held += n->live();
      victims.push_back(n);
    }
  }
  ASSERT_EQ(victims.size(), 2u);
  for (auto* n : victims) n->Kill();

  // Every episode finishes (none fails for the loss), the crashed nodes are lost.
  v1::RolloutProgress p;
  for (auto until = Clock::now() + std::chrono::seconds(25); Clock::now() < until;) {
    auto got = engine.Progress("sim");
    ASSERT_TRUE(got.ok());
    p = *got;
    if (p.state() != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(p.state(), "finished");
  EXPECT_EQ(p.done(), static_cast<uint32_t>(kEpisodes));
  EXPECT_EQ(p.failed(), 0u);
  for (auto* n : victims) EXPECT_EQ(f.State(n->address()), "lost") << n->address();
  EXPECT_GT(held, 0u);
  // The episodes on them moved (at most `held`: the others were elsewhere).
  EXPECT_GE(engine.stats().relocated_episodes, 1u);
  EXPECT_LE(engine.stats().relocated_episodes, held);

  // Counted on the nodes: each turn's call ran and was answered exactly once
  // per episode; a call cut by the crash (started, not answered) ran again.
  auto counts = f.sim->ExecCounts();
  std::map<std::string, int> answered_per_episode;
  uint32_t cut = 0;
  for (const auto& [key, c] : counts) {
    if (key.find("echo turn-") == std::string::npos) continue;
    EXPECT_EQ(c.answered, 1u) << "ran " << c.started << " time(s), answered " << c.answered << ": " << key;
    cut += c.started - c.answered;
    answered_per_episode[key.substr(0, key.find('\n'))] += static_cast<int>(c.answered);
  }
  EXPECT_EQ(answered_per_episode.size(), static_cast<size_t>(kEpisodes));
  for (const auto& [ep, n] : answered_per_episode) EXPECT_EQ(n, kTurns) << ep;
  // Every exported episode holds all its turns' results.
  int exported = 0;
  ASSERT_TRUE(engine
                  .Export("sim", false,
                          [&](const std::string& line) {
                            auto j = json::parse(line);
                            EXPECT_EQ(j["turns"].get<int>(), kTurns) << j["episode_id"];
                            ++exported;
                            return true;
                          })
                  .ok());
  EXPECT_EQ(exported, kEpisodes);
  RecordProperty("calls_cut_by_the_crash", static_cast<int>(cut));
  std::filesystem::remove_all(dir);
}

TEST(FleetSim, APartitionedNodeFencesItsSandboxesAndTheFrontPlacesElsewhere) {
  SimFront f(2, FastNode());
  SandboxSpec spec;
  spec.substrate = "function";
  spec.image = "busybox:1";
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    auto made = f.manager->Create(spec);
    ASSERT_TRUE(made.ok()) << made.status().message();
    ids.push_back(made->id);
  }
  SimNode* a = f.sim->Find("sim-0:7443");
  SimNode* b = f.sim->Find("sim-1:7443");
  ASSERT_GT(a->live(), 0u);
  ASSERT_GT(b->live(), 0u);
  const uint32_t on_a = a->live();
  a->Partition();
  // Lost only after its lease (600 ms) + a heartbeat + a quarter lease.
  auto t0 = Clock::now();
  while (f.State(a->address()) != "lost" && Clock::now() - t0 < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(f.State(a->address()), "lost");
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(600));
  // Its sandboxes fail at once, naming the node; new ones go to the other node.
  int failed = 0;
  for (const auto& id : ids) {
    auto sb = f.manager->Get(id);
    ASSERT_TRUE(sb.ok());
    ExecRequest req;
    req.argv = {"/bin/true"};
    auto r = (*sb)->Exec(req, nullptr);
    if (!r.ok()) {
      ++failed;
      EXPECT_EQ(r.status().code(), Code::kUnavailable);
      EXPECT_NE(r.status().message().find("sim-0:7443"), std::string::npos) << r.status().message();
      EXPECT_FALSE((*sb)->Alive());
    }
  }
  EXPECT_EQ(failed, static_cast<int>(on_a));
  auto more = f.manager->Create(spec);
  ASSERT_TRUE(more.ok()) << more.status().message();
  auto placed = f.manager->Get(more->id);
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ((*placed)->placement(), "sim-1:7443");
  // Healed: the node fenced what it held (the lease lapsed), and is ready again.
  a->Heal();
  t0 = Clock::now();
  while (f.State(a->address()) != "ready" && Clock::now() - t0 < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(f.State(a->address()), "ready");
  EXPECT_EQ(a->live(), 0u);
  EXPECT_EQ(a->fenced(), on_a);
}

}  // namespace
}  // namespace paddock::fleet
