// sandbox_bench: latency and density of Paddock's function and container
// substrates beside real peers, all measured in one run on this machine.
//
//   host      fork+execv+waitpid of the host's /bin/true (and posix_spawn), and
//             posix_spawn of the rootfs's busybox /bin/true (the same binary)
//   bwrap     bwrap --unshare-all --ro-bind ROOTFS / /bin/true
//   function  create -> exec /bin/true -> destroy; exec alone on a live sandbox
//   container create -> exec /bin/true -> destroy; exec alone on a live sandbox
//   crun      crun run --bundle DIR ID of the same busybox rootfs
//   density   N live containers (daemon) each running `sleep 1000`: create
//             latency, exec latency across them, daemon RSS per sandbox
//
// Paddock is measured two ways: in-process through SandboxManager (what the
// substrate itself costs) and through a real paddockd over gRPC on a unix
// socket (what a user sees). Results: a table on stdout, CSV/markdown, gnuplot
// data + script and PNG plots. Progress goes to stderr. Run as root.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "paddock/client.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "sandbox/reaper.h"
#include "tests/support/test_rootfs.h"

extern char** environ;

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace paddock::bench {
namespace {

// ---------------------------------------------------------------- helpers --

// Set by the bench: removes what the bench left (sandboxes, mounts, cgroups).
std::function<void()> g_cleanup;

// Daemons this bench started, stopped by Die as well (std::exit skips destructors).
std::vector<pid_t> g_daemons;

[[noreturn]] void Die(const std::string& msg) {
  fmt::print(stderr, "\nsandbox_bench: {}\n", msg);
  for (pid_t pid : g_daemons) {
    kill(pid, SIGTERM);  // paddockd destroys its sandboxes on SIGTERM
    int st = 0;
    waitpid(pid, &st, 0);
  }
  if (g_cleanup) g_cleanup();
  std::exit(1);
}

double UsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

struct Stats {
  size_t n = 0;
  double median = 0, p99 = 0, mean = 0, min = 0, max = 0;
};

// Nearest-rank percentiles over the samples (microseconds).
Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.n = v.size();
  auto rank = [&](double q) {
    size_t r = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::clamp<size_t>(r, 1, v.size()) - 1];
  };
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  s.p99 = rank(0.99);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.min = v.front();
  s.max = v.back();
  return s;
}

std::string Ms(double us) { return fmt::format("{:.3f}", us / 1000.0); }

// Progress on stderr: "[scenario] i/N", rewritten in place.
class Progress {
 public:
  Progress(std::string name, size_t total) : name_(std::move(name)), total_(total) { Show(0); }
  void Show(size_t i) {
    if (i == total_ || i % 5 == 0 || Clock::now() - last_ > std::chrono::milliseconds(200)) {
      fmt::print(stderr, "\r  [{}] {}/{}   ", name_, i, total_);
      std::fflush(stderr);
      last_ = Clock::now();
    }
  }
  void Done(const std::string& note = "") {
    fmt::print(stderr, "\r  [{}] {}/{} done{}{}\n", name_, total_, total_, note.empty() ? "" : ": ",
               note);
  }

 private:
  std::string name_;
  size_t total_;
  Clock::time_point last_{};
};

// fork + execvp + waitpid; returns the wait status (or -1 when fork fails).
int RunProcess(const std::vector<std::string>& argv, bool quiet = false,
               const std::function<void()>& in_child = nullptr) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (quiet) {
      int fd = open("/dev/null", O_WRONLY);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
    }
    if (in_child) in_child();
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

bool ExitedOk(int status) { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

std::string Capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// VmRSS of a process in bytes (0 when unreadable).
uint64_t RssBytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

uint64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("MemAvailable:", 0) == 0) return std::stoull(line.substr(13)) * 1024;
  return 0;
}

// ------------------------------------------------------------ the daemon --

// A real paddockd started from the build tree with its own state dir and socket.
class Daemon {
 public:
  Daemon(std::string binary, std::string state_dir, std::string log_path)
      : binary_(std::move(binary)), state_dir_(std::move(state_dir)), log_path_(std::move(log_path)) {
    fs::create_directories(state_dir_);
    socket_ = state_dir_ + "/paddockd.sock";
    pid_ = fork();
    if (pid_ < 0) Die("fork for paddockd failed");
    if (pid_ == 0) {
      int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execl(binary_.c_str(), binary_.c_str(), "--state-dir", state_dir_.c_str(), "--socket",
            socket_.c_str(), "--log-level", "warn", "--max-sandboxes", "5000", "--default-ttl",
            "7200", "--allow-dir-images", static_cast<char*>(nullptr));
      _exit(127);
    }
    g_daemons.push_back(pid_);
    client::ClientOptions opts;
    opts.socket_path = socket_;
    opts.connect_timeout = std::chrono::milliseconds(200);
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (true) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        std::erase(g_daemons, pid_);
        pid_ = -1;
        Die(fmt::format("paddockd exited at start (status {}); see {}", st, log_path_));
      }
      auto c = client::Client::Connect(opts);
      if (c.ok()) {
        client_.emplace(std::move(c).value());
        break;
      }
      if (Clock::now() > deadline) Die("paddockd did not answer within 20 s; see " + log_path_);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~Daemon() { Stop(); }
  void Stop() {
    client_.reset();
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int st = 0;
    auto deadline = Clock::now() + std::chrono::seconds(30);
    while (waitpid(pid_, &st, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &st, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::erase(g_daemons, pid_);
    pid_ = -1;
  }
  client::Client& client() { return *client_; }
  pid_t pid() const { return pid_; }

 private:
  std::string binary_, state_dir_, log_path_, socket_;
  pid_t pid_ = -1;
  std::optional<client::Client> client_;
};

// ----------------------------------------------------------------- bench --

struct Options {
  int cycles = 200;
  int warmup = 5;
  int density = 300;
  int density_rounds = 2;
  int gap_ms = 50;
  std::string out = "bench/results";
  std::string plot_dir;  // default: parent of out
  std::string rootfs;
  std::string paddockd;
  std::string state_root = "/tmp/paddock-bench";
  std::vector<std::string> scenarios = {"host", "bwrap", "function", "container", "crun", "density"};
  bool plots = true;
};

struct Series {
  std::string key;    // file-friendly name, e.g. "function_cycle_inproc"
  std::string label;  // table label
  std::vector<double> us;
  int failures = 0;
};

struct TargetRow {
  std::string target, measured, peer, ratio, verdict;
};

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {}

  int Run();

 private:
  bool Want(const std::string& s) const {
    return std::find(o_.scenarios.begin(), o_.scenarios.end(), s) != o_.scenarios.end();
  }
  Series& Add(const std::string& key, const std::string& label) {
    series_.push_back(std::make_unique<Series>());
    series_.back()->key = key;
    series_.back()->label = label;
    return *series_.back();
  }
  const Series* Find(const std::string& key) const {
    for (const auto& s : series_)
      if (s->key == key) return s.get();
    return nullptr;
  }
  // Runs `fn` warmup + cycles times; records the timed cycles' microseconds.
  // fn returns false on a failed cycle (counted, not recorded).
  // `gap_ms` > 0: an untimed pause before every cycle (isolated operations
  // rather than a back-to-back loop).
  // Exec of `req` on one sandbox of `spec` made beforehand (in-process).
  void MeasureLiveExec(SandboxManager& m, const SandboxSpec& spec, const ExecRequest& req, const std::string& key,
                       const std::string& label) {
    auto info = m.Create(spec);
    if (!info.ok()) Die(spec.substrate + " create: " + info.status().ToString());
    auto sb = m.Get(info->id);
    if (!sb.ok()) Die(spec.substrate + " get: " + sb.status().ToString());
    std::shared_ptr<Sandbox> box = *sb;
    Measure(Add(key, label), o_.cycles, [&] {
      auto r = box->Exec(req, nullptr);
      return r.ok() && r->exit_code == 0;
    });
    box.reset();
    (void)m.Destroy(info->id);
  }

  void Measure(Series& s, int cycles, const std::function<bool()>& fn, int gap_ms = 0) {
    Progress p(s.label, static_cast<size_t>(cycles));
    for (int i = 0; i < o_.warmup; ++i) (void)fn();
    for (int i = 0; i < cycles; ++i) {
      if (gap_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms));
      auto t0 = Clock::now();
      bool ok = fn();
      double us = UsSince(t0);
      if (ok)
        s.us.push_back(us);
      else
        ++s.failures;
      p.Show(static_cast<size_t>(i + 1));
    }
    p.Done(s.failures ? fmt::format("{} FAILED cycles", s.failures) : "");
    if (s.failures > cycles / 10)
      Die(fmt::format("{}: {} of {} cycles failed", s.label, s.failures, cycles));
  }

  void HostPeers();
  void BwrapPeer();
  void FunctionScenario();
  void ContainerScenario();
  void CrunPeer();
  void DensityScenario();

  SandboxManager& Manager();
  // Containers without a warm pool: every create builds one (the cold rows).
  SandboxManager& ColdManager();
  Daemon& SharedDaemon();

  void Cleanup(bool final);
  void WriteResults();
  void WritePlots();
  void Targets();

  Options o_;
  std::vector<std::unique_ptr<Series>> series_;
  std::unique_ptr<SandboxManager> manager_;
  std::unique_ptr<SandboxManager> cold_manager_;
  std::unique_ptr<Daemon> daemon_;
  std::vector<TargetRow> targets_;
  std::vector<std::string> notes_;
  // density
  struct DensityPoint {
    double create_us = 0;
    uint64_t rss = 0;
    std::vector<double> exec_us;
  };
  std::vector<DensityPoint> density_;
  int density_alive_ = 0;
  int density_exec_failures_ = 0;
  uint64_t density_rss_before_ = 0, density_rss_after_ = 0;
  uint64_t density_memavail_delta_ = 0;
  double density_total_create_s_ = 0, density_total_start_s_ = 0, density_destroy_s_ = 0;
  std::optional<double> function_cold_create_us_;
  bool crun_userns_ = false;
  bool crun_hide_unified_ = false;
  std::string load_before_, load_after_;
  double total_s_ = 0;
};

ExecRequest TrueRequest() {
  ExecRequest r;
  r.argv = {"/bin/true"};
  r.timeout_ms = 30'000;
  return r;
}

// One in-process create→exec→destroy of `spec`: true when every step worked
// and the command exited 0. The sandbox reference is dropped before destroy.
// The phases of one in-process cycle, recorded into the three series (when
// given) as a breakdown of the same cycles.
struct Phases {
  Series* create = nullptr;
  Series* exec = nullptr;
  Series* destroy = nullptr;
};

bool PhasedCycle(SandboxManager& m, const SandboxSpec& spec, const ExecRequest& req, const Phases& into) {
  auto t0 = Clock::now();
  auto info = m.Create(spec);
  if (!info.ok()) {
    fmt::print(stderr, "{} create: {}\n", spec.substrate, info.status().ToString());
    return false;
  }
  auto t1 = Clock::now();
  bool ok = false;
  {
    auto sb = m.Get(info->id);
    if (sb.ok()) {
      auto r = (*sb)->Exec(req, nullptr);
      ok = r.ok() && r->exit_code == 0;
    }
  }
  auto t2 = Clock::now();
  ok = m.Destroy(info->id).ok() && ok;
  if (into.create) {
    into.create->us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    into.exec->us.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
    into.destroy->us.push_back(UsSince(t2));
  }
  return ok;
}

bool InProcessCycle(SandboxManager& m, const SandboxSpec& spec, const ExecRequest& req) {
  auto info = m.Create(spec);
  if (!info.ok()) {
    fmt::print(stderr, "{} create: {}\n", spec.substrate, info.status().ToString());
    return false;
  }
  bool ok = false;
  {
    auto sb = m.Get(info->id);
    if (sb.ok()) {
      auto r = (*sb)->Exec(req, nullptr);
      ok = r.ok() && r->exit_code == 0;
    }
  }
  return m.Destroy(info->id).ok() && ok;
}

SandboxManager& Bench::Manager() {
  if (!manager_) {
    SubstrateEnv env;
    env.state_dir = o_.state_root + "/inproc";
    env.init_path = testing::BuiltBinary("paddock-init");
    fs::create_directories(env.state_dir);
    ManagerOptions mo;
    mo.max_sandboxes = 5000;
    manager_ = std::make_unique<SandboxManager>(mo);
    manager_->RegisterSubstrate(MakeFunctionSubstrate(env));
    manager_->RegisterSubstrate(MakeContainerSubstrate(env));
  }
  return *manager_;
}

SandboxManager& Bench::ColdManager() {
  if (!cold_manager_) {
    SubstrateEnv env;
    env.state_dir = o_.state_root + "/inproc-cold";
    env.init_path = testing::BuiltBinary("paddock-init");
    env.warm_pool_size = 0;
    fs::create_directories(env.state_dir);
    ManagerOptions mo;
    mo.max_sandboxes = 5000;
    cold_manager_ = std::make_unique<SandboxManager>(mo);
    cold_manager_->RegisterSubstrate(MakeContainerSubstrate(env));
  }
  return *cold_manager_;
}

Daemon& Bench::SharedDaemon() {
  if (!daemon_)
    daemon_ = std::make_unique<Daemon>(o_.paddockd, o_.state_root + "/daemon",
                                       o_.out + "/paddockd.log");
  return *daemon_;
}

void Bench::HostPeers() {
  fmt::print(stderr, "host peers\n");
  auto& fe = Add("host_fork_exec", "host fork+execv /bin/true");
  Measure(fe, o_.cycles, [] {
    pid_t pid = fork();
    if (pid == 0) {
      char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
      execv("/bin/true", argv);
      _exit(127);
    }
    if (pid < 0) return false;
    int st = 0;
    waitpid(pid, &st, 0);
    return ExitedOk(st);
  });
  auto& ps = Add("host_posix_spawn", "host posix_spawn /bin/true");
  Measure(ps, o_.cycles, [] {
    pid_t pid;
    char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
    if (posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) return false;
    int st = 0;
    waitpid(pid, &st, 0);
    return ExitedOk(st);
  });
  // The like-for-like peer of a function exec: the very binary the sandboxes
  // run (the rootfs's static busybox `true`), spawned on the host. The host's
  // own /bin/true (coreutils, dynamically linked) costs less to start here.
  const std::string same = o_.rootfs + "/bin/true";
  auto& pss = Add("host_posix_spawn_same_binary", "host posix_spawn of the rootfs's /bin/true (busybox)");
  Measure(pss, o_.cycles, [&same] {
    pid_t pid;
    char* const argv[] = {const_cast<char*>("true"), nullptr};
    if (posix_spawn(&pid, same.c_str(), nullptr, nullptr, argv, environ) != 0) return false;
    int st = 0;
    waitpid(pid, &st, 0);
    return ExitedOk(st);
  });
}

void Bench::BwrapPeer() {
  fmt::print(stderr, "bwrap peer ({})\n", Capture("bwrap --version"));
  std::vector<std::string> argv = {"bwrap", "--unshare-all", "--ro-bind", o_.rootfs, "/", "/bin/true"};
  if (!ExitedOk(RunProcess(argv))) Die("bwrap --unshare-all --ro-bind ROOTFS / /bin/true failed; is bubblewrap installed?");
  auto& s = Add("bwrap", "bwrap --unshare-all /bin/true");
  Measure(s, o_.cycles, [&] { return ExitedOk(RunProcess(argv)); });
}

void Bench::FunctionScenario() {
  fmt::print(stderr, "function substrate\n");
  SandboxSpec spec;
  spec.substrate = "function";
  spec.image = o_.rootfs;
  ExecRequest req = TrueRequest();
  auto& m = Manager();

  // The first create of an (image, limits) starts the zygote; later ones reuse it.
  {
    auto t0 = Clock::now();
    auto info = m.Create(spec);
    if (!info.ok()) Die("function create: " + info.status().ToString());
    function_cold_create_us_ = UsSince(t0);
    (void)m.Destroy(info->id);
  }
  Measure(Add("function_cycle_inproc", "function create→exec→destroy (in-process, warm zygote)"), o_.cycles,
          [&] { return InProcessCycle(m, spec, req); });
  // Like for like with bwrap: every cycle starts a zygote of its own (a
  // memory limit no other cycle uses), so nothing is warm. A quarter of the cycles: each
  // leaves an idle zygote until the substrate sweeps it.
  {
    uint64_t distinct = 0;
    Series f_create, f_exec, f_destroy;
    int warm = o_.warmup;
    Measure(Add("function_cold_cycle_inproc", "function create→exec→destroy (in-process, cold: new zygote)"),
            std::max(10, o_.cycles / 4), [&]() -> bool {
              SandboxSpec cold = spec;
              cold.limits.memory_bytes = kDefaultMemoryBytes + (++distinct << 20);
              return PhasedCycle(m, cold, req, warm-- <= 0 ? Phases{&f_create, &f_exec, &f_destroy} : Phases{});
            });
    Add("function_cold_phase_create_inproc", "  of which create, new zygote (in-process)").us = f_create.us;
    Add("function_cold_phase_exec_inproc", "  of which first exec (in-process)").us = f_exec.us;
    Add("function_cold_phase_destroy_inproc", "  of which destroy (in-process)").us = f_destroy.us;
  }
  MeasureLiveExec(m, spec, req, "function_exec_inproc", "function exec on live sandbox (in-process)");

  auto& c = SharedDaemon().client();
  Measure(Add("function_cycle_daemon", "function create→exec→destroy (daemon)"), o_.cycles, [&] {
    auto info = c.Create(spec);
    if (!info.ok()) return false;
    auto r = c.Exec(info->id, req);
    bool ok = r.ok() && r->exit_code == 0;
    return c.Destroy(info->id).ok() && ok;
  });
  {
    auto info = c.Create(spec);
    if (!info.ok()) Die("function create (daemon): " + info.status().ToString());
    Measure(Add("function_exec_daemon", "function exec on live sandbox (daemon)"), o_.cycles, [&] {
      auto r = c.Exec(info->id, req);
      return r.ok() && r->exit_code == 0;
    });
    (void)c.Destroy(info->id);
  }
}

void Bench::ContainerScenario() {
  fmt::print(stderr, "container substrate\n");
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = o_.rootfs;
  ExecRequest req = TrueRequest();
  auto& m = Manager();
  // The phases of each cycle are recorded too (a breakdown, same cycles).
  Series c_create, c_exec, c_destroy;
  int warm = o_.warmup;
  Measure(Add("container_cycle_inproc", "container create→exec→destroy (in-process)"), o_.cycles,
          [&]() -> bool {
            return PhasedCycle(m, spec, req, warm-- <= 0 ? Phases{&c_create, &c_exec, &c_destroy} : Phases{});
          });
  {
    // Like for like with `crun run`: no warm pool, every cycle builds its container.
    auto& cold = ColdManager();
    Measure(Add("container_cold_cycle_inproc", "container create→exec→destroy (in-process, cold: no warm pool)"),
            o_.cycles, [&] { return InProcessCycle(cold, spec, req); });
  }
  Add("container_phase_create_inproc", "  of which create (in-process)").us = c_create.us;
  Add("container_phase_exec_inproc", "  of which first exec (in-process)").us = c_exec.us;
  Add("container_phase_destroy_inproc", "  of which destroy (in-process)").us = c_destroy.us;
  if (o_.gap_ms > 0) {
    Measure(Add("container_cycle_spaced_inproc",
                fmt::format("container create→exec→destroy, {} ms apart (in-process)", o_.gap_ms)),
            o_.cycles, [&] { return InProcessCycle(m, spec, req); }, o_.gap_ms);
  }
  MeasureLiveExec(m, spec, req, "container_exec_inproc", "container exec on live sandbox (in-process)");
  {
    // The same with an egress allow list: the daemon's proxy listening in the
    // container's network namespace (every sandbox has its own namespace).
    SandboxSpec egress = spec;
    egress.network_allow = {"example.org:443"};
    MeasureLiveExec(m, egress, req, "container_exec_egress_inproc",
                    "container exec on live sandbox with egress (in-process)");
  }

  auto& c = SharedDaemon().client();
  Measure(Add("container_cycle_daemon", "container create→exec→destroy (daemon)"), o_.cycles, [&] {
    auto info = c.Create(spec);
    if (!info.ok()) return false;
    auto r = c.Exec(info->id, req);
    bool ok = r.ok() && r->exit_code == 0;
    return c.Destroy(info->id).ok() && ok;
  });
  {
    auto info = c.Create(spec);
    if (!info.ok()) Die("container create (daemon): " + info.status().ToString());
    Measure(Add("container_exec_daemon", "container exec on live sandbox (daemon)"), o_.cycles, [&] {
      auto r = c.Exec(info->id, req);
      return r.ok() && r->exit_code == 0;
    });
    (void)c.Destroy(info->id);
  }
}

void Bench::CrunPeer() {
  fmt::print(stderr, "crun peer ({})\n", Capture("crun --version | head -1"));
  const std::string bundle = o_.state_root + "/crun-bundle";
  fs::create_directories(bundle);
  fs::remove(bundle + "/config.json");
  if (!ExitedOk(RunProcess({"crun", "spec", "-b", bundle})))
    Die("`crun spec` failed; is crun installed?");
  json base;
  {
    std::ifstream in(bundle + "/config.json");
    base = json::parse(in);
  }
  base["process"]["args"] = {"/bin/true"};
  base["process"]["terminal"] = false;
  base["root"]["path"] = o_.rootfs;
  base["root"]["readonly"] = true;
  base["hostname"] = "crun-bench";
  // Namespaces like ours: crun's default (pid, net, ipc, uts, mount) plus a
  // user namespace mapping container root to an unprivileged host range.
  json with_userns = base;
  with_userns["linux"]["namespaces"].push_back({{"type", "user"}});
  with_userns["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 400000}, {"size", 65536}}};
  with_userns["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", 400000}, {"size", 65536}}};

  uint64_t seq = 0;
  auto write_config = [&](const json& cfg) {
    std::ofstream(bundle + "/config.json") << cfg.dump(2);
  };
  // crun refuses a hybrid cgroup host (v1 controllers plus a cgroup2 at
  // /sys/fs/cgroup/unified with a controller on it: "cgroups in hybrid mode
  // not supported"), whatever --cgroup-manager says. Paddock uses the v1
  // controllers there; so does crun once it cannot see the cgroup2 mount:
  // each crun runs in a private mount namespace without /sys/fs/cgroup/unified
  // (unshare + one lazy umount in the forked child, inside the timed cycle).
  std::string unified_ctrls;
  {
    std::ifstream in("/sys/fs/cgroup/unified/cgroup.controllers");
    std::getline(in, unified_ctrls);
  }
  crun_hide_unified_ = !unified_ctrls.empty() && !fs::exists("/sys/fs/cgroup/cgroup.controllers");
  std::function<void()> in_child;
  if (crun_hide_unified_)
    in_child = [] {
      if (unshare(CLONE_NEWNS) != 0 || mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          umount2("/sys/fs/cgroup/unified", MNT_DETACH) != 0)
        _exit(126);
    };
  auto crun_run_argv = [&](const std::string& id) {
    return std::vector<std::string>{"crun", "run", "--bundle", bundle, id};
  };
  bool found = false;
  for (bool userns : {true, false}) {
    write_config(userns ? with_userns : base);
    std::string id = fmt::format("paddock-bench-{}-{}", getpid(), seq++);
    bool ok = ExitedOk(RunProcess(crun_run_argv(id), !userns ? false : true, in_child));
    if (fs::exists("/run/crun/" + id)) {
      ok = false;  // must not leave the container behind
      RunProcess({"crun", "delete", "-f", id}, true);
    }
    if (ok) {
      crun_userns_ = userns;
      found = true;
      break;
    }
    if (userns) notes_.push_back("crun with a user namespace failed here; crun runs without one");
  }
  if (!found) Die("crun run of the busybox bundle failed (see its message above)");
  auto& s = Add("crun_run", "crun run /bin/true");
  int leftovers = 0;
  Measure(s, o_.cycles, [&] {
    std::string id = fmt::format("paddock-bench-{}-{}", getpid(), seq++);
    bool ok = ExitedOk(RunProcess(crun_run_argv(id), false, in_child));
    // `crun run` deletes the container when it exits; check (this runs inside
    // the timed cycle only when something was left, which then counts).
    if (fs::exists("/run/crun/" + id)) {
      ++leftovers;
      RunProcess({"crun", "delete", "-f", id}, true);
    }
    return ok;
  });
  if (o_.gap_ms > 0)
    Measure(Add("crun_run_spaced", fmt::format("crun run /bin/true, {} ms apart", o_.gap_ms)), o_.cycles,
            [&] {
              std::string id = fmt::format("paddock-bench-{}-{}", getpid(), seq++);
              bool ok = ExitedOk(RunProcess(crun_run_argv(id), false, in_child));
              if (fs::exists("/run/crun/" + id)) {
                ++leftovers;
                RunProcess({"crun", "delete", "-f", id}, true);
              }
              return ok;
            },
            o_.gap_ms);
  if (leftovers) notes_.push_back(fmt::format("crun left {} containers that the bench deleted", leftovers));
}

void Bench::DensityScenario() {
  const int n = o_.density;
  fmt::print(stderr, "density: {} live container sandboxes (fresh paddockd)\n", n);
  // A fresh daemon, so the RSS delta is the sandboxes' and not earlier scenarios' leftovers.
  Daemon d(o_.paddockd, o_.state_root + "/density", o_.out + "/paddockd-density.log");
  auto& c = d.client();
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = o_.rootfs;
  spec.limits.memory_bytes = 64ull << 20;
  spec.limits.pids = 64;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  density_rss_before_ = RssBytes(d.pid());
  uint64_t avail_before = MemAvailableBytes();
  std::vector<std::string> ids;
  density_.resize(n);
  {
    Progress p("density create", n);
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      auto t = Clock::now();
      auto info = c.Create(spec);
      density_[i].create_us = UsSince(t);
      if (!info.ok()) {
        fmt::print(stderr, "\n  create {} failed: {}\n", i, info.status().ToString());
        break;
      }
      ids.push_back(info->id);
      density_[i].rss = RssBytes(d.pid());
      p.Show(i + 1);
    }
    density_total_create_s_ = UsSince(t0) / 1e6;
    p.Done();
  }
  density_.resize(ids.size());
  {
    Progress p("density start sleep 1000", ids.size());
    ExecRequest bg;
    bg.shell = "sleep 1000 >/dev/null 2>&1 &";
    bg.timeout_ms = 30'000;
    auto t0 = Clock::now();
    for (size_t i = 0; i < ids.size(); ++i) {
      auto r = c.Exec(ids[i], bg);
      if (!r.ok() || r->exit_code != 0) ++density_exec_failures_;
      p.Show(i + 1);
    }
    density_total_start_s_ = UsSince(t0) / 1e6;
    p.Done();
  }
  // Every sandbox must still be alive with its sleep running.
  {
    ExecRequest check;
    check.shell = "pgrep -x sleep >/dev/null || ps | grep -q '[s]leep 1000'";
    check.timeout_ms = 30'000;
    for (const auto& id : ids) {
      auto r = c.Exec(id, check);
      if (r.ok() && r->exit_code == 0) ++density_alive_;
    }
  }
  ExecRequest req = TrueRequest();
  for (int round = 0; round < o_.density_rounds; ++round) {
    Progress p(fmt::format("density exec round {}", round + 1), ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      auto t = Clock::now();
      auto r = c.Exec(ids[i], req);
      double us = UsSince(t);
      if (!r.ok() || r->exit_code != 0)
        ++density_exec_failures_;
      else
        density_[i].exec_us.push_back(us);
      p.Show(i + 1);
    }
    p.Done();
  }
  density_rss_after_ = RssBytes(d.pid());
  uint64_t avail_after = MemAvailableBytes();
  density_memavail_delta_ = avail_before > avail_after ? avail_before - avail_after : 0;
  {
    Progress p("density destroy", ids.size());
    auto t0 = Clock::now();
    for (size_t i = 0; i < ids.size(); ++i) {
      Status st = c.Destroy(ids[i]);
      if (!st.ok()) fmt::print(stderr, "\n  destroy {}: {}\n", ids[i], st.ToString());
      p.Show(i + 1);
    }
    density_destroy_s_ = UsSince(t0) / 1e6;
    p.Done();
  }
  d.Stop();

  auto& cs = Add("density_create_daemon", fmt::format("density: create with up to {} live (daemon)", n));
  auto& es = Add("density_exec_daemon", fmt::format("density: exec across {} live (daemon)", n));
  for (const auto& pt : density_) {
    cs.us.push_back(pt.create_us);
    for (double e : pt.exec_us) es.us.push_back(e);
  }
  es.failures = density_exec_failures_;
}

// ---------------------------------------------------------------- output --

std::string MachineDescription() {
  std::string cpu = Capture("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'");
  std::string kernel = Capture("uname -r");
  std::string os = Capture(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\"");
  double mem_gib = 0;
  {
    std::ifstream in("/proc/meminfo");
    std::string k;
    uint64_t kb = 0;
    in >> k >> kb;
    mem_gib = static_cast<double>(kb) / (1024.0 * 1024.0);
  }
  std::string cg = fs::exists("/sys/fs/cgroup/cgroup.controllers") ? "v2" : "v1";
  return fmt::format("{}, {} cores ({}), {:.1f} GiB RAM, kernel {}, cgroup {}", os,
                     std::thread::hardware_concurrency(), cpu, mem_gib, kernel, cg);
}

void Bench::Targets() {
  auto med = [&](const std::string& k) -> std::optional<double> {
    const Series* s = Find(k);
    if (!s || s->us.empty()) return std::nullopt;
    return Summarize(s->us).median;
  };
  auto pass = [](bool b) { return std::string(b ? "PASS" : "MISS"); };
  // Like-for-like targets: posix_spawn of the same binary is the peer of a
  // function exec, a cold cycle (no warm zygote, no warm pool) the peer of
  // bwrap and crun run. The row against the host's own /bin/true (another,
  // cheaper binary) stays for comparison with earlier tables.
  for (auto [peer, label] : {std::pair{"host_posix_spawn_same_binary", "posix_spawn, same binary"},
                             std::pair{"host_posix_spawn", "posix_spawn, host's /bin/true"}}) {
    auto spawn = med(peer);
    if (!spawn) continue;
    for (auto [way, factor] : {std::pair{"inproc", 1.5}, std::pair{"daemon", 2.0}}) {
      std::string w = std::string(way) == "inproc" ? "in-process" : "daemon";
      if (auto v = med(fmt::format("function_exec_{}", way)))
        targets_.push_back({fmt::format("function exec on live sandbox ({}) ≤ {:.1f}× host {}", w, factor, label),
                            Ms(*v) + " ms", Ms(*spawn) + " ms (" + std::string(label) + ")",
                            fmt::format("{:.2f}×", *v / *spawn), pass(*v <= factor * *spawn)});
    }
  }
  if (auto v = med("function_cold_cycle_inproc"); v && med("bwrap"))
    targets_.push_back({"cold function create→exec→destroy (in-process) ≤ 1.0× bwrap --unshare-all", Ms(*v) + " ms",
                        Ms(*med("bwrap")) + " ms (bwrap)", fmt::format("{:.2f}×", *v / *med("bwrap")),
                        pass(*v <= *med("bwrap"))});
  if (auto v = med("container_exec_egress_inproc"); v && med("container_exec_inproc"))
    targets_.push_back({"container exec with egress (in-process) ≤ 1.2× without", Ms(*v) + " ms",
                        Ms(*med("container_exec_inproc")) + " ms (no egress)",
                        fmt::format("{:.2f}×", *v / *med("container_exec_inproc")),
                        pass(*v <= 1.2 * *med("container_exec_inproc"))});
  if (auto v = med("container_cold_cycle_inproc"); v && med("crun_run"))
    targets_.push_back({"cold container create→exec→destroy (in-process) ≤ 0.5× crun run", Ms(*v) + " ms",
                        Ms(*med("crun_run")) + " ms (crun run)", fmt::format("{:.2f}×", *v / *med("crun_run")),
                        pass(*v <= 0.5 * *med("crun_run"))});
  for (const char* way : {"inproc", "daemon"}) {
    std::string w = std::string(way) == "inproc" ? "in-process" : "daemon";
    auto host = med("host_fork_exec");
    if (auto v = med(fmt::format("function_exec_{}", way)); v && host)
      targets_.push_back({fmt::format("function exec on live sandbox ({}) ≤ 1.5× host fork+exec (earlier target)", w),
                          Ms(*v) + " ms", Ms(*host) + " ms (fork+exec)",
                          fmt::format("{:.2f}×", *v / *host), pass(*v <= 1.5 * *host)});
    auto bw = med("bwrap");
    if (auto v = med(fmt::format("function_cycle_{}", way)); v && bw)
      targets_.push_back({fmt::format("function create→exec→destroy ({}, warm zygote) < bwrap", w), Ms(*v) + " ms",
                          Ms(*bw) + " ms (bwrap)", fmt::format("{:.2f}×", *v / *bw), pass(*v < *bw)});
    auto cr = med("crun_run");
    if (auto v = med(fmt::format("container_cycle_{}", way)); v && cr)
      targets_.push_back({fmt::format("container create→exec→destroy ({}, warm pool) ≥ 3× faster than crun run", w),
                          Ms(*v) + " ms", Ms(*cr) + " ms (crun run)",
                          fmt::format("{:.2f}× faster", *cr / *v), pass(*cr / *v >= 3.0)});
    if (auto v = med(fmt::format("container_cycle_spaced_{}", way)); v && med("crun_run_spaced"))
      targets_.push_back({fmt::format("  same, operations {} ms apart ({}; informational)", o_.gap_ms, w),
                          Ms(*v) + " ms", Ms(*med("crun_run_spaced")) + " ms (crun run)",
                          fmt::format("{:.2f}× faster", *med("crun_run_spaced") / *v),
                          pass(*med("crun_run_spaced") / *v >= 3.0)});
    if (auto v = med(fmt::format("container_exec_{}", way)))
      targets_.push_back({fmt::format("container exec on live sandbox ({}) ≤ 2 ms median", w),
                          Ms(*v) + " ms", "2.000 ms (target)", fmt::format("{:.2f}×", *v / 2000.0),
                          pass(*v <= 2000.0)});
  }
  if (Want("density") && !density_.empty()) {
    int n = o_.density;
    targets_.push_back({fmt::format("{} live container sandboxes", n),
                        fmt::format("{} alive", density_alive_), fmt::format("{} (target)", n), "-",
                        pass(density_alive_ >= n)});
    const Series* es = Find("density_exec_daemon");
    if (es && !es->us.empty()) {
      double p99 = Summarize(es->us).p99;
      targets_.push_back({fmt::format("exec p99 across {} live (daemon) ≤ 50 ms", n), Ms(p99) + " ms",
                          "50.000 ms (target)", fmt::format("{:.2f}×", p99 / 50000.0),
                          pass(p99 <= 50000.0 && density_exec_failures_ == 0)});
    }
    double per = density_alive_ > 0 || !density_.empty()
                     ? (static_cast<double>(density_rss_after_) - static_cast<double>(density_rss_before_)) /
                           static_cast<double>(std::max<size_t>(density_.size(), 1))
                     : 0;
    targets_.push_back({"daemon RSS per sandbox ≤ 1 MiB", fmt::format("{:.1f} KiB", per / 1024.0),
                        "1024.0 KiB (target)", fmt::format("{:.2f}×", per / (1024.0 * 1024.0)),
                        pass(per <= 1024.0 * 1024.0)});
  }
}

void Bench::WriteResults() {
  fs::create_directories(o_.out);
  // Raw samples.
  {
    std::ofstream raw(o_.out + "/samples.csv");
    raw << "series,i,us\n";
    for (const auto& s : series_)
      for (size_t i = 0; i < s->us.size(); ++i) raw << s->key << ',' << i << ',' << fmt::format("{:.1f}", s->us[i]) << '\n';
  }
  // Summary table: stdout, CSV, markdown.
  std::ofstream csv(o_.out + "/summary.csv");
  csv << "series,label,n,failures,median_ms,p99_ms,mean_ms,min_ms,max_ms\n";
  std::ostringstream md;
  md << "| scenario | n | median ms | p99 ms | mean ms | min ms | max ms |\n";
  md << "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  fmt::print("\n{:<58} {:>5} {:>10} {:>10} {:>10} {:>10}\n", "scenario", "n", "median ms", "p99 ms",
             "mean ms", "max ms");
  for (const auto& s : series_) {
    Stats st = Summarize(s->us);
    csv << fmt::format("{},\"{}\",{},{},{},{},{},{},{}\n", s->key, s->label, st.n, s->failures,
                       Ms(st.median), Ms(st.p99), Ms(st.mean), Ms(st.min), Ms(st.max));
    md << fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", s->label, st.n, Ms(st.median),
                      Ms(st.p99), Ms(st.mean), Ms(st.min), Ms(st.max));
    fmt::print("{:<58} {:>5} {:>10} {:>10} {:>10} {:>10}\n", s->label, st.n, Ms(st.median), Ms(st.p99),
               Ms(st.mean), Ms(st.max));
  }
  // Density numbers.
  std::ostringstream dmd;
  if (!density_.empty()) {
    double per_rss = (static_cast<double>(density_rss_after_) - static_cast<double>(density_rss_before_)) /
                     static_cast<double>(density_.size());
    dmd << "| density (" << o_.density << " containers, fresh paddockd) | value |\n| --- | ---: |\n";
    dmd << fmt::format("| sandboxes created / alive with `sleep 1000` | {} / {} |\n", density_.size(),
                       density_alive_);
    dmd << fmt::format("| time to create all (sequential) | {:.2f} s |\n", density_total_create_s_);
    dmd << fmt::format("| time to start `sleep 1000` in all | {:.2f} s |\n", density_total_start_s_);
    dmd << fmt::format("| exec failures | {} |\n", density_exec_failures_);
    dmd << fmt::format("| daemon VmRSS before / with all live | {:.1f} MiB / {:.1f} MiB |\n",
                       density_rss_before_ / 1048576.0, density_rss_after_ / 1048576.0);
    dmd << fmt::format("| daemon RSS per sandbox | {:.1f} KiB |\n", per_rss / 1024.0);
    dmd << fmt::format("| host MemAvailable drop per sandbox (all processes, kernel) | {:.1f} KiB |\n",
                       density_memavail_delta_ / 1024.0 / static_cast<double>(density_.size()));
    dmd << fmt::format("| time to destroy all (sequential) | {:.2f} s |\n", density_destroy_s_);
    fmt::print("\n{}", dmd.str());
    std::ofstream dat(o_.out + "/density.dat");
    dat << "# i create_ms daemon_rss_mib exec_round1_ms exec_round2_ms ...\n";
    for (size_t i = 0; i < density_.size(); ++i) {
      dat << fmt::format("{} {:.3f} {:.3f}", i + 1, density_[i].create_us / 1000.0,
                         density_[i].rss / 1048576.0);
      for (double e : density_[i].exec_us) dat << fmt::format(" {:.3f}", e / 1000.0);
      dat << '\n';
    }
  }
  // Targets.
  std::ostringstream tmd;
  tmd << "| target | measured | peer / bound | ratio | verdict |\n| --- | ---: | ---: | ---: | :---: |\n";
  fmt::print("\n{:<70} {:>14} {:>26} {:>14} {:>6}\n", "target", "measured", "peer / bound", "ratio", "");
  for (const auto& t : targets_) {
    tmd << fmt::format("| {} | {} | {} | {} | **{}** |\n", t.target, t.measured, t.peer, t.ratio, t.verdict);
    fmt::print("{:<70} {:>14} {:>26} {:>14} {:>6}\n", t.target, t.measured, t.peer, t.ratio, t.verdict);
  }
  std::string fc = function_cold_create_us_
                       ? fmt::format("First function create (starts the zygote): {} ms.\n",
                                     Ms(*function_cold_create_us_))
                       : "";
  std::string crun_ns;
  if (Want("crun"))
    crun_ns = fmt::format(
        "crun config: `crun spec` defaults (pid, net, ipc, uts, mount namespaces){}, read-only "
        "root, no terminal, {}.\n",
        crun_userns_ ? " plus a user namespace (0 → host 400000, 65536 ids)" : " without a user namespace",
        crun_hide_unified_
            ? "its own v1 cgroups (cgroupfs manager); each run in a private mount namespace without "
              "/sys/fs/cgroup/unified, because crun refuses this hybrid v1/v2 host otherwise (the "
              "unshare + umount are inside crun's timed cycle)"
            : "its own cgroups (cgroupfs manager)");
  std::string notes;
  for (const auto& n : notes_) notes += "Note: " + n + ".\n";
  for (const auto& n : notes_) fmt::print("note: {}\n", n);
  std::ofstream(o_.out + "/summary.md")
      << "# sandbox_bench results\n\nMachine: " << MachineDescription() << "\n\n"
      << "Cycles per scenario: " << o_.cycles << " (after " << o_.warmup << " warm-up cycles). "
      << fmt::format("Bench time {:.0f} s; load average (1/5/15 min) before {}, after {}.\n\n",
                     total_s_, load_before_, load_after_)
      << md.str() << "\n" << dmd.str() << "\n" << tmd.str() << "\n" << fc << crun_ns << notes;
  std::ofstream tcsv(o_.out + "/targets.csv");
  tcsv << "target,measured,peer,ratio,verdict\n";
  for (const auto& t : targets_)
    tcsv << fmt::format("\"{}\",\"{}\",\"{}\",\"{}\",{}\n", t.target, t.measured, t.peer, t.ratio, t.verdict);
  // CDF data per series: value_ms fraction.
  for (const auto& s : series_) {
    std::vector<double> v = s->us;
    std::sort(v.begin(), v.end());
    std::ofstream cdf(o_.out + "/cdf_" + s->key + ".dat");
    for (size_t i = 0; i < v.size(); ++i)
      cdf << fmt::format("{:.4f} {:.5f}\n", v[i] / 1000.0, static_cast<double>(i + 1) / v.size());
  }
}

void Bench::WritePlots() {
  std::string plot_dir = o_.plot_dir.empty() ? fs::absolute(o_.out).parent_path().string() : o_.plot_dir;
  fs::create_directories(plot_dir);
  plot_dir = fs::absolute(plot_dir).string();
  auto have = [&](const std::string& k) {
    const Series* s = Find(k);
    return s && !s->us.empty();
  };
  struct Line {
    std::string key, title;
  };
  auto panel = [&](std::ostringstream& gp, const std::string& title, const std::vector<Line>& lines) {
    std::vector<std::string> parts;
    int color = 1;
    for (const auto& l : lines) {
      if (have(l.key))
        parts.push_back(fmt::format("'cdf_{}.dat' using 1:2 with lines lw 2 lc {} title '{}'", l.key,
                                    color, l.title));
      ++color;
    }
    gp << "set title '" << title << "'\n";
    if (parts.empty())
      gp << "unset key; plot 2 notitle\nset key bottom right\n";
    else {
      gp << "plot ";
      for (size_t i = 0; i < parts.size(); ++i) gp << (i ? ", \\\n     " : "") << parts[i];
      gp << "\n";
    }
  };
  std::ostringstream gp;
  gp << "# Generated by sandbox_bench; run in this directory: gnuplot plots.gp\n";
  gp << "set terminal pngcairo size 1400,1000 font 'sans,10' noenhanced\n";
  gp << "set output '" << plot_dir << "/latency_cdf.png'\n";
  gp << "set multiplot layout 2,2 title 'sandbox_bench latency CDFs (" << o_.cycles
     << " cycles each; x: ms, log scale)'\n";
  gp << "set logscale x\nset grid\nset key bottom right\nset ylabel 'fraction ≤ x'\nset xlabel 'ms'\n"
        "set yrange [0:1]\n";
  panel(gp, "function: create → exec /bin/true → destroy vs bwrap",
        {{"function_cycle_inproc", "paddock function (in-process)"},
         {"function_cycle_daemon", "paddock function (daemon, gRPC)"},
         {"bwrap", "bwrap --unshare-all"}});
  panel(gp, "function: exec /bin/true on a live sandbox vs host",
        {{"function_exec_inproc", "paddock function exec (in-process)"},
         {"function_exec_daemon", "paddock function exec (daemon, gRPC)"},
         {"host_fork_exec", "host fork+execv"},
         {"host_posix_spawn", "host posix_spawn"},
         {"host_posix_spawn_same_binary", "host posix_spawn, same busybox binary"}});
  panel(gp, "container: create → exec /bin/true → destroy vs crun run",
        {{"container_cycle_inproc", "paddock container (in-process)"},
         {"container_cycle_daemon", "paddock container (daemon, gRPC)"},
         {"crun_run", "crun run"},
         {"container_cycle_spaced_inproc", fmt::format("paddock container, {} ms apart (in-process)", o_.gap_ms)},
         {"crun_run_spaced", fmt::format("crun run, {} ms apart", o_.gap_ms)}});
  panel(gp, "container: exec /bin/true on a live container",
        {{"container_exec_inproc", "paddock container exec (in-process)"},
         {"container_exec_daemon", "paddock container exec (daemon, gRPC)"},
         {"density_exec_daemon", fmt::format("exec across {} live (daemon)", o_.density)}});
  gp << "unset multiplot\n";
  if (!density_.empty()) {
    gp << "reset\nset terminal pngcairo size 1400,600 font 'sans,10' noenhanced\n";
    gp << "set output '" << plot_dir << "/density.png'\n";
    gp << "set multiplot layout 1,2 title 'density: " << o_.density
       << " live container sandboxes on one paddockd'\n";
    gp << "set grid\nset xlabel 'live sandboxes'\nset ylabel 'create latency (ms)'\n"
          "set y2label 'daemon VmRSS (MiB)'\nset ytics nomirror\nset y2tics\nset key top left\n";
    gp << "plot 'density.dat' using 1:2 with points pt 7 ps 0.5 title 'create latency (ms)', \\\n"
          "     'density.dat' using 1:3 axes x1y2 with lines lw 2 title 'daemon VmRSS (MiB)'\n";
    gp << "unset y2label\nunset y2tics\nset ytics mirror\nset xlabel 'sandbox index'\n"
          "set ylabel 'exec /bin/true latency (ms)'\nset logscale y\n";
    gp << "plot ";
    for (int r = 0; r < o_.density_rounds; ++r)
      gp << (r ? ", \\\n     " : "") << "'density.dat' using 1:" << 4 + r
         << " with points pt 7 ps 0.5 title 'exec round " << r + 1 << "'";
    gp << ", 50 with lines lw 2 dt 2 title 'p99 target 50 ms'\n";
    gp << "unset multiplot\n";
  }
  std::ofstream(o_.out + "/plots.gp") << gp.str();
  if (RunProcess({"sh", "-c", "command -v gnuplot >/dev/null"}) != 0) {
    fmt::print(stderr, "gnuplot not found: skipped the plots; install gnuplot-nox "
                       "(bash scripts/install-deps.sh --bench) and run `gnuplot plots.gp` in {}\n",
               o_.out);
    return;
  }
  int st = RunProcess({"sh", "-c", fmt::format("cd '{}' && gnuplot plots.gp", o_.out)});
  if (ExitedOk(st))
    fmt::print(stderr, "plots: {}/latency_cdf.png{}\n", plot_dir,
               density_.empty() ? "" : fmt::format(", {}/density.png", plot_dir));
  else
    fmt::print(stderr, "gnuplot failed on {}/plots.gp\n", o_.out);
}

// Destroys what this bench owns: the in-process manager's sandboxes, then (as
// paddockd does at start) whatever a crashed earlier run left under the state
// root: processes, mounts, cgroups, directories. At the end it also removes
// the (then empty) per-state-dir cgroup roots.
void Bench::Cleanup(bool final) {
  for (auto* m : {&manager_, &cold_manager_}) {
    if (!*m) continue;
    (*m)->Shutdown();
    m->reset();
  }
  for (const char* sub : {"inproc", "inproc-cold", "daemon", "density"}) {
    SubstrateEnv env;
    env.state_dir = o_.state_root + "/" + sub;
    if (!fs::exists(env.state_dir)) continue;
    ReapReport r = ReapLeftovers(env);
    if (!final && r.processes_killed + r.mounts_removed + r.cgroups_removed > 0)
      fmt::print(stderr, "reaped an earlier run's leftovers in {}: {} processes, {} mounts, {} cgroups\n",
                 env.state_dir, r.processes_killed, r.mounts_removed, r.cgroups_removed);
    if (final) {
      std::error_code ec;
      for (const auto& h : fs::directory_iterator("/sys/fs/cgroup", ec))
        rmdir((h.path() / env.cgroup_root()).c_str());  // only succeeds when empty
    }
  }
  // Never delete through a mount that is still there.
  std::ifstream mounts("/proc/mounts");
  std::string dev, dir;
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream ls(line);
    ls >> dev >> dir;
    if (dir.rfind(o_.state_root + "/", 0) == 0) {
      fmt::print(stderr, "sandbox_bench: {} is still mounted; not removing {}\n", dir, o_.state_root);
      return;
    }
  }
  std::error_code ec;
  fs::remove_all(o_.state_root, ec);
}

int Bench::Run() {
  if (geteuid() != 0) Die("run as root: sandboxes need namespaces, cgroups and mounts");
  fs::create_directories(o_.out);
  o_.out = fs::absolute(o_.out).string();
  if (o_.rootfs.empty()) o_.rootfs = testing::EnsureBusyboxRootfs();
  if (o_.paddockd.empty()) o_.paddockd = testing::BuiltBinary("paddockd");
  o_.state_root = fs::weakly_canonical(fs::absolute(o_.state_root)).string();
  if (o_.state_root == "/" || o_.state_root.empty()) Die("--state-root must not be /");
  Cleanup(false);
  fs::create_directories(o_.state_root);
  g_cleanup = [this] { Cleanup(true); };
  fmt::print(stderr, "sandbox_bench: {} cycles per scenario, density {}; machine: {}\n", o_.cycles,
             o_.density, MachineDescription());
  fmt::print(stderr, "rootfs {}, paddockd {}, state {}, results {}\n", o_.rootfs, o_.paddockd,
             o_.state_root, o_.out);
  load_before_ = Capture("cut -d' ' -f1-3 /proc/loadavg");
  auto t0 = Clock::now();
  if (Want("host")) HostPeers();
  if (Want("bwrap")) BwrapPeer();
  if (Want("function")) FunctionScenario();
  if (Want("container")) ContainerScenario();
  if (Want("crun")) CrunPeer();
  if (manager_) {
    manager_->Shutdown();
    manager_.reset();
  }
  if (daemon_) daemon_->Stop();
  daemon_.reset();
  if (Want("density")) DensityScenario();
  total_s_ = UsSince(t0) / 1e6;
  load_after_ = Capture("cut -d' ' -f1-3 /proc/loadavg");
  fmt::print(stderr, "total bench time {:.1f} s; load average before {} / after {}\n", total_s_,
             load_before_, load_after_);
  Targets();
  WriteResults();
  if (o_.plots) WritePlots();
  g_cleanup = nullptr;
  Cleanup(true);
  fmt::print("\nresults: {}/summary.md (and summary.csv, targets.csv, samples.csv)\n", o_.out);
  return 0;
}

}  // namespace
}  // namespace paddock::bench

int main(int argc, char** argv) {
  paddock::bench::Options o;
  CLI::App app{
      "sandbox_bench: latency and density of Paddock's function and container substrates beside "
      "host fork+exec, bwrap and crun, measured in one run. Needs root. Writes a table to stdout, "
      "summary.{md,csv}, targets.csv, samples.csv, gnuplot data and plots.gp to --out, and PNG "
      "plots (latency_cdf.png, density.png) to --plot-dir."};
  app.add_option("--cycles", o.cycles, "measured cycles per latency scenario")->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app.add_option("--warmup", o.warmup, "unmeasured warm-up cycles before each scenario")
      ->capture_default_str()->check(CLI::Range(0, 1000));
  app.add_option("--density", o.density, "container sandboxes alive at once in the density scenario")
      ->capture_default_str()->check(CLI::Range(1, 10000));
  app.add_option("--density-rounds", o.density_rounds,
                 "rounds of exec /bin/true over every live sandbox in the density scenario")
      ->capture_default_str()->check(CLI::Range(1, 100));
  app.add_option("--gap-ms", o.gap_ms,
                 "pause before each cycle of the extra 'operations apart' container and crun "
                 "scenarios (isolated creates rather than a back-to-back loop); 0 skips them")
      ->capture_default_str()->check(CLI::Range(0, 10000));
  app.add_option("--out", o.out, "directory for results (CSV, markdown, gnuplot data and script)")
      ->capture_default_str();
  app.add_option("--plot-dir", o.plot_dir, "directory for the PNG plots (default: the parent of --out)");
  app.add_option("--rootfs", o.rootfs,
                 "busybox root filesystem for every scenario (default: built from busybox-static "
                 "under /var/tmp/paddock-test-rootfs)");
  app.add_option("--paddockd", o.paddockd, "paddockd binary (default: build/rollout/paddockd)");
  app.add_option("--state-root", o.state_root,
                 "scratch directory for the daemons' and the in-process manager's state "
                 "(leftovers of a crashed run are reaped at start; removed at the end)")
      ->capture_default_str();
  app.add_option("--scenarios", o.scenarios, "which scenarios to run")
      ->delimiter(',')
      ->check(CLI::IsMember({"host", "bwrap", "function", "container", "crun", "density"}))
      ->capture_default_str();
  app.add_flag("!--no-plots", o.plots, "do not write plots.gp nor run gnuplot");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  signal(SIGPIPE, SIG_IGN);
  return paddock::bench::Bench(std::move(o)).Run();
}
