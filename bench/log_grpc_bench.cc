// log_grpc_bench: fast-forward through gRPC (issue 4 target: >= 20k calls/s).
//
// Starts the real paddockd (build/rollout/paddockd) on a temp state dir, logs
// --calls keyed execs (each prints --output-bytes) over --episodes episodes
// bound to container sandboxes, then re-issues random ones of them — each
// answered from the trajectory log with replayed=true, nothing runs — from
// 1..--max-threads client threads (one paddock::client::Client, so one
// channel, per thread) for --seconds each, and prints calls/s with the CPU
// time each call cost the client process and the daemon (the two share the
// machine's cores, so their sum bounds the rate).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "paddock/client.h"
#include "tests/support/test_rootfs.h"

extern char** environ;

namespace fs = std::filesystem;
using namespace paddock;
using Clock = std::chrono::steady_clock;

namespace {

ExecRequest Call(uint64_t i, size_t bytes) {
  ExecRequest r;
  r.argv = {"sh", "-c", "head -c " + std::to_string(bytes) + " /dev/zero | tr '\\0' x; echo " + std::to_string(i)};
  return r;
}

client::CallKey Key(const std::string& ep, uint64_t step) {
  client::CallKey k;
  k.episode = ep;
  k.step = step;
  return k;
}

// CPU seconds (user + system) the process has used so far, its exited
// threads included: /proc/PID/stat's utime and stime, in clock ticks.
double ProcessCpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return 0;
  std::istringstream rest(stat.substr(paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {  // fields 3.. after "pid (comm)"
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"log_grpc_bench: fast-forward of logged keyed execs through paddockd's gRPC API"};
  std::string dir = "/var/tmp/paddock-log-grpc-bench";
  int calls = 512, episodes = 8, min_threads = 1, max_threads = 16;
  size_t output_bytes = 512;
  double seconds = 2.0;
  std::string paddockd = testing::BuiltBinary("paddockd");
  app.add_option("--dir", dir, "scratch dir (state dir, socket); removed before and after")->capture_default_str();
  app.add_option("--calls", calls, "keyed execs logged before the replays")->capture_default_str();
  app.add_option("--episodes", episodes, "episodes (each its own container sandbox)")->capture_default_str();
  app.add_option("--output-bytes", output_bytes, "stdout bytes of each logged call")->capture_default_str();
  app.add_option("--min-threads", min_threads, "client threads of the first round")->capture_default_str();
  app.add_option("--max-threads", max_threads, "client threads: --min-threads, twice that, ... up to this")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "seconds per thread count")->capture_default_str();
  app.add_option("--paddockd", paddockd, "the daemon binary to measure (e.g. an older build, for a comparison)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms(0755));
  const std::string state = dir + "/state", socket = dir + "/paddockd.sock", log = dir + "/paddockd.log";
  const std::string image = testing::EnsureBusyboxRootfs();

  // The busybox rootfs, a host directory, is the image (development form).
  std::vector<std::string> dargv = {paddockd, "--state-dir", state, "--socket", socket,
                                    "--log-level", "warn", "--allow-dir-images"};
  std::vector<char*> cargv;
  for (auto& a : dargv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t daemon = 0;
  if (posix_spawn(&daemon, cargv[0], &fa, nullptr, cargv.data(), environ) != 0) {
    fmt::print(stderr, "cannot start {}\n", dargv[0]);
    return 1;
  }
  auto stop = [&] {
    kill(daemon, SIGTERM);
    waitpid(daemon, nullptr, 0);
    fs::remove_all(dir, ec);
  };
  client::ClientOptions opts;
  opts.socket_path = socket;
  opts.connect_timeout = std::chrono::milliseconds(10000);
  for (int i = 0; i < 200 && !fs::exists(socket); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto first = client::Client::Connect(opts);
  if (!first.ok()) {
    fmt::print(stderr, "paddockd did not answer: {}\n", first.status().ToString());
    stop();
    return 1;
  }

  // Log the calls (they run for real once), a few episodes at a time.
  std::vector<std::string> sandbox(episodes);
  for (int e = 0; e < episodes; ++e) {
    SandboxSpec spec;
    spec.substrate = "container";
    spec.image = image;
    auto b = first->CreateForEpisode(spec, "bench-" + std::to_string(e));
    if (!b.ok()) {
      fmt::print(stderr, "create --episode: {}\n", b.status().ToString());
      stop();
      return 1;
    }
    sandbox[e] = b->sandbox.id;
  }
  auto t0 = Clock::now();
  std::atomic<int> failed{0};
  std::vector<ExecResult> logged(calls);  // what each call answered when it ran
  {
    std::vector<std::thread> th;
    for (int e = 0; e < episodes; ++e)
      th.emplace_back([&, e] {
        for (int i = e; i < calls; i += episodes) {
          auto r = first->Exec(sandbox[e], Call(i, output_bytes), Key("bench-" + std::to_string(e), i));
          if (!r.ok() || r->replayed) failed++;
          else logged[i] = r->result;
        }
      });
    for (auto& t : th) t.join();
  }
  if (failed) {
    fmt::print(stderr, "{} calls failed while logging\n", failed.load());
    stop();
    return 1;
  }
  fmt::print("fast-forward through gRPC ({} logged keyed execs with {}-byte stdout over {} episodes, logged in {:.1f} s; "
             "unix socket, one client channel per thread):\n",
             calls, output_bytes, episodes, std::chrono::duration<double>(Clock::now() - t0).count());

  double best = 0;
  for (int threads = std::max(1, min_threads); threads <= max_threads; threads *= 2) {
    std::vector<client::Client> clients;
    for (int t = 0; t < threads; ++t) clients.push_back(std::move(client::Client::Connect(opts).value()));
    std::atomic<bool> go{false}, done{false};
    std::atomic<uint64_t> total{0};
    std::atomic<int> wrong{0};
    std::vector<std::thread> th;
    for (int t = 0; t < threads; ++t)
      th.emplace_back([&, t] {
        std::mt19937 rng(t + 1);
        std::uniform_int_distribution<int> pick(0, calls - 1);
        while (!go.load()) std::this_thread::yield();
        uint64_t n = 0;
        while (!done.load(std::memory_order_relaxed)) {
          int i = pick(rng);
          int e = i % episodes;
          auto r = clients[t].Exec(sandbox[e], Call(i, output_bytes), Key("bench-" + std::to_string(e), i));
          // Byte for byte what the call answered when it ran.
          const ExecResult& want = logged[i];
          if (!r.ok() || !r->replayed || r->result.stdout_data != want.stdout_data ||
              r->result.stderr_data != want.stderr_data || r->result.exit_code != want.exit_code ||
              r->result.stdout_data.size() != output_bytes + std::to_string(i).size() + 1)
            wrong++;
          n++;
        }
        total += n;
      });
    auto start = Clock::now();
    double client_cpu0 = SelfCpuSeconds(), daemon_cpu0 = ProcessCpuSeconds(daemon);
    go = true;
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    done = true;
    for (auto& t : th) t.join();
    double secs = std::chrono::duration<double>(Clock::now() - start).count();
    double client_cpu = SelfCpuSeconds() - client_cpu0, daemon_cpu = ProcessCpuSeconds(daemon) - daemon_cpu0;
    double n = static_cast<double>(std::max<uint64_t>(1, total.load()));
    double rate = total.load() / secs;
    best = std::max(best, rate);
    fmt::print("  {:2d} client threads: {:8.0f} replayed calls/s ({} calls, {:.1f} us/call/thread); "
               "CPU us/call: client {:.1f}, daemon {:.1f}{}\n",
               threads, rate, total.load(), 1e6 * secs * threads / n, 1e6 * client_cpu / n, 1e6 * daemon_cpu / n,
               wrong ? fmt::format("  {} WRONG ANSWERS", wrong.load()) : "");
  }
  fmt::print("best: {:.0f} calls/s (target >= 20000: {})\n", best, best >= 20000 ? "met" : "NOT met");
  stop();
  return 0;
}
