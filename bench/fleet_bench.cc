// fleet_bench: what a front (paddockd --nodes, rollout/fleet) costs and how fast
// it recovers, measured in one run on this machine against real paddockds:
//
//   exec     `true` in a container sandbox: through the front (unix socket →
//            front → node over loopback TCP) vs straight to the node's own unix
//            socket — the per-call orchestration overhead of the fleet
//   create   container create through the front vs on the node directly
//   loss     a node SIGKILLed: time until the front lists it lost, and until a
//            create through the front succeeds on the other node
//   place    ChooseNode over 10, 100 and 1,000 node views (placement's own cost)
//
// --episodes E (with --nodes N, e.g. 4): only this instead: a rollout of E
// container episodes through the front, all at once (--concurrency E; a
// scripted policy of --turns bash calls that sleep --sleep-s each), sampling
// `paddock node ls` for the front's sandboxes on each node: the peak in flight,
// the spread, the rewards and the wall time.
//
// Medians and p99 over --cycles; a markdown table on stdout. Run as root from
// the build tree (it starts build/rollout/paddockd). Progress goes to stderr.
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "paddock/client.h"
#include "rollout/fleet/placement.h"
#include "tests/rollout_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

using namespace paddock;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

struct Stats {
  double median_us = 0, p99_us = 0;
};

Stats Summarize(std::vector<double> us) {
  Stats s;
  if (us.empty()) return s;
  std::sort(us.begin(), us.end());
  s.median_us = us[us.size() / 2];
  s.p99_us = us[std::min(us.size() - 1, static_cast<size_t>(us.size() * 0.99))];
  return s;
}

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

client::Client Connect(const std::string& socket) {
  client::ClientOptions o;
  o.socket_path = socket;
  auto c = client::Client::Connect(o);
  if (!c.ok()) {
    std::fprintf(stderr, "fleet_bench: %s\n", c.status().message().c_str());
    std::exit(1);
  }
  return std::move(c).value();
}

std::vector<double> TimeExecs(client::Client& c, const std::string& id, int cycles) {
  ExecRequest req;
  req.argv = {"/bin/true"};
  std::vector<double> us;
  for (int i = 0; i < cycles; ++i) {
    auto t0 = Clock::now();
    auto r = c.Exec(id, req);
    us.push_back(Us(Clock::now() - t0));
    if (!r.ok()) {
      std::fprintf(stderr, "fleet_bench: exec: %s\n", r.status().message().c_str());
      std::exit(1);
    }
  }
  return us;
}

std::vector<double> TimeCreates(client::Client& c, const SandboxSpec& spec, int cycles) {
  std::vector<double> us;
  for (int i = 0; i < cycles; ++i) {
    auto t0 = Clock::now();
    auto made = c.Create(spec);
    us.push_back(Us(Clock::now() - t0));
    if (!made.ok()) {
      std::fprintf(stderr, "fleet_bench: create: %s\n", made.status().message().c_str());
      std::exit(1);
    }
    (void)c.Destroy(made->id);
  }
  return us;
}

std::string NodeState(const testing::DaemonProcess& front, const std::string& address) {
  auto r = front.Cli({"--json", "node", "ls"});
  auto j = json::parse(r.out, nullptr, false);
  if (j.is_discarded()) return "";
  for (const auto& n : j.value("nodes", json::array()))
    if (n["address"] == address) return n["state"];
  return "";
}

// The --episodes scenario; the process's exit code.
int RunEpisodes(testing::DaemonProcess& front, const std::vector<std::string>& addresses, const std::string& dir,
                int episodes, int turns, const std::string& sleep_s) {
  const std::string tasks = dir + "/tasks.jsonl", script = dir + "/script.json";
  std::ofstream(tasks) << testing::CountingTasks("busybox:1", episodes, turns);
  std::ofstream(script) << testing::CountingScript(turns, sleep_s);
  std::fprintf(stderr, "episodes: %d container episodes through the front, all at once...\n", episodes);
  const auto t0 = Clock::now();
  auto started = front.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency",
                            std::to_string(episodes), "--id", "fleet-episodes", "--detach"});
  if (started.code != 0) {
    std::fprintf(stderr, "fleet_bench: paddock run: %s\n", started.err.c_str());
    return 1;
  }
  std::map<std::string, uint32_t> peak_on;  // per node
  uint32_t peak_total = 0;
  json last;
  for (;;) {
    auto ls = json::parse(front.Cli({"--json", "node", "ls"}).out, nullptr, false);
    uint32_t total = 0;
    if (!ls.is_discarded())
      for (const auto& n : ls.value("nodes", json::array())) {
        const uint32_t placed = n.value("placed", 0u);
        total += placed;
        peak_on[n.value("address", "")] = std::max(peak_on[n.value("address", "")], placed);
      }
    peak_total = std::max(peak_total, total);
    auto ro = front.Cli({"--json", "rollout", "ls"});
    bool ended = false;
    if (ro.code == 0)
      for (auto& r : json::parse(ro.out, nullptr, false))
        if (r.is_object() && r.value("rollout_id", "") == "fleet-episodes") {
          last = r;
          ended = r.value("done", 0) + r.value("failed", 0) >= episodes;
        }
    if (ended || Clock::now() - t0 > std::chrono::minutes(10)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  int rewarded = 0, lines = 0;
  std::istringstream in(front.Cli({"export", "fleet-episodes"}).out);
  for (std::string line; std::getline(in, line);) {
    auto l = json::parse(line, nullptr, false);
    if (l.is_discarded()) continue;
    ++lines;
    rewarded += l.value("reward", 0.0) == 1.0;
  }
  std::printf("\n| %d container episodes through the front, %zu nodes | value |\n| --- | --- |\n", episodes,
              addresses.size());
  std::printf("| peak in flight (the front's sandboxes on the nodes, sampled every 250 ms) | %u |\n", peak_total);
  std::string spread;
  for (const auto& a : addresses) spread += fmt::format("{}{}", spread.empty() ? "" : " / ", peak_on[a]);
  std::printf("| peak per node | %s |\n", spread.c_str());
  std::printf("| done / failed | %d / %d |\n", last.value("done", 0), last.value("failed", 0));
  std::printf("| exported episodes with reward 1 | %d of %d |\n", rewarded, lines);
  std::printf("| wall time, start to all ended | %.1f s (%d turns of %s s each per episode) |\n", wall, turns,
              sleep_s.c_str());
  return rewarded == episodes ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fleet_bench: the cost and recovery time of a front (paddockd --nodes) against real nodes"};
  int cycles = 200;
  int lease_ms = 2000, heartbeat_ms = 200;
  app.add_option("--cycles", cycles, "execs (and a tenth as many creates) per measured row")->capture_default_str();
  app.add_option("--lease-ms", lease_ms, "the nodes' --front-lease-ms")->capture_default_str();
  app.add_option("--heartbeat-ms", heartbeat_ms, "the front's --node-heartbeat-ms")->capture_default_str();
  int node_count = 2, episodes = 0, turns = 3;
  std::string sleep_s = "2";
  app.add_option("--nodes", node_count, "nodes to start")->capture_default_str()->check(CLI::Range(1, 16));
  app.add_option("--episodes", episodes, "run only the episodes scenario, with this many (0: the other rows)")
      ->capture_default_str();
  app.add_option("--turns", turns, "episodes scenario: tool calls per episode")->capture_default_str();
  app.add_option("--sleep-s", sleep_s, "episodes scenario: each call's sleep")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::string rootfs = testing::EnsureBusyboxRootfs();
  const std::string dir = fmt::format("/tmp/paddock-fleet-bench-{}", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string token = dir + "/token";
  std::ofstream(token) << "fleet-bench-token\n";
  ::chmod(token.c_str(), 0600);

  std::fprintf(stderr, "starting %d nodes and a front...\n", node_count);
  std::vector<std::unique_ptr<testing::DaemonProcess>> nodes;
  std::vector<std::string> addresses;
  for (int i = 0; i < node_count; ++i) {
    testing::DaemonOptions o;
    o.allow_dir_images = false;
    o.log_level = "warn";
    auto& d = nodes.emplace_back(std::make_unique<testing::DaemonProcess>(o));
    const int port = testing::FreeLoopbackPort();
    std::string why = d->Start({"--listen-tcp", fmt::format("127.0.0.1:{}", port), "--token-file", token,
                                "--front-lease-ms", std::to_string(lease_ms)});
    if (!why.empty()) {
      std::fprintf(stderr, "fleet_bench: node: %s\n", why.c_str());
      return 1;
    }
    ::chmod(d->dir().c_str(), 0755);
    addresses.push_back(fmt::format("127.0.0.1:{}", port));
    auto c = Connect(d->socket_path());
    if (!c.ImageImportDir(rootfs, "busybox:1").ok()) return 1;
  }
  testing::DaemonOptions fo;
  fo.allow_dir_images = false;
  fo.log_level = "warn";
  testing::DaemonProcess front(fo);
  std::string node_list;
  for (const auto& a : addresses) node_list += (node_list.empty() ? "" : ",") + a;
  std::string why = front.Start({"--nodes", node_list, "--node-token-file", token, "--node-heartbeat-ms",
                                 std::to_string(heartbeat_ms)});
  if (!why.empty()) {
    std::fprintf(stderr, "fleet_bench: front: %s\n", why.c_str());
    return 1;
  }
  auto all_ready = [&] {
    for (const auto& a : addresses)
      if (NodeState(front, a) != "ready") return false;
    return true;
  };
  for (auto until = Clock::now() + std::chrono::seconds(20); !all_ready() && Clock::now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (episodes > 0) {
    int rc = RunEpisodes(front, addresses, dir, episodes, turns, sleep_s);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    return rc;
  }
  if (node_count < 2) {
    std::fprintf(stderr, "fleet_bench: the exec, create and loss rows need --nodes 2 or more\n");
    return 1;
  }

  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = "busybox:1";
  auto via_front = Connect(front.socket_path());
  auto on_node = Connect(nodes[0]->socket_path());

  // exec: one sandbox each way, on the same node.
  std::fprintf(stderr, "exec: %d cycles each way...\n", cycles);
  auto direct_sb = on_node.Create(spec);
  std::optional<std::string> front_sb;
  for (int i = 0; i < 8 && !front_sb; ++i) {  // one that the front placed on node 0
    auto made = via_front.Create(spec);
    if (!made.ok()) return 1;
    auto list = on_node.List();
    for (const auto& s : *list)
      if (auto it = s.labels.find("paddock.front_sandbox"); it != s.labels.end() && it->second == made->id)
        front_sb = made->id;
  }
  if (!direct_sb.ok() || !front_sb) return 1;
  TimeExecs(on_node, direct_sb->id, 20);  // warm-up
  TimeExecs(via_front, *front_sb, 20);
  Stats exec_direct = Summarize(TimeExecs(on_node, direct_sb->id, cycles));
  Stats exec_front = Summarize(TimeExecs(via_front, *front_sb, cycles));
  std::fprintf(stderr, "create: %d cycles each way...\n", std::max(10, cycles / 10));
  Stats create_direct = Summarize(TimeCreates(on_node, spec, std::max(10, cycles / 10)));
  Stats create_front = Summarize(TimeCreates(via_front, spec, std::max(10, cycles / 10)));

  // place: ChooseNode's own cost over N views.
  std::vector<std::pair<int, Stats>> place;
  for (int n : {10, 100, 1000}) {
    std::vector<fleet::NodeView> views(n);
    for (int i = 0; i < n; ++i) {
      views[i].address = fmt::format("10.0.{}.{}:7443", i / 250, i % 250);
      views[i].ready = true;
      views[i].substrates = {"container", "function"};
      views[i].live = static_cast<uint32_t>(i * 7 % 900);
      views[i].max = 1000;
      views[i].has_image = i % 3 == 0;
    }
    std::vector<double> us;
    for (int k = 0; k < 2000; ++k) {
      auto t0 = Clock::now();
      auto p = fleet::ChooseNode(views, spec);
      us.push_back(Us(Clock::now() - t0));
      if (!p.ok()) return 1;
    }
    place.emplace_back(n, Summarize(us));
  }

  // loss: SIGKILL node 0.
  std::fprintf(stderr, "loss: SIGKILL of a node...\n");
  auto killed = Clock::now();
  nodes[0]->Stop(SIGKILL);
  while (NodeState(front, addresses[0]) != "lost" && Clock::now() - killed < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  double detect_ms = Us(Clock::now() - killed) / 1000;
  auto dead_exec_t0 = Clock::now();
  ExecRequest t;
  t.argv = {"/bin/true"};
  auto dead = via_front.Exec(*front_sb, t);
  double dead_call_ms = Us(Clock::now() - dead_exec_t0) / 1000;
  auto again_t0 = Clock::now();
  auto again = via_front.Create(spec);
  double again_ms = Us(Clock::now() - again_t0) / 1000;
  if (!again.ok() || dead.ok()) return 1;

  auto ms = [](double us) { return fmt::format("{:.3f} ms", us / 1000); };
  std::printf("| row | through the front | on the node | ratio |\n| --- | --- | --- | --- |\n");
  std::printf("| exec `/bin/true`, median | %s | %s | %.2fx |\n", ms(exec_front.median_us).c_str(),
              ms(exec_direct.median_us).c_str(), exec_front.median_us / exec_direct.median_us);
  std::printf("| exec `/bin/true`, p99 | %s | %s | %.2fx |\n", ms(exec_front.p99_us).c_str(),
              ms(exec_direct.p99_us).c_str(), exec_front.p99_us / exec_direct.p99_us);
  std::printf("| container create, median | %s | %s | %.2fx |\n", ms(create_front.median_us).c_str(),
              ms(create_direct.median_us).c_str(), create_front.median_us / create_direct.median_us);
  std::printf("\n| placement (ChooseNode) | median | p99 |\n| --- | --- | --- |\n");
  for (const auto& [n, s] : place)
    std::printf("| %d nodes | %.2f us | %.2f us |\n", n, s.median_us, s.p99_us);
  std::printf("\n| node SIGKILL (lease %d ms, heartbeat %d ms) | time |\n| --- | --- |\n", lease_ms, heartbeat_ms);
  std::printf("| until the front lists it lost | %.0f ms |\n", detect_ms);
  std::printf("| a call to a sandbox that was there, after | %.1f ms (%s) |\n", dead_call_ms,
              CodeName(dead.status().code()));
  std::printf("| a create placed on the other node, after | %.1f ms |\n", again_ms);
  front.Stop();
  for (auto& n : nodes)
    if (n->running()) n->Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
