// trainer_bench: the targets of rollouts for trainers (issue 16), in process on
// real parts — a SandboxManager with the function substrate over the busybox
// test rootfs, the trajectory log on RocksDB, the real V4 tokenizer and codec.
//
//  1. groups: group delivery latency, from a group's last sample ending (its
//     final record synced, EpisodeGroup.completed_unix_ms) to the group
//     reaching a consumer of Rollouts.StreamGroups (follow, with the samples'
//     export lines), at 200 concurrent episodes: 50 tasks x 8 samples, each 2
//     turns of `sleep 0.5` with the scripted policy. p50/p90/p99/max over all
//     groups of all runs; a CDF for gnuplot.
//  2. update: a weight update with the embedded engine (paddock-policy, tiny
//     model, two seeded weight files) while 8 episodes generate: pause →
//     resumed (UpdatePolicyResponse.paused_ms, with its drain and load parts)
//     over several updates; afterwards every episode's steps are numbered
//     1..n without a gap or a repeat and the live policy calls equal the turns
//     (no turn lost or duplicated).
//  3. fork: a 4-turn container episode of ~1,000 generated tokens (each turn
//     ~250 tokens of text, then a bash call that writes a file), forked after
//     its 4th turn into 16: the time from the ForkEpisode call until all 16
//     forks are past the fork point (their first live turn answered, so each
//     has its own sandbox rebuilt with the 4 logged calls re-applied).
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "replay/trajectory_log.h"
#include "rollout/engine/rollout_engine.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

using namespace paddock;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Call(const std::string& tool, const std::string& k, const std::string& v) {
  return "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool + "\">\n<｜DSML｜parameter name=\"" + k +
         "\" string=\"true\">" + v + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

struct Env {
  std::string dir;
  std::unique_ptr<SandboxManager> manager;
  std::unique_ptr<replay::TrajectoryLog> log;
  std::unique_ptr<rollout::RolloutEngine> engine;

  explicit Env(const std::string& d) : dir(d) {
    std::filesystem::remove_all(dir);
    SubstrateEnv env;
    env.state_dir = dir + "/state";
    env.init_path = testing::BuiltBinary("paddock-init");
    env.warm_pool_size = 8;
    std::filesystem::create_directories(env.state_dir);
    manager = std::make_unique<SandboxManager>(ManagerOptions{.max_sandboxes = 2000});
    manager->RegisterSubstrate(MakeFunctionSubstrate(env));
    manager->RegisterSubstrate(MakeContainerSubstrate(env));
    replay::LogOptions lo;
    lo.dir = dir + "/log";
    auto l = replay::TrajectoryLog::Open(lo);
    if (!l.ok()) {
      std::cerr << "log: " << l.status().message() << "\n";
      std::exit(1);
    }
    log = std::move(*l);
    engine = std::make_unique<rollout::RolloutEngine>(*manager, *log);
  }
  ~Env() {
    engine.reset();
    manager->Shutdown();
    manager.reset();
    log.reset();
    std::filesystem::remove_all(dir);
  }
};

std::string Tasks(const std::string& rootfs, int n, int max_turns, const std::vector<std::string>& tools,
                  uint32_t max_new_tokens = 0) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    json t = {{"id", fmt::format("t{}", i)}, {"image", rootfs},         {"substrate", "function"},
              {"instruction", "run the commands"}, {"tools", tools}, {"max_turns", max_turns},
              {"verifier", "true"}};
    if (max_new_tokens) t["max_new_tokens"] = max_new_tokens;
    out += t.dump() + "\n";
  }
  return out;
}

// ---- 1. group delivery latency ---------------------------------------------
std::vector<double> GroupLatencies(const std::string& rootfs, const std::string& dir, int run) {
  Env env(dir);
  json script = json::array({Call("bash", "command", "sleep 0.5; echo ok"), Call("bash", "command", "sleep 0.5"),
                             Call("submit", "answer", "done")});
  v1::StartRolloutRequest req;
  req.set_rollout_id(fmt::format("groups-{}", run));
  req.set_tasks_jsonl(Tasks(rootfs, 50, 4, {"bash", "submit"}));
  req.mutable_policy()->set_kind("scripted");
  req.mutable_policy()->set_script(script.dump());
  req.set_concurrency(200);
  req.set_samples_per_task(8);
  auto started = env.engine->Start(req);
  if (!started.ok()) {
    std::cerr << started.status().message() << "\n";
    std::exit(1);
  }
  std::vector<double> latencies;
  uint32_t peak_running = 0;
  std::atomic<bool> done{false};
  std::thread watch([&] {
    while (!done) {
      if (auto p = env.engine->Progress(req.rollout_id()); p.ok()) peak_running = std::max(peak_running, p->running());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  v1::StreamGroupsRequest sreq;
  sreq.set_rollout_id(req.rollout_id());
  sreq.set_consumer("bench");
  sreq.set_follow(true);
  Status st = env.engine->StreamGroups(
      sreq,
      [&](const v1::EpisodeGroup& g) {
        latencies.push_back(static_cast<double>(NowUnixMs() - g.completed_unix_ms()));
        return true;
      },
      [] { return false; });
  done = true;
  watch.join();
  if (!st.ok() || latencies.size() != 50) {
    std::cerr << "groups: " << st.message() << ", " << latencies.size() << " of 50 groups\n";
    std::exit(1);
  }
  fmt::print("  run {}: 50 groups, peak {} episodes running, p50 {:.0f} ms, p99 {:.0f} ms\n", run + 1, peak_running,
             Quantile(latencies, 0.5), Quantile(latencies, 0.99));
  return latencies;
}

// ---- 2. weight updates ---------------------------------------------------
int UpdateScenario(const std::string& rootfs, const std::string& dir, int updates, const std::string& out) {
  std::string bin =
      (std::filesystem::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy").string();
  std::filesystem::create_directories(dir);
  const std::string w1 = dir + "/w1.safetensors", w2 = dir + "/w2.safetensors";
  for (auto [file, seed] : {std::pair{w1, "1"}, std::pair{w2, "2"}})
    if (testing::RunProgram({bin, "--save-weights", file, "--seed", seed}).code != 0) {
      std::cerr << "paddock-policy --save-weights failed\n";
      return 1;
    }
  int port = testing::FreeLoopbackPort();
  pid_t policy = testing::SpawnProgram({bin, "--listen", fmt::format("127.0.0.1:{}", port), "--threads", "1",
                                        "--weights", w1, "--weight-version", "w-0"},
                                       dir + "/policy.log");
  Env env(dir + "/engine");
  v1::StartRolloutRequest req;
  req.set_rollout_id("update");
  req.set_tasks_jsonl(Tasks(rootfs, 16, 30, {"bash"}, 200));
  req.mutable_policy()->set_url(fmt::format("http://127.0.0.1:{}", port));
  req.mutable_policy()->set_constrain_tools(true);
  req.mutable_policy()->set_tool_choice("required");
  req.mutable_policy()->set_unavailable_wait_s(60);
  req.mutable_sampling()->set_temperature(1.0);
  req.set_concurrency(8);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto started = env.engine->Start(req);
  if (!started.ok()) {
    std::cerr << started.status().message() << "\n";
    kill(policy, SIGTERM);
    return 1;
  }
  // The first half let generations in flight finish (the default), the second
  // half abort them (abort_in_flight) and ask them again.
  std::vector<double> paused, drain, load, paused_abort, drain_abort;
  for (int i = 1; i <= updates; ++i) {
    const bool abort = i > updates / 2;
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    v1::UpdatePolicyRequest u;
    u.set_rollout_id("update");
    u.set_weights_path(i % 2 ? w2 : w1);
    u.set_version(fmt::format("w-{}", i));
    u.set_abort_in_flight(abort);
    auto r = env.engine->UpdatePolicy(u);
    if (!r.ok()) {
      std::cerr << "update " << i << ": " << r.status().message() << "\n";
      break;
    }
    (abort ? paused_abort : paused).push_back(r->paused_ms());
    (abort ? drain_abort : drain).push_back(r->drain_ms());
    load.push_back(r->load_ms());
    fmt::print("  update {} ({}): paused {} ms (drain {}, load {}, {} aborted)\n", i, abort ? "abort" : "finish",
               r->paused_ms(), r->drain_ms(), r->load_ms(), r->aborted());
  }
  while (true) {
    auto p = env.engine->Progress("update");
    if (!p.ok() || p->state() != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(policy, SIGTERM);
  int wst = 0;
  waitpid(policy, &wst, 0);
  // No turn lost or duplicated: steps 1..n in each episode, one live call each.
  uint64_t turns = 0;
  bool contiguous = true;
  std::set<std::string> versions;
  std::map<std::string, int> stops;
  for (int t = 0; t < 16; ++t) {
    if (auto d = env.engine->GetEpisode(fmt::format("update/t{}#0", t)); d.ok()) stops[d->summary().stop_reason()]++;
    auto steps = env.log->ReadSteps(fmt::format("update/t{}#0", t));
    if (!steps.ok()) return 1;
    for (size_t i = 0; i < steps->size(); ++i) {
      contiguous &= (*steps)[i].step() == i + 1;
      versions.insert((*steps)[i].policy_response().policy_version());
    }
    turns += steps->size();
  }
  auto stats = env.engine->stats();
  fmt::print("update, aborting in flight: paused median {:.0f} ms (max {:.0f}), drain median {:.0f} ms\n",
             Quantile(paused_abort, 0.5), Quantile(paused_abort, 1.0), Quantile(drain_abort, 0.5));
  fmt::print("update, finishing in flight: {} updates, paused median {:.0f} ms (max {:.0f}), drain median {:.0f} ms, "
             "load median {:.0f} ms (all updates); "
             "{} turns, {} live policy calls, steps contiguous: {}, versions seen: {}, stop reasons: {}\n",
             paused.size(), Quantile(paused, 0.5), Quantile(paused, 1.0), Quantile(drain, 0.5), Quantile(load, 0.5),
             turns, stats.live_policy_calls, contiguous ? "yes" : "NO", versions.size(), json(stops).dump());
  std::ofstream(out + "/trainer_update.json")
      << json({{"paused_ms", paused}, {"drain_ms", drain}, {"paused_abort_ms", paused_abort},
               {"drain_abort_ms", drain_abort}, {"load_ms", load}, {"turns", turns}, {"stop_reasons", stops},
               {"live_policy_calls", stats.live_policy_calls}, {"contiguous", contiguous},
               {"versions", versions.size()}})
             .dump(2);
  return contiguous && turns == stats.live_policy_calls ? 0 : 2;
}

// ---- 3. fork ---------------------------------------------------------------
int ForkScenario(const std::string& rootfs, const std::string& dir, int runs) {
  Env env(dir);
  std::string filler;
  for (int i = 0; i < 24; ++i) filler += fmt::format("step note {} on the plan. ", i);
  json script = json::array();
  for (int t = 1; t <= 4; ++t)
    script.push_back(filler + Call("bash", "command", fmt::format("echo turn{} >> /tmp/work; echo ok", t)));
  script.push_back(Call("bash", "command", "wc -l < /tmp/work"));
  script.push_back(Call("submit", "answer", "done"));
  json task = {{"id", "parent"}, {"image", rootfs}, {"substrate", "container"}, {"instruction", "work in turns"},
               {"tools", {"bash", "submit"}}, {"max_turns", 8}, {"verifier", "test $(wc -l < /tmp/work) = 5"}};
  v1::StartRolloutRequest req;
  req.set_rollout_id("fork-parent");
  req.set_tasks_jsonl(task.dump() + "\n");
  req.mutable_policy()->set_kind("scripted");
  req.mutable_policy()->set_script(script.dump());
  req.set_concurrency(1);
  if (!env.engine->Start(req).ok()) return 1;
  while (env.engine->Progress("fork-parent")->state() == "running")
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto steps = env.log->ReadSteps("fork-parent/parent#0");
  uint64_t tokens = 0;
  for (size_t i = 0; i < 4 && i < steps->size(); ++i) tokens += (*steps)[i].policy_response().token_ids_size();
  fmt::print("fork: parent episode {} turns, {} generated tokens in its first 4\n", steps->size(), tokens);
  std::vector<double> all_running;
  for (int run = 0; run < runs; ++run) {
    v1::ForkEpisodeRequest fr;
    fr.set_episode_id("fork-parent/parent#0");
    fr.set_at_step(4);
    fr.set_samples(16);
    fr.set_rollout_id(fmt::format("fork-{}", run));
    auto t0 = Clock::now();
    auto f = env.engine->Fork(fr);
    if (!f.ok()) {
      std::cerr << f.status().message() << "\n";
      return 1;
    }
    // Past the fork point: the episode's turn 5 answered (turns >= 5).
    double t_running = -1;
    while (true) {
      int past = 0;
      for (int i = 0; i < 16; ++i) {
        auto d = env.engine->GetEpisode(fmt::format("{}/parent#{}", fr.rollout_id(), i));
        past += d.ok() && (d->summary().turns() >= 5 || d->summary().state() == "finished");
      }
      if (past == 16 && t_running < 0) t_running = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      auto p = env.engine->Progress(fr.rollout_id());
      if (p.ok() && p->state() != "running") {
        if (p->done() != 16) std::cerr << "fork: " << p->done() << " of 16 finished\n";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    double total = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    all_running.push_back(t_running);
    fmt::print("  run {}: all 16 forks past the fork point after {:.0f} ms, all finished after {:.0f} ms\n", run + 1,
               t_running, total);
  }
  fmt::print("fork: 16 forks of a {}-token 4-turn container episode, all running: median {:.0f} ms (max {:.0f})\n",
             tokens, Quantile(all_running, 0.5), Quantile(all_running, 1.0));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trainer_bench: group delivery latency at 200 concurrent episodes, and weight updates with the "
               "embedded engine (bench/README.md, \"trainer_bench\")"};
  int runs = 3, updates = 10;
  std::string out = "bench/results", work = "/var/tmp/paddock-trainer-bench", only;
  app.add_option("--runs", runs, "runs of the group scenario")->capture_default_str();
  app.add_option("--updates", updates, "weight updates in the update scenario")->capture_default_str();
  app.add_option("--out", out, "where the CDF data and gnuplot script go")->capture_default_str();
  app.add_option("--work", work, "scratch directory (removed)")->capture_default_str();
  app.add_option("--only", only, "groups | update | fork");
  CLI11_PARSE(app, argc, argv);
  std::filesystem::create_directories(out);
  std::string rootfs = testing::EnsureBusyboxRootfs();
  int rc = 0;
  if (only.empty() || only == "groups") {
    fmt::print("groups: 50 tasks x 8 samples, 200 concurrent episodes, consumer following StreamGroups\n");
    std::vector<double> all;
    for (int r = 0; r < runs; ++r) {
      auto l = GroupLatencies(rootfs, work + "/groups", r);
      all.insert(all.end(), l.begin(), l.end());
    }
    fmt::print("groups: {} groups, delivery latency p50 {:.0f} ms, p90 {:.0f} ms, p99 {:.0f} ms, max {:.0f} ms\n",
               all.size(), Quantile(all, 0.5), Quantile(all, 0.9), Quantile(all, 0.99), Quantile(all, 1.0));
    std::sort(all.begin(), all.end());
    std::ofstream dat(out + "/cdf_group_delivery.dat");
    for (size_t i = 0; i < all.size(); ++i) dat << all[i] << " " << (i + 1.0) / all.size() << "\n";
    std::ofstream(out + "/trainer_plots.gp")
        << "# Generated by trainer_bench; run in this directory: gnuplot trainer_plots.gp\n"
           "set terminal pngcairo size 800,500 font 'sans,10' noenhanced\n"
           "set output '../group_delivery_cdf.png'\n"
           "set title 'group delivery latency: last sample ended -> group at the consumer (200 concurrent episodes)'\n"
           "set grid\nset key bottom right\nset xlabel 'ms'\nset ylabel 'fraction <= x'\nset yrange [0:1]\n"
           "set arrow from 50, graph 0 to 50, graph 1 nohead dt 2\n"
           "plot 'cdf_group_delivery.dat' using 1:2 with steps lw 2 title 'StreamGroups (follow, with export lines)'\n";
  }
  if (only.empty() || only == "update") rc = UpdateScenario(rootfs, work + "/update", updates, out);
  if (only.empty() || only == "fork") rc |= ForkScenario(rootfs, work + "/fork", runs);
  return rc;
}
