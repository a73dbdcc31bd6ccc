// The real front (Fleet, placement, leases, RemoteSandbox), the real rollout
// engine and its trajectory log, against SIMULATED nodes (rollout/fleet/
// sim_node.h) — the same path fleet_test drives against real paddockds, here
// with node crashes at a known moment and every exec counted outside the
// front: every episode finishes, and no tool call whose result reached the
// front ran twice.
#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>
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

// The rollout's progress once it stops running, or at `timeout`.
v1::RolloutProgress WaitWhileRunning(rollout::RolloutEngine& engine, const std::string& rollout,
                                     std::chrono::seconds timeout) {
  v1::RolloutProgress p;
  for (auto until = Clock::now() + timeout; Clock::now() < until;) {
    auto got = engine.Progress(rollout);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (!got.ok()) break;
    p = *got;
    if (p.state() != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return p;
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
  v1::RolloutProgress p = WaitWhileRunning(engine, "sim", std::chrono::seconds(25));
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

// Eager relocation: two nodes are cut off while every episode waits on a
// long policy turn. Once the front declares them lost (after their lease, so
// they have fenced their sandboxes), every episode that was there gets a new
// sandbox on another node at once: its setup runs there (and, for container
// tasks, its finished turns' calls are re-applied) before the policy answers
// and before the episode's next tool call. Counted on the nodes: no tool call
// ran twice; the partitioned nodes destroyed what they held.
TEST(FleetSim, LostNodesEpisodesAreRebuiltElsewhereBeforeTheirNextCall) {
  const std::string dir = fmt::format("/tmp/paddock-fleet-sim-reloc-{}", ::getpid());
  std::filesystem::remove_all(dir);
  constexpr int kNodes = 10, kTurns = 3, kEpisodes = 100;
  SimFront f(kNodes, FastNode());
  replay::LogOptions lo;
  lo.dir = dir + "/log";
  lo.write_buffer_size = 4 << 20;
  lo.reserve_bytes = 0;
  auto log = replay::TrajectoryLog::Open(lo);
  ASSERT_TRUE(log.ok()) << log.status().message();
  rollout::RolloutEngine engine(*f.manager, **log, rollout::EngineOptions{.relocation_threads = 4});

  // Turns of 4-4.5 s: the loss is declared (lease 600 ms + heartbeat + a
  // quarter lease) well inside the turn that is at the policy.
  json script = {{"completions", {Call("bash", "command", "echo turn-{turn}")}}, {"latency_ms", {4000, 4500}}};
  std::string tasks;
  for (int i = 0; i < 10; ++i)
    tasks += json({{"id", fmt::format("t{}", i)}, {"image", "busybox:1"}, {"substrate", i % 2 ? "container" : "function"},
                   {"instruction", "run"}, {"tools", {"bash", "submit"}}, {"setup", {"echo setup"}},
                   {"max_turns", kTurns}, {"verifier", "true"}})
                 .dump() +
             "\n";
  v1::StartRolloutRequest r;
  r.set_rollout_id("reloc");
  r.set_tasks_jsonl(tasks);
  r.set_samples_per_task(kEpisodes / 10);
  r.set_concurrency(kEpisodes);
  r.mutable_policy()->set_kind("scripted");
  r.mutable_policy()->set_script(script.dump());
  ASSERT_TRUE(engine.Start(r).ok());

  // Every episode's first call answered: all wait on their second turn now.
  auto t0 = Clock::now();
  while (engine.stats().live_tool_calls < kEpisodes && Clock::now() - t0 < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_GE(engine.stats().live_tool_calls, static_cast<uint64_t>(kEpisodes));
  std::vector<SimNode*> victims;
  std::set<std::string> victim_addrs, affected;
  std::map<std::string, uint32_t> held;
  for (int i = 0; i < kNodes && victims.size() < 2; ++i) {
    SimNode* n = f.sim->Find(fmt::format("sim-{}:7443", i));
    auto eps = n->Episodes();
    if (eps.empty()) continue;
    victims.push_back(n);
    victim_addrs.insert(n->address());
    held[n->address()] = static_cast<uint32_t>(eps.size());
    affected.insert(eps.begin(), eps.end());
  }
  ASSERT_EQ(victims.size(), 2u);
  const auto calls_at_cut = engine.stats().live_tool_calls;
  const auto t_cut = Clock::now();
  for (auto* n : victims) n->Partition();

  // Lost (after the lease), and then every affected episode runs again on
  // another node before any of them made another call.
  while ((f.State(victims[0]->address()) != "lost" || f.State(victims[1]->address()) != "lost") &&
         Clock::now() - t_cut < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const auto t_lost = Clock::now();
  ASSERT_EQ(f.State(victims[0]->address()), "lost");
  ASSERT_EQ(f.State(victims[1]->address()), "lost");
  EXPECT_GE(t_lost - t_cut, std::chrono::milliseconds(600));
  while (engine.stats().eager_relocations < affected.size() && Clock::now() - t_lost < std::chrono::seconds(3))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const auto t_moved = Clock::now();
  EXPECT_EQ(engine.stats().eager_relocations, affected.size());
  // No episode has made its next call yet: the policy still holds their turns.
  EXPECT_EQ(engine.stats().live_tool_calls, calls_at_cut);
  RecordProperty("rebuilt_ms_after_lost", static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(t_moved - t_lost).count()));

  v1::RolloutProgress p = WaitWhileRunning(engine, "reloc", std::chrono::seconds(30));
  EXPECT_EQ(p.state(), "finished");
  EXPECT_EQ(p.done(), static_cast<uint32_t>(kEpisodes));
  EXPECT_EQ(p.failed(), 0u);
  // Moved once each, all ahead of their next call.
  EXPECT_EQ(engine.stats().relocated_episodes, affected.size());
  EXPECT_EQ(engine.stats().eager_relocations, affected.size());

  // The nodes' view, in answer order, per episode: which node ran what.
  std::map<std::string, std::vector<SimFleet::ExecEvent>> per;
  for (auto& e : f.sim->Events()) per[e.episode].push_back(e);
  ASSERT_EQ(per.size(), static_cast<size_t>(kEpisodes));
  int ran_twice = 0;
  for (const auto& [ep, events] : per) {
    const bool container = ep.find("/t1#") != std::string::npos || ep.find("/t3#") != std::string::npos ||
                           ep.find("/t5#") != std::string::npos || ep.find("/t7#") != std::string::npos ||
                           ep.find("/t9#") != std::string::npos;
    // Turns answered per node, in order; setups per node.
    std::vector<std::string> nodes;
    std::map<std::string, std::vector<int>> turns;
    std::map<std::string, int> setups;
    std::optional<Clock::time_point> new_setup_at, new_first_turn_at;
    for (const auto& e : events) {
      if (std::find(nodes.begin(), nodes.end(), e.node) == nodes.end()) nodes.push_back(e.node);
      if (e.command == "/bin/sh -c echo setup") {
        ++setups[e.node];
        if (!victim_addrs.count(e.node) && e.at > t_cut && !new_setup_at) new_setup_at = e.at;
      } else if (auto at = e.command.find("echo turn-"); at != std::string::npos) {
        turns[e.node].push_back(std::stoi(e.command.substr(at + 10)));
        if (!victim_addrs.count(e.node) && e.at > t_cut && !new_first_turn_at) new_first_turn_at = e.at;
      }
    }
    if (!affected.count(ep)) {
      EXPECT_EQ(nodes.size(), 1u) << ep;
      EXPECT_EQ(turns[nodes[0]], (std::vector<int>{0, 1, 2})) << ep;
      continue;
    }
    // Affected: the victim ran the first turn's call (`echo turn-0`); the new
    // node the setup first, within the rebuild (before the policy answered),
    // then (container) turn 0's call re-applied, then turns 1 and 2, each once.
    ASSERT_EQ(nodes.size(), 2u) << ep;
    ASSERT_TRUE(victim_addrs.count(nodes[0])) << ep;
    const std::string& moved_to = nodes[1];
    EXPECT_EQ(turns[nodes[0]], (std::vector<int>{0})) << ep;
    EXPECT_EQ(setups[moved_to], 1) << ep;
    ASSERT_TRUE(new_setup_at.has_value()) << ep;
    EXPECT_LE(*new_setup_at, t_moved) << ep << ": not rebuilt ahead of its next call";
    ASSERT_TRUE(new_first_turn_at.has_value()) << ep;
    EXPECT_LT(*new_setup_at, *new_first_turn_at) << ep;
    std::vector<int> want = container ? std::vector<int>{0, 1, 2} : std::vector<int>{1, 2};
    EXPECT_EQ(turns[moved_to], want) << ep;
    // A turn run live on both nodes (the re-applied turn 0 of a container
    // episode is its rebuild, by design, and comes first on the new node).
    for (int t : turns[moved_to])
      if (t != 0 || !container)
        ran_twice += static_cast<int>(std::count(turns[nodes[0]].begin(), turns[nodes[0]].end(), t));
  }
  EXPECT_EQ(ran_twice, 0);
  // Every call that started was answered (nothing was cut: the loss came
  // between calls), so none ran twice unseen either.
  for (const auto& [key, c] : f.sim->ExecCounts()) {
    if (key.find("echo turn-") == std::string::npos) continue;
    EXPECT_EQ(c.started, c.answered) << key;
  }

  // Healed, the partitioned nodes had destroyed the sandboxes they held
  // (their lease lapsed), and are ready again.
  for (auto* n : victims) n->Heal();
  for (auto* n : victims) {
    auto until = Clock::now() + std::chrono::seconds(5);
    while (f.State(n->address()) != "ready" && Clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(f.State(n->address()), "ready");
    EXPECT_EQ(n->live(), 0u);
    EXPECT_EQ(n->fenced(), held[n->address()]) << n->address();
  }
  std::filesystem::remove_all(dir);
}

// A fork through the front is the node's: its copies are sandboxes there,
// counted as the front's. A node that answers a fork with more or fewer copies
// than asked (no real paddockd does: a simulated fault) is refused, naming
// it, and the copies it did make are destroyed there, not leaked or adopted.
TEST(FleetSim, AForkIsTheNodesAndALyingNodesCopiesAreDestroyedNotAdopted) {
  SimFront f(1, FastNode());
  SimNode* node = f.sim->Find("sim-0:7443");
  SandboxSpec spec;
  spec.substrate = "function";
  spec.image = "busybox:1";
  auto parent = f.manager->Create(spec);
  ASSERT_TRUE(parent.ok()) << parent.status().message();
  auto placed = [&] {
    for (const auto& s : f.fleet->List())
      if (s.address == node->address()) return s.placed;
    return 0u;
  };

  auto copies = f.manager->Fork(parent->id, 3);
  ASSERT_TRUE(copies.ok()) << copies.status().message();
  ASSERT_EQ(copies->size(), 3u);
  EXPECT_EQ(node->live(), 4u);
  EXPECT_EQ(placed(), 4u);
  for (const auto& c : *copies) {
    auto sb = f.manager->Get(c.id);
    ASSERT_TRUE(sb.ok());
    EXPECT_EQ((*sb)->placement(), node->address());
    ExecRequest req;
    req.argv = {"/bin/true"};
    auto r = (*sb)->Exec(req, nullptr);
    EXPECT_TRUE(r.ok()) << r.status().message();
  }

  for (int surplus : {2, -1}) {
    node->SetForkSurplus(surplus);
    auto lied = f.manager->Fork(parent->id, 2);
    ASSERT_FALSE(lied.ok()) << "surplus " << surplus;
    EXPECT_EQ(lied.status().code(), Code::kInternal);
    EXPECT_NE(lied.status().message().find("sim-0:7443"), std::string::npos) << lied.status().message();
    EXPECT_NE(lied.status().message().find(fmt::format("made {} copies", 2 + surplus)), std::string::npos)
        << lied.status().message();
    EXPECT_EQ(node->live(), 4u) << "the lying node's copies were left there (surplus " << surplus << ")";
    EXPECT_EQ(placed(), 4u);
    EXPECT_EQ(f.manager->List().size(), 4u);
  }
  node->SetForkSurplus(0);
  for (const auto& c : *copies) EXPECT_TRUE(f.manager->Destroy(c.id).ok());
  EXPECT_EQ(node->live(), 1u);
  EXPECT_EQ(placed(), 1u);
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
