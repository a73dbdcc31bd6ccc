// fleet_sim_bench: the real front at a scale this machine cannot host, against
// SIMULATED nodes (rollout/fleet/sim_node.h: in-process records that answer
// the node calls after a configured latency; no sandbox runs anywhere).
//
// Real: the Fleet (heartbeat per node, states, placement, creation rate,
// leases), RemoteSandbox, the SandboxManager, the rollout engine with the real
// V4 tokenizer, encoder and DSML decoder, and the trajectory log on RocksDB
// (group commit, on disk). Scripted: the policy (a fixed tool call per turn,
// answered after a latency drawn from --policy-ms, 1–10 s by default).
//
//   place    the front's create (SandboxManager::Create → Fleet::Create →
//            placement → the node's create) with 10 and with 1,000 nodes, the
//            node's create a fixed 1 ms: latency p50/p99; and 1,000 creates at
//            once on 1,000 nodes (what re-placing a lost node's episodes asks)
//   scale    a rollout of E episodes in flight for each E of --episodes over
//            --nodes nodes: turns/s, front CPU per turn (getrusage of the
//            whole process: the simulated nodes' share is their sleeps),
//            log syncs/s, RSS and its slope per episode, minus the token
//            context the episodes hold
//   loss     at the largest E, --kill nodes crash at once: time until the front
//            lists them lost, then until every episode they held runs again:
//            its first call answered on a new sandbox on another node (seen on
//            the simulated nodes; the tasks' one setup command, `true`, is that
//            call when the sandbox is rebuilt ahead of the episode's next
//            turn), and the turns/s while the front waits for the verdict.
//            --loss-concentrated: the rollout's episodes are all placed on the
//            --kill victims first (the other nodes open once all are placed),
//            so that E = 1,000 loses all 1,000
//
// A markdown table on stdout, JSON with --json FILE; progress on stderr.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <set>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "replay/trajectory_log.h"
#include "rollout/engine/rollout_engine.h"
#include "rollout/fleet/fleet.h"
#include "rollout/fleet/sim_node.h"
#include "sandbox/manager.h"

using namespace paddock;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

double Secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t RssBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(v.size() * p))];
}

std::string Call(const std::string& tool, const std::string& k, const std::string& v) {
  return "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool + "\">\n<｜DSML｜parameter name=\"" + k +
         "\" string=\"true\">" + v + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
}

fleet::SimLatency Range(const std::vector<int>& v, int scale_us) {
  fleet::SimLatency l;
  l.min = std::chrono::microseconds(int64_t{v.at(0)} * scale_us);
  l.max = std::chrono::microseconds(int64_t{v.size() > 1 ? v[1] : v[0]} * scale_us);
  return l;
}

struct Front {
  std::shared_ptr<fleet::SimFleet> sim;
  std::unique_ptr<fleet::Fleet> fleet;
  std::unique_ptr<SandboxManager> manager;
};

Front MakeFront(int nodes, fleet::SimNodeOptions no, int heartbeat_ms, double create_rate, uint32_t max_sandboxes,
                bool labels = false) {
  Front f;
  f.sim = std::make_shared<fleet::SimFleet>(fleet::SimFleetOptions{.label_sandboxes = labels});
  for (int i = 0; i < nodes; ++i) f.sim->Add(fmt::format("sim-{}:7443", i), no);
  fleet::FleetOptions fo;
  fo.nodes = f.sim->Spec();
  fo.transport = f.sim;
  fo.token = "sim";
  fo.heartbeat = std::chrono::milliseconds(heartbeat_ms);
  fo.creates_per_second = create_rate;
  fo.front_id = "bench-front";
  auto started = fleet::Fleet::Start(fo);
  if (!started.ok()) {
    std::fprintf(stderr, "fleet: %s\n", started.status().message().c_str());
    std::exit(1);
  }
  f.fleet = std::move(*started);
  if (!f.fleet->WaitForReady(nodes, std::chrono::seconds(60))) {
    std::fprintf(stderr, "fleet: the simulated nodes did not all turn ready\n");
    std::exit(1);
  }
  f.manager = std::make_unique<SandboxManager>(ManagerOptions{.max_sandboxes = max_sandboxes});
  for (const char* s : {"function", "container"}) f.manager->RegisterSubstrate(fleet::MakeFleetSubstrate(*f.fleet, s));
  return f;
}

void StopFront(Front& f) {
  f.manager->Shutdown();
  f.manager.reset();
  f.fleet.reset();
  f.sim.reset();
}

// Creates (and destroys) `total` sandboxes from `threads` threads; per-create latency in µs.
std::vector<double> TimeCreates(SandboxManager& m, int total, int threads, bool destroy) {
  std::vector<std::vector<double>> per(threads);
  std::atomic<int> next{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      while (next.fetch_add(1) < total) {
        SandboxSpec spec;
        spec.substrate = "function";
        spec.image = "busybox:1";
        auto t0 = Clock::now();
        auto made = m.Create(spec);
        per[t].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        if (!made.ok()) {
          std::fprintf(stderr, "create: %s\n", made.status().message().c_str());
          std::exit(1);
        }
        if (destroy) (void)m.Destroy(made->id);
      }
    });
  for (auto& t : ts) t.join();
  std::vector<double> all;
  for (auto& p : per) all.insert(all.end(), p.begin(), p.end());
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fleet_sim_bench: the real front against SIMULATED nodes (bench/README.md, fleet_sim_bench)"};
  int nodes = 1000, node_cap = 250, kill = 10, heartbeat_ms = 500, lease_ms = 2000, measure_s = 20, warmup_s = -1;
  int tasks = 100, max_turns = 100, max_tokens = 8192, place_creates = 3000;
  double create_rate = 50;
  bool loss_concentrated = false;
  size_t relocation_threads = rollout::EngineOptions{}.relocation_threads;
  std::vector<int> episodes{1000, 10000, 100000}, policy_ms{1000, 10000}, exec_us{1000, 5000},
      create_us{1000, 3000};
  std::string dir = "/var/tmp/paddock-fleet-sim-bench", json_out, scenarios = "place,scale,loss", log_level = "error";
  app.add_option("--nodes", nodes, "simulated nodes for scale and loss")->capture_default_str();
  app.add_option("--node-cap", node_cap, "sandboxes per simulated node")->capture_default_str();
  app.add_option("--episodes", episodes, "episodes in flight, one rollout per value, ascending")->capture_default_str();
  app.add_option("--policy-ms", policy_ms, "the scripted policy's latency per turn: MIN MAX (ms)")->expected(1, 2)->capture_default_str();
  app.add_option("--exec-us", exec_us, "a simulated exec: MIN MAX (µs)")->expected(1, 2)->capture_default_str();
  app.add_option("--create-us", create_us, "a simulated create: MIN MAX (µs)")->expected(1, 2)->capture_default_str();
  app.add_option("--kill", kill, "nodes crashed at the largest episode count (0: no loss scenario)")->capture_default_str();
  app.add_option("--heartbeat-ms", heartbeat_ms)->capture_default_str();
  app.add_flag("--loss-concentrated", loss_concentrated,
               "place the loss rollout's episodes on the --kill victims only (then open the other nodes)");
  app.add_option("--relocation-threads", relocation_threads, "the engine's eager rebuilds at once")->capture_default_str();
  app.add_option("--lease-ms", lease_ms, "the simulated nodes' front lease")->capture_default_str();
  app.add_option("--create-rate", create_rate, "the front's creates per second per node")->capture_default_str();
  app.add_option("--measure-s", measure_s, "measured window per episode count")->capture_default_str();
  app.add_option("--warmup-s", warmup_s, "after every episode has its sandbox (-1: the policy's max latency + 2 s)");
  app.add_option("--tasks", tasks, "tasks (episodes are samples of them)")->capture_default_str();
  app.add_option("--max-turns", max_turns)->capture_default_str();
  app.add_option("--max-tokens", max_tokens)->capture_default_str();
  app.add_option("--place-creates", place_creates, "creates per placement row")->capture_default_str();
  app.add_option("--dir", dir, "work directory (the trajectory log)")->capture_default_str();
  app.add_option("--scenarios", scenarios)->capture_default_str();
  app.add_option("--json", json_out, "write the results as JSON here");
  app.add_option("--log-level", log_level)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));
  std::sort(episodes.begin(), episodes.end());
  if (warmup_s < 0) warmup_s = policy_ms.back() / 1000 + 2;
  auto want = [&](const char* s) { return scenarios.find(s) != std::string::npos; };
  json results = json::object();
  results["config"] = {{"nodes", nodes}, {"policy_ms", policy_ms}, {"exec_us", exec_us}, {"create_us", create_us},
                       {"heartbeat_ms", heartbeat_ms}, {"lease_ms", lease_ms}, {"measure_s", measure_s},
                       {"create_rate", create_rate}};
  std::printf("SIMULATED nodes (rollout/fleet/sim_node.h); the front, engine and log are real.\n\n");

  // ---- place ---------------------------------------------------------------
  if (want("place")) {
    std::printf("| placement: the front's create, node create 1 ms (simulated) | p50 | p99 |\n| --- | ---: | ---: |\n");
    for (int n : {10, 1000}) {
      fleet::SimNodeOptions no;
      no.create = {std::chrono::microseconds(1000), std::chrono::microseconds(1000)};
      no.max_sandboxes = 1000;
      std::fprintf(stderr, "place: %d nodes...\n", n);
      // The rate is lifted here: with 10 nodes the default 50/s per node, not
      // placement, would set the latency.
      Front f = MakeFront(n, no, 1000, 1e6, 250000);
      TimeCreates(*f.manager, 200, 8, true);  // warm-up
      auto us = TimeCreates(*f.manager, place_creates, 8, true);
      std::printf("| %d nodes, 8 creates at a time (%d) | %.0f µs | %.0f µs |\n", n, place_creates, Pct(us, 0.5),
                  Pct(us, 0.99));
      results["place"][std::to_string(n)] = {{"p50_us", Pct(us, 0.5)}, {"p99_us", Pct(us, 0.99)}};
      if (n == 1000) {
        auto t0 = Clock::now();
        auto burst = TimeCreates(*f.manager, 1000, 64, false);
        double s = Secs(Clock::now() - t0);
        std::printf("| 1,000 creates at once (64 threads) on 1,000 nodes, default rate 50/s/node: all placed in | %.0f ms | (p99 %.0f µs) |\n",
                    s * 1000, Pct(burst, 0.99));
        results["replace_capacity_ms"] = s * 1000;
      }
      StopFront(f);
    }
    std::printf("\n");
  }

  // ---- scale and loss ------------------------------------------------------
  if (want("scale")) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    fleet::SimNodeOptions no;
    no.max_sandboxes = node_cap;
    no.exec = Range(exec_us, 1);
    no.create = Range(create_us, 1);
    no.front_lease = std::chrono::milliseconds(lease_ms);
    std::fprintf(stderr, "scale: starting %d simulated nodes...\n", nodes);
    const uint64_t rss_empty = RssBytes();
    const bool concentrate = want("loss") && kill > 0 && loss_concentrated;
    std::vector<fleet::SimNode*> victims;  // crashed in the loss scenario: spread over the address range
    auto victim_index = [&](int i) { return i * (nodes / std::max(1, kill)); };
    Front f = MakeFront(nodes, no, heartbeat_ms, create_rate, 250000, want("loss") && kill > 0);
    for (int i = 0; i < kill && want("loss"); ++i) victims.push_back(f.sim->Find(fmt::format("sim-{}:7443", victim_index(i))));
    if (concentrate) {
      const uint32_t per = static_cast<uint32_t>((episodes.back() + kill - 1) / kill);
      std::set<fleet::SimNode*> vs(victims.begin(), victims.end());
      for (int i = 0; i < nodes; ++i) {
        auto* n = f.sim->Find(fmt::format("sim-{}:7443", i));
        n->SetCapacity(vs.count(n) ? per : 0);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(3 * heartbeat_ms));
    }
    replay::LogOptions lo;
    lo.dir = dir + "/log";
    // A small memtable, so that its filling does not pass for memory per episode.
    lo.write_buffer_size = 8 << 20;
    auto log = replay::TrajectoryLog::Open(lo);
    if (!log.ok()) {
      std::fprintf(stderr, "log: %s\n", log.status().message().c_str());
      return 1;
    }
    rollout::EngineOptions eo;
    eo.relocation_threads = relocation_threads;
    auto engine = std::make_unique<rollout::RolloutEngine>(*f.manager, **log, eo);
    const uint64_t rss_base = RssBytes();
    std::fprintf(stderr, "  RSS: %.0f MiB before the front, %.0f MiB with %d nodes and the engine\n",
                 rss_empty / 1048576.0, rss_base / 1048576.0, nodes);
    // The front's own cost with no episode: heartbeats of every node.
    double idle_cores = 0;
    {
      double c0 = CpuSeconds();
      auto t0 = Clock::now();
      std::this_thread::sleep_for(std::chrono::seconds(5));
      idle_cores = (CpuSeconds() - c0) / Secs(Clock::now() - t0);
      std::printf("front CPU with %d nodes and no episode (heartbeats every %d ms): %.3f cores\n\n", nodes, heartbeat_ms,
                  idle_cores);
      results["idle_cores"] = idle_cores;
    }
    json script = {{"completions", {Call("bash", "command", "echo {turn}")}}, {"latency_ms", {policy_ms.front(), policy_ms.back()}}};
    std::string tasks_jsonl;
    for (int i = 0; i < tasks; ++i)
      tasks_jsonl += json({{"id", fmt::format("t{}", i)}, {"image", "busybox:1"}, {"substrate", "function"},
                           {"instruction", "run the commands"}, {"tools", {"bash", "submit"}}, {"setup", {"true"}},
                           {"max_turns", max_turns}, {"max_tokens", max_tokens}, {"verifier", "true"}})
                         .dump() +
                     "\n";
    std::printf("| episodes in flight | turns/s | front CPU per turn | … less the idle heartbeats | CPU used | log syncs/s | RSS | context tokens/episode | ramp (all placed) |\n");
    std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    std::vector<std::pair<double, double>> rss_points;  // (episodes, RSS − context bytes)
    for (size_t k = 0; k < episodes.size(); ++k) {
      const int e = episodes[k];
      const std::string rid = fmt::format("scale-{}", e);
      v1::StartRolloutRequest r;
      r.set_rollout_id(rid);
      r.set_tasks_jsonl(tasks_jsonl);
      r.set_samples_per_task(std::max(1, e / tasks));
      r.set_concurrency(e);
      r.set_episode_deadline_s(3600);
      r.mutable_policy()->set_kind("scripted");
      r.mutable_policy()->set_script(script.dump());
      r.mutable_policy()->set_max_in_flight(e);
      const uint64_t creates0 = f.sim->creates_total();
      std::fprintf(stderr, "scale: %d episodes: starting...\n", e);
      auto t_start = Clock::now();
      auto st = engine->Start(r);
      if (!st.ok()) {
        std::fprintf(stderr, "start: %s\n", st.status().message().c_str());
        return 1;
      }
      while (f.sim->creates_total() - creates0 < static_cast<uint64_t>(e)) {
        if (Clock::now() - t_start > std::chrono::seconds(600)) {
          std::fprintf(stderr, "  only %llu of %d placed after 600 s\n",
                       static_cast<unsigned long long>(f.sim->creates_total() - creates0), e);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      double ramp_s = Secs(Clock::now() - t_start);
      std::fprintf(stderr, "  all placed in %.1f s; warm-up %d s...\n", ramp_s, warmup_s);
      if (concentrate) {
        // Every episode is on a victim: the other nodes open for the re-placement.
        for (int i = 0; i < nodes; ++i) f.sim->Find(fmt::format("sim-{}:7443", i))->SetCapacity(node_cap);
        std::fprintf(stderr, "  (concentrated: the other %d nodes open now)\n", nodes - kill);
      }
      std::this_thread::sleep_for(std::chrono::seconds(warmup_s));
      auto s0 = engine->stats();
      auto c0 = (*log)->GetCommitStats();
      double cpu0 = CpuSeconds();
      auto t0 = Clock::now();
      uint64_t rss_sum = 0, rss_n = 0;
      while (Clock::now() - t0 < std::chrono::seconds(measure_s)) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        rss_sum += RssBytes();
        ++rss_n;
      }
      double wall = Secs(Clock::now() - t0);
      double cpu = CpuSeconds() - cpu0;
      auto s1 = engine->stats();
      auto c1 = (*log)->GetCommitStats();
      double turns = static_cast<double>(s1.turns - s0.turns);
      uint64_t rss = rss_sum / std::max<uint64_t>(1, rss_n);
      // The token context the episodes hold: a sample's logged steps (prompt
      // deltas and outputs), as int32 ids in the context and the copy of the
      // request the engine keeps while a policy call is out.
      // An episode with no turn logged yet holds its prompt: the first
      // step's prompt of another episode (the tasks' prompts are alike).
      double ctx_tokens = 0, prompt_tokens = 0;
      int sampled = 0;
      std::vector<double> per;
      for (int i = 0; i < 40; ++i) {
        auto d = engine->GetEpisode(fmt::format("{}/t{}#{}", rid, (i * 7) % tasks, (i * 13) % std::max(1, e / tasks)));
        if (!d.ok()) continue;
        double t = 0;
        for (const auto& s : d->steps()) {
          if (s.step() == 1) prompt_tokens = std::max<double>(prompt_tokens, s.policy_request().prompt_token_ids_size());
          t += s.policy_request().prompt_token_ids_size() + s.policy_response().token_ids_size();
        }
        per.push_back(t);
      }
      for (double t : per) {
        ctx_tokens += t > 0 ? t : prompt_tokens;
        ++sampled;
      }
      if (sampled) ctx_tokens /= sampled;
      const double ctx_bytes = ctx_tokens * 4 * 2;
      const double marginal = turns ? (cpu - idle_cores * wall) / turns * 1e6 : 0;
      std::printf("| %d | %.0f | %.0f µs | %.0f µs | %.2f cores | %.0f | %.0f MiB | %.0f | %.1f s |\n", e, turns / wall,
                  turns ? cpu / turns * 1e6 : 0, marginal, cpu / wall, (c1.syncs - c0.syncs) / wall, rss / 1048576.0,
                  ctx_tokens, ramp_s);
      std::fflush(stdout);
      results["scale"][std::to_string(e)] = {{"turns_per_s", turns / wall}, {"cpu_us_per_turn", turns ? cpu / turns * 1e6 : 0}, {"marginal_cpu_us_per_turn", marginal},
                                             {"cores", cpu / wall}, {"syncs_per_s", (c1.syncs - c0.syncs) / wall},
                                             {"rss_bytes", rss}, {"context_tokens", ctx_tokens}, {"ramp_s", ramp_s},
                                             {"running", s1.running_episodes}};
      rss_points.emplace_back(e, static_cast<double>(rss) - ctx_bytes * e);

      if (want("loss") && kill > 0 && k + 1 == episodes.size()) {
        // Crash `kill` nodes at once; follow every episode they held until its
        // first call is answered on another node.
        std::vector<std::string> affected_eps;
        for (auto* n : victims)
          for (auto& e : n->Episodes()) affected_eps.push_back(std::move(e));
        const uint32_t affected = static_cast<uint32_t>(affected_eps.size());
        std::set<std::string> victim_addrs;
        for (auto* n : victims) victim_addrs.insert(n->address());
        const auto es0 = engine->stats();
        f.sim->TrackFirstExecs(affected_eps, std::vector<std::string>(victim_addrs.begin(), victim_addrs.end()));
        auto t_kill = Clock::now();
        for (auto* n : victims) n->Kill();
        std::fprintf(stderr, "loss: %d nodes killed holding %u episodes' sandboxes\n", kill, affected);
        size_t lost_now = 0;
        std::optional<Clock::time_point> t_first_lost;
        while (Clock::now() - t_kill < std::chrono::seconds(60)) {
          lost_now = 0;
          for (const auto& s : f.fleet->List())
            if (victim_addrs.count(s.address) && s.state == "lost") ++lost_now;
          if (lost_now && !t_first_lost) t_first_lost = Clock::now();
          if (lost_now == victims.size()) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        auto t_detect = Clock::now();
        const auto es1 = engine->stats();
        double detect_s = Secs(t_detect - t_kill);
        double first_lost_s = t_first_lost ? Secs(*t_first_lost - t_kill) : detect_s;
        // Running again: the first call answered on a node other than the victims.
        auto running_again = [&](std::vector<double>* from_first, std::vector<double>* from_all) {
          size_t n = 0;
          for (const auto& [ep, fe] : f.sim->FirstExecs())
            if (!victim_addrs.count(fe.node) && fe.at > t_kill) {
              ++n;
              if (from_first) from_first->push_back(Secs(fe.at - (t_first_lost ? *t_first_lost : t_detect)));
              if (from_all) from_all->push_back(Secs(fe.at - t_detect));
            }
          return n;
        };
        while (Clock::now() - t_detect < std::chrono::seconds(60) && running_again(nullptr, nullptr) < affected)
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        std::vector<double> from_first, from_all;
        const size_t again = running_again(&from_first, &from_all);
        std::sort(from_first.begin(), from_first.end());
        std::sort(from_all.begin(), from_all.end());
        const auto es2 = engine->stats();
        // The time by which a share q of the affected episodes ran again; none when fewer did.
        auto at = [&](const std::vector<double>& v, double q) -> std::optional<double> {
          size_t need = std::max<size_t>(1, static_cast<size_t>(std::ceil(q * affected)));
          if (need > v.size()) return std::nullopt;
          return v[need - 1];
        };
        auto show = [](std::optional<double> x) { return x ? fmt::format("{:.3f} s", *x) : std::string("not within 60 s"); };
        std::printf("\n| %d of %d nodes crash, %u episodes on them, %d in flight (lease %d ms, heartbeat %d ms%s) | value |\n| --- | ---: |\n",
                    kill, nodes, affected, e, lease_ms, heartbeat_ms, concentrate ? ", concentrated" : "");
        std::printf("| until the front lists the first / all %d lost | %.2f / %.2f s |\n", kill, first_lost_s, detect_s);
        std::printf("| turns/s while it waits for the verdict (before: %.0f) | %.0f |\n", turns / wall,
                    (es1.turns - es0.turns) / std::max(1e-3, detect_s));
        for (double q : {0.5, 0.9, 0.99, 1.0})
          std::printf("| %.0f%% of them running again (first call answered on a new node), after the first / the last node was declared lost | %s / %s |\n",
                      q * 100, show(at(from_first, q)).c_str(), show(at(from_all, q)).c_str());
        std::printf("| running again within 60 s | %zu of %u |\n", again, affected);
        std::printf("| moved: rebuilt before their next call (eager) / when a call met the loss | %llu / %llu |\n",
                    static_cast<unsigned long long>(es2.eager_relocations - es0.eager_relocations),
                    static_cast<unsigned long long>((es2.relocated_episodes - es0.relocated_episodes) -
                                                    (es2.eager_relocations - es0.eager_relocations)));
        json jm = json::object(), jf = json::object();
        for (double q : {0.5, 0.9, 0.99, 1.0}) {
          auto a = at(from_all, q), b = at(from_first, q);
          jm[fmt::format("{:.0f}", q * 100)] = a ? json(*a) : json(nullptr);
          jf[fmt::format("{:.0f}", q * 100)] = b ? json(*b) : json(nullptr);
        }
        std::fflush(stdout);
        results["loss"] = {{"affected", affected}, {"episodes", e}, {"concentrated", concentrate},
                           {"detect_s", detect_s}, {"first_lost_s", first_lost_s}, {"running_again", again},
                           {"after_detect_s", jm}, {"after_first_lost_s", jf},
                           {"eager", es2.eager_relocations - es0.eager_relocations},
                           {"moved", es2.relocated_episodes - es0.relocated_episodes},
                           {"turns_per_s_during_detect", (es1.turns - es0.turns) / std::max(1e-3, detect_s)}};
      }
      std::fprintf(stderr, "  cancelling...\n");
      (void)engine->Cancel(rid);
      for (auto until = Clock::now() + std::chrono::seconds(120); Clock::now() < until;) {
        auto s = engine->stats();
        if (s.running_episodes == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
    if (rss_points.size() >= 2) {
      auto [e0, r0] = rss_points[rss_points.size() - 2];
      auto [e1, r1] = rss_points.back();
      double slope = (r1 - r0) / (e1 - e0);
      std::printf("\n| RSS per episode beyond its token context (slope %.0f → %.0f episodes) | %.1f KiB |\n", e0, e1,
                  slope / 1024);
      results["rss_slope_bytes"] = slope;
    }
    engine.reset();
    StopFront(f);
  }
  if (!json_out.empty()) std::ofstream(json_out) << results.dump(2) << "\n";
  return 0;
}
