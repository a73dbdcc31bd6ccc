// rollout_bench: the rollout engine's targets (issue 8), in process on real
// parts — a SandboxManager with the function and container substrates over
// the busybox test rootfs, the trajectory log on RocksDB (durable group
// commit), the real V4 tokenizer, encoder and DSML decoder. The policy is the
// scripted in-process one, which answers at once: what is left of a turn
// besides the tool is the engine's own cost.
//
//  1. overhead: per turn, episode wall time minus sandbox start, setup,
//     policy, tool and verifier time, divided by turns; median over episodes,
//     at concurrency 1 and 64. Peers measured in the same run: the trivial
//     tool itself (`/bin/sh -c true` exec on a live function sandbox), and the
//     same rollouts with every log write synced (LogOptions::deferred_writes
//     off), with the syncs per turn of each.
//  2. density: 500 concurrent episodes on function sandboxes and 200 on
//     containers, each 3 turns of `sleep 1`; all must finish; reports the
//     peak running episodes and the process RSS (this process is the engine,
//     manager and log: what paddockd holds for them).
//  3. resume: a 200-episode rollout (8 turns each) interrupted when half its
//     tool calls ran (the engine is destroyed, its sandboxes with it), then a
//     new engine on the same log resumes it: time until the first live policy
//     call ("new work runs"), and until every episode finished.
#include <fstream>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "replay/trajectory_log.h"
#include "rollout/engine/rollout_engine.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "tests/support/test_rootfs.h"

using namespace paddock;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

std::string Call(const std::string& tool, const std::string& k, const std::string& v) {
  return "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool + "\">\n<｜DSML｜parameter name=\"" + k +
         "\" string=\"true\">" + v + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
}

std::string Script(int turns, const std::string& cmd) {
  json a = json::array();
  for (int i = 0; i < turns; ++i) a.push_back(Call("bash", "command", cmd));
  a.push_back(Call("submit", "answer", "done"));
  return a.dump();
}

std::string Tasks(const std::string& rootfs, int n, const std::string& substrate, int max_turns) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += json({{"id", fmt::format("t{}", i)}, {"image", rootfs}, {"substrate", substrate},
                 {"instruction", "run the commands"}, {"tools", {"bash", "submit"}}, {"max_turns", max_turns},
                 {"verifier", "true"}})
               .dump() +
           "\n";
  return out;
}

uint64_t RssBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Env {
  std::string rootfs, dir;
  size_t blocking_threads = rollout::EngineOptions{}.blocking_threads;
  std::unique_ptr<SandboxManager> manager;
  std::unique_ptr<replay::TrajectoryLog> log;
  std::unique_ptr<rollout::RolloutEngine> engine;
};

// `deferred_writes` false: every log write waits for its sync (the peer of
// the overhead scenario).
void Open(Env& e, const std::string& log_dir, bool deferred_writes = true) {
  SubstrateEnv env;
  env.state_dir = e.dir + "/state";
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 8;
  std::filesystem::create_directories(env.state_dir);
  e.manager = std::make_unique<SandboxManager>(ManagerOptions{.max_sandboxes = 2000});
  e.manager->RegisterSubstrate(MakeFunctionSubstrate(env));
  e.manager->RegisterSubstrate(MakeContainerSubstrate(env));
  replay::LogOptions lo;
  lo.dir = log_dir;
  lo.deferred_writes = deferred_writes;
  auto log = replay::TrajectoryLog::Open(lo);
  if (!log.ok()) {
    std::cerr << "log: " << log.status().message() << "\n";
    std::exit(1);
  }
  e.log = std::move(*log);
  rollout::EngineOptions options;
  options.blocking_threads = e.blocking_threads;
  e.engine = std::make_unique<rollout::RolloutEngine>(*e.manager, *e.log, options);
}

void Close(Env& e) {
  e.engine.reset();
  e.manager->Shutdown();
  e.manager.reset();
  e.log.reset();
}

v1::StartRolloutRequest Request(const std::string& id, const std::string& tasks, const std::string& script, int conc) {
  v1::StartRolloutRequest r;
  r.set_rollout_id(id);
  r.set_tasks_jsonl(tasks);
  r.mutable_policy()->set_kind("scripted");
  r.mutable_policy()->set_script(script);
  r.set_concurrency(conc);
  return r;
}

// Waits for the rollout to stop; returns the last progress and the peak running.
std::pair<v1::RolloutProgress, uint32_t> Wait(rollout::RolloutEngine& eng, const std::string& id, uint64_t* peak_rss) {
  uint32_t peak = 0;
  while (true) {
    auto p = eng.Progress(id);
    if (!p.ok()) {
      std::cerr << p.status().message() << "\n";
      std::exit(1);
    }
    peak = std::max(peak, p->running());
    if (peak_rss) *peak_rss = std::max(*peak_rss, RssBytes());
    if (p->state() != "running") return {*p, peak};
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rollout_bench: rollout engine overhead, density and resume (bench/README.md, rollout_bench)"};
  std::string rootfs, dir = "/var/tmp/paddock-rollout-bench", scenarios = "overhead,density,resume", log_dir;
  int overhead_turns = 20, function_n = 500, container_n = 200, resume_n = 200;
  app.add_option("--rootfs", rootfs, "busybox rootfs (default: the test rootfs)");
  app.add_option("--dir", dir, "work directory (state, logs)")->capture_default_str();
  app.add_option("--scenarios", scenarios, "overhead,density,resume")->capture_default_str();
  app.add_option("--log-dir", log_dir, "trajectory log directory (default DIR/log; e.g. /dev/shm/x to leave out fsync)");
  app.add_option("--overhead-turns", overhead_turns)->capture_default_str();
  size_t blocking_threads = rollout::EngineOptions{}.blocking_threads;
  app.add_option("--blocking-threads", blocking_threads,
                 "the engine's pool (EngineOptions::blocking_threads): sandbox calls and log writes")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--function-episodes", function_n)->capture_default_str();
  app.add_option("--container-episodes", container_n)->capture_default_str();
  app.add_option("--resume-episodes", resume_n)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (rootfs.empty()) rootfs = testing::EnsureBusyboxRootfs();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto want = [&](const char* s) { return scenarios.find(s) != std::string::npos; };
  json results = json::object();

  Env e;
  e.blocking_threads = blocking_threads;
  e.rootfs = rootfs;
  e.dir = dir;
  if (log_dir.empty()) log_dir = dir + "/log";
  std::filesystem::remove_all(log_dir);
  Open(e, log_dir);
  std::printf("log at %s\n\n", log_dir.c_str());
  std::printf("| measurement | value |\n| --- | ---: |\n");

  if (want("overhead")) {
    // Peer: the trivial tool on a live function sandbox.
    auto info = e.manager->Create(SandboxSpec{.substrate = "function", .image = rootfs});
    auto sb = e.manager->Get(info->id);
    std::vector<double> tool_ms;
    for (int i = 0; i < 200; ++i) {
      ExecRequest r;
      r.argv = {"/bin/sh", "-c", "true"};
      auto t0 = Clock::now();
      (void)(*sb)->Exec(r, nullptr);
      tool_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    (void)e.manager->Destroy(info->id);
    double tool_med = Median(tool_ms);
    std::printf("| trivial tool (`sh -c true` exec, function sandbox), median | %.3f ms |\n", tool_med);
    // The engine as it is (two synced log writes per turn), then with every
    // log write synced (four per turn: the policy call's intent and result
    // wait too), on a log of its own in the same directory's filesystem.
    for (bool deferred : {true, false}) {
      if (!deferred) {
        Close(e);
        std::filesystem::remove_all(log_dir + "-synced");
        Open(e, log_dir + "-synced", /*deferred_writes=*/false);
      }
      for (int conc : {1, 64}) {
        int n = conc == 1 ? 16 : 128;
        std::string id = fmt::format("overhead-c{}", conc);
        replay::CommitStats before = e.log->GetCommitStats();
        auto st = e.engine->Start(Request(id, Tasks(rootfs, n, "function", overhead_turns + 2),
                                          Script(overhead_turns, "true"), conc));
        if (!st.ok()) {
          std::cerr << st.status().message() << "\n";
          return 1;
        }
        auto started_at = Clock::now();
        auto [p, peak] = Wait(*e.engine, id, nullptr);
        double wall_s = std::chrono::duration<double>(Clock::now() - started_at).count();
        replay::CommitStats after = e.log->GetCommitStats();
        std::vector<double> per_turn;
        double turns = 0;
        Status x = e.engine->Export(id, false, [&](const std::string& line) {
          json l = json::parse(line);
          auto& t = l["timings_us"];
          double other = t["total"].get<double>() - t["sandbox_start"].get<double>() - t["setup"].get<double>() -
                         t["policy"].get<double>() - t["tools"].get<double>() - t["verifier"].get<double>();
          per_turn.push_back(other / 1000.0 / l["turns"].get<double>());
          turns += l["turns"].get<double>();
          return true;
        });
        double med = Median(per_turn);
        const char* mode = deferred ? "" : ", every log write synced";
        std::printf("| orchestration overhead per turn, concurrency %d (%d episodes × %d turns)%s, median | %.3f ms (%.2f× the tool; %.1f syncs/turn; %.0f turns/s) |\n",
                    conc, n, overhead_turns + 1, mode, med, med / tool_med,
                    double(after.syncs - before.syncs) / std::max(1.0, turns), turns / wall_s);
        results[fmt::format("overhead_ms_c{}{}", conc, deferred ? "" : "_all_synced")] = med;
        if (p.done() != static_cast<uint32_t>(n)) std::printf("| !! overhead c%d: %u of %d finished |\n", conc, p.done(), n);
      }
    }
    Close(e);
    std::filesystem::remove_all(log_dir + "-synced");
    Open(e, log_dir);
    results["tool_ms"] = tool_med;
  }

  if (want("density")) {
    for (auto [substrate, n] : {std::pair<std::string, int>{"function", function_n}, {"container", container_n}}) {
      std::string id = "density-" + substrate;
      uint64_t rss0 = RssBytes(), peak_rss = rss0;
      auto t0 = Clock::now();
      auto st = e.engine->Start(Request(id, Tasks(rootfs, n, substrate, 5), Script(3, "sleep 1"), n));
      if (!st.ok()) {
        std::cerr << st.status().message() << "\n";
        return 1;
      }
      auto [p, peak] = Wait(*e.engine, id, &peak_rss);
      double s = std::chrono::duration<double>(Clock::now() - t0).count();
      std::printf("| %d %s episodes at once (3 turns of `sleep 1`): finished / failed / peak running | %u / %u / %u in %.1f s |\n",
                  n, substrate.c_str(), p.done(), p.failed(), peak, s);
      std::printf("| … process RSS before → peak | %.0f → %.0f MiB |\n", rss0 / 1048576.0, peak_rss / 1048576.0);
      results["density_" + substrate] = {{"n", n}, {"done", p.done()}, {"failed", p.failed()}, {"peak_running", peak},
                                         {"seconds", s}, {"rss_before", rss0}, {"rss_peak", peak_rss}};
    }
  }

  if (want("resume")) {
    const int kTurns = 8;
    std::string id = "resume";
    auto st = e.engine->Start(Request(id, Tasks(rootfs, resume_n, "function", kTurns + 2),
                                      Script(kTurns, "sleep 0.05"), resume_n));
    if (!st.ok()) {
      std::cerr << st.status().message() << "\n";
      return 1;
    }
    uint64_t base = e.engine->stats().live_tool_calls;
    uint64_t half = base + static_cast<uint64_t>(resume_n) * (kTurns + 1) / 2;
    while (e.engine->stats().live_tool_calls < half) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    uint64_t ran = e.engine->stats().live_tool_calls - base;
    // Interrupted: the engine goes (in-flight steps finish), sandboxes with it.
    e.engine.reset();
    e.engine = std::make_unique<rollout::RolloutEngine>(*e.manager, *e.log);
    v1::ResumeRolloutRequest rq;
    rq.set_rollout_id(id);
    auto t0 = Clock::now();
    auto r = e.engine->Resume(rq);
    if (!r.ok()) {
      std::cerr << r.status().message() << "\n";
      return 1;
    }
    while (e.engine->stats().last_resume_to_live_us < 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    double first_live_ms = e.engine->stats().last_resume_to_live_us / 1000.0;
    auto [p, peak] = Wait(*e.engine, id, nullptr);
    double all_s = std::chrono::duration<double>(Clock::now() - t0).count();
    auto s = e.engine->stats();
    std::printf("| resume of %d episodes interrupted at %llu of %d tool calls: until new work runs | %.1f ms |\n", resume_n,
                static_cast<unsigned long long>(ran), resume_n * (kTurns + 1), first_live_ms);
    std::printf("| … replayed policy / tool calls, re-applied to rebuild; finished | %llu / %llu, %llu; %u of %d in %.1f s |\n",
                static_cast<unsigned long long>(s.replayed_policy_calls),
                static_cast<unsigned long long>(s.replayed_tool_calls),
                static_cast<unsigned long long>(s.reapplied_tool_calls), p.done(), resume_n, all_s);
    results["resume"] = {{"first_live_ms", first_live_ms}, {"all_s", all_s}, {"done", p.done()}};
  }
  Close(e);
  if (!log_dir.empty() && log_dir.rfind(dir, 0) != 0) std::filesystem::remove_all(log_dir);
  std::ofstream(dir + "/results.json") << results.dump(2) << "\n";
  return 0;
}
