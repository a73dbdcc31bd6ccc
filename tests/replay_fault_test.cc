// Fault injection for preemption-safe replay (issue 4, part 7): the real
// paddockd on a temp state dir with its real trajectory log (RocksDB), no
// mocks. A workload of concurrent episodes issues keyed execs step by step;
// each step's command appends "S<step>" to /work/ran in the episode's
// container (the side effect the test counts) and prints a deterministic
// stdout and exit code, plus a nanosecond clock on stderr (so a replay that
// re-ran would not be byte-identical).
//
// - DaemonSigkilledAtRandomPoints: paddockd SIGKILLed at >= 50 random points;
//   after every restart each episode re-issues its calls from step 0 with the
//   same keys. Acknowledged calls replay byte for byte and never run again;
//   the call in flight at the kill is handled by what the log says of it
//   (done: replayed; in doubt: refused unless idempotent; never logged: runs);
//   the final trajectories equal an uninterrupted reference run.
// - ClientSigkilledMidWorkload: the harness (a child process re-executing
//   this binary) SIGKILLed instead, repeatedly; the parent resumes.
// - CorruptedSst_DaemonRefusesToStartNamingTheFile.
// - FullLogDisk_KeyedCallsRefused_NothingAcknowledgedLost: --log-dir on a
//   small tmpfs mounted by the test.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "paddock/client.h"
#include "tests/support/test_rootfs.h"

extern char** environ;

namespace paddock {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Spawns argv with `env` added; stdin /dev/null; stdout+stderr appended to `out`.
pid_t Spawn(std::vector<std::string> argv, const std::vector<std::string>& env, const std::string& out) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.push_back(*e);
  for (const auto& e : env) envs.push_back(e);
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, cargv[0], &fa, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// One paddockd on a state dir; started, SIGKILLed and restarted by the test.
struct Daemon {
  std::string state, socket, log_file;
  std::vector<std::string> extra;  // more flags (--log-dir)
  pid_t pid = 0;
  std::optional<client::Client> client;

  // Starts it and connects; "" on success, else why (with the daemon's log).
  std::string Start(const std::vector<std::string>& more = {}) {
    // The busybox test rootfs, a host directory, is the image (development form).
    std::vector<std::string> argv = {testing::BuiltBinary("paddockd"), "--state-dir", state,
                                     "--socket", socket, "--log-level", "info", "--allow-dir-images"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), more.begin(), more.end());
    pid = Spawn(argv, {}, log_file);
    if (pid <= 0) return "cannot spawn paddockd";
    for (int i = 0; i < 400; ++i) {
      if (fs::exists(socket)) {
        client::ClientOptions o;
        o.socket_path = socket;
        o.connect_timeout = milliseconds(200);
        // Bounded, so a call on a connection that a stuck process keeps open
        // (see ReapOrphans) fails instead of hanging the harness.
        o.call_timeout = milliseconds(20000);
        auto c = client::Client::Connect(o);
        if (c.ok()) {
          client.emplace(std::move(c).value());
          return "";
        }
      }
      int status;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = 0;
        return "paddockd exited during start-up:\n" + Slurp(log_file);
      }
      std::this_thread::sleep_for(milliseconds(25));
    }
    return "paddockd did not answer within 10 s:\n" + Slurp(log_file);
  }
  int Stop(int sig) {
    if (pid <= 0) return -1;
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = 0;
    client.reset();
    if (sig == SIGKILL) orphans += ReapOrphans();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  // Copies of this daemon still running after its SIGKILL: a clone child that
  // SpawnInNamespaces (sandbox/linux/process.cc) made and that was waiting
  // on its sync pipe. It drops its copy of the pipe's write end, so it sees
  // EOF and exits once the daemon is gone; one that is still there after
  // half a second would hang forever holding the daemon's descriptors.
  // Those are killed and counted (the test expects none).
  int ReapOrphans() {
    auto matching = [this] {
      std::vector<pid_t> pids;
      for (const auto& entry : fs::directory_iterator("/proc")) {
        const std::string name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmd = Slurp(entry.path().string() + "/cmdline");
        std::replace(cmd.begin(), cmd.end(), '\0', ' ');
        if (cmd.find("paddockd --state-dir " + state + " ") == std::string::npos) continue;
        pids.push_back(std::stoi(name));
      }
      return pids;
    };
    for (int i = 0; i < 50 && !matching().empty(); ++i) std::this_thread::sleep_for(milliseconds(10));
    int n = 0;
    for (pid_t pid : matching()) {
      kill(pid, SIGKILL);
      ++n;
    }
    return n;
  }
  int orphans = 0;
  // Runs paddockd to completion (for start-up refusals); exit code and its output.
  std::pair<int, std::string> RunToExit(const std::vector<std::string>& more) {
    std::string out = log_file + ".once";
    fs::remove(out);
    std::vector<std::string> argv = {testing::BuiltBinary("paddockd"), "--state-dir", state,
                                     "--socket", socket};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), more.begin(), more.end());
    pid_t p = Spawn(argv, {}, out);
    int status = 0;
    for (int i = 0; i < 200; ++i) {  // up to 10 s
      if (waitpid(p, &status, WNOHANG) == p)
        return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), Slurp(out)};
      std::this_thread::sleep_for(milliseconds(50));
    }
    kill(p, SIGKILL);
    waitpid(p, &status, 0);
    return {-1, "still running after 10 s:\n" + Slurp(out)};
  }
};

// ---- the workload ---------------------------------------------------------------

constexpr int kEpisodes = 8;

std::string EpisodeId(const std::string& run, int e) { return run + "-e" + std::to_string(e); }
// Odd episodes mark their calls idempotent (may re-run when in doubt).
bool IdempotentEpisode(int e) { return e % 2 == 1; }

ExecRequest StepRequest(const std::string& episode, uint64_t step) {
  ExecRequest r;
  r.argv = {"sh", "-c",
            "echo S" + std::to_string(step) + " >> /work/ran; echo out " + episode + " " +
                std::to_string(step) + " " + std::to_string(step * 7919 % 1009) +
                "; echo t$(date +%s%N) >&2; exit " + std::to_string(step % 4)};
  r.timeout_ms = 10000;
  return r;
}

client::CallKey Key(const std::string& ep, uint64_t step, bool idempotent) {
  client::CallKey k;
  k.episode = ep;
  k.step = step;
  k.call = 0;
  k.idempotent = idempotent;
  return k;
}

struct Ack {
  std::string out, err;
  int32_t exit_code = 0;
  uint64_t wall_time_us = 0;
};

// The lines expected in /work/ran for the steps that ran for real.
std::string RanLines(const std::vector<uint64_t>& steps) {
  std::string s;
  for (uint64_t st : steps) s += "S" + std::to_string(st) + "\n";
  return s;
}

SandboxSpec ContainerSpec(const std::string& image) {
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = image;
  return spec;
}

// Thread-safe collection of failures found on worker threads.
struct Failures {
  std::mutex mu;
  std::vector<std::string> list;
  void Add(std::string what) {
    std::lock_guard<std::mutex> l(mu);
    list.push_back(std::move(what));
  }
  void Report() {
    std::lock_guard<std::mutex> l(mu);
    for (size_t i = 0; i < list.size() && i < 30; ++i) ADD_FAILURE() << list[i];
    if (list.size() > 30) ADD_FAILURE() << list.size() - 30 << " more failures";
  }
};

struct Counters {
  std::atomic<uint64_t> replayed{0};          // acknowledged calls answered from the log
  std::atomic<uint64_t> fresh{0};             // calls that ran for real
  std::atomic<uint64_t> in_flight_at_kill{0}; // calls cut off by a kill
  std::atomic<uint64_t> lost_replies{0};      // in flight, result logged: replayed on resume
  std::atomic<uint64_t> never_logged{0};      // in flight, no intent: ran on resume
  std::atomic<uint64_t> in_doubt_refused{0};  // in doubt, not idempotent: refused
  std::atomic<uint64_t> in_doubt_reran{0};    // in doubt, idempotent: ran again once
  std::atomic<uint64_t> overrides{0};         // refused, then re-issued idempotent by the harness
};

// One episode as the harness knows it across daemon lifetimes.
struct Episode {
  std::string id;
  bool idempotent = false;
  std::vector<Ack> acked;         // acknowledged calls, by step
  std::optional<uint64_t> inflight;  // a step whose call got no answer
  std::vector<uint64_t> ran;      // steps run for real in this daemon lifetime (reset at start)
  // The daemon lived on (the client was killed): a call in flight ran or
  // never arrived, and a running one is waited for; it cannot be in doubt.
  bool daemon_lived = false;
};

// Drives one episode through one daemon lifetime: bind, re-issue every
// acknowledged call from step 0 (must replay byte for byte), settle the call
// in flight at the last kill, check that nothing replayed ran, then new steps
// until `target` steps are acknowledged (or the daemon dies: `dying` is set
// before every kill, so errors after it are the kill's).
void DriveEpisode(client::Client& c, const std::string& image, Episode& ep, uint64_t target,
                  const std::atomic<bool>& dying, Failures& fail, Counters& n,
                  std::atomic<int>* resumed = nullptr) {
  auto bail = [&](const Status& st, const std::string& what) {
    if (!dying.load()) fail.Add(ep.id + ": " + what + ": " + st.ToString());
  };
  auto bound = c.CreateForEpisode(ContainerSpec(image), ep.id);
  if (!bound.ok()) return bail(bound.status(), "create --episode");
  const std::string sid = bound->sandbox.id;
  std::vector<uint64_t>& ran = ep.ran;  // what /work/ran must hold, in order
  auto check_ran = [&](const std::string& when) -> bool {
    ExecRequest cat;
    cat.argv = {"sh", "-c", "cat /work/ran 2>/dev/null; true"};
    auto r = c.Exec(sid, cat);
    if (!r.ok()) {
      bail(r.status(), "cat /work/ran");
      return false;
    }
    if (r->stdout_data != RanLines(ran))
      fail.Add(ep.id + ": " + when + ": /work/ran is [" + r->stdout_data + "], expected [" +
               RanLines(ran) + "]: a replayed call ran again, or a call ran twice");
    return true;
  };

  // (a) Every acknowledged call replays, byte for byte.
  for (uint64_t s = 0; s < ep.acked.size(); ++s) {
    auto r = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, ep.idempotent));
    if (!r.ok()) return bail(r.status(), "replay of acknowledged step " + std::to_string(s));
    const Ack& a = ep.acked[s];
    if (!r->replayed || r->result.stdout_data != a.out || r->result.stderr_data != a.err ||
        r->result.exit_code != a.exit_code || r->result.wall_time_us != a.wall_time_us)
      fail.Add(ep.id + ": acknowledged step " + std::to_string(s) + " answered replayed=" +
               std::to_string(r->replayed) + " stdout [" + r->result.stdout_data + "] stderr [" +
               r->result.stderr_data + "] exit " + std::to_string(r->result.exit_code) +
               "; acknowledged stdout [" + a.out + "] stderr [" + a.err + "] exit " +
               std::to_string(a.exit_code));
    n.replayed++;
  }

  // (c) The call in flight at the kill: what the log says of it decides.
  if (ep.inflight && ep.daemon_lived) {
    const uint64_t s = *ep.inflight;
    auto r = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, ep.idempotent));
    if (!r.ok()) return bail(r.status(), "re-issue of in-flight step " + std::to_string(s));
    if (r->replayed) n.lost_replies++;
    else n.never_logged++;
    ran.push_back(s);  // it ran in this sandbox either way, once
    ep.acked.push_back({r->result.stdout_data, r->result.stderr_data, r->result.exit_code,
                        r->result.wall_time_us});
    ep.inflight.reset();
  } else if (ep.inflight) {
    const uint64_t s = *ep.inflight;
    const std::string key_text = ep.id + ":" + std::to_string(s) + ":0";
    auto detail = c.LogShowEpisode(ep.id);
    bool in_doubt = false;
    if (detail.ok()) {
      for (const auto& d : detail->in_doubt) {
        if (d.key == key_text) in_doubt = true;
        else fail.Add(ep.id + ": " + d.key + " is in doubt but was not in flight at a kill");
      }
    } else if (detail.status().code() != Code::kNotFound) {
      return bail(detail.status(), "log show");
    }
    if (in_doubt && !ep.idempotent) {
      for (int i = 0; i < 2; ++i) {  // refused, and refused again
        auto r = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, false));
        if (r.ok()) {
          fail.Add(ep.id + ": in-doubt call " + key_text + " was not refused (replayed=" +
                   std::to_string(r->replayed) + ")");
        } else if (r.status().code() != Code::kFailedPrecondition ||
                   r.status().message().find("call " + key_text + " is in doubt") ==
                       std::string::npos) {
          return bail(r.status(), "in-doubt " + key_text + " refused with the wrong error");
        }
      }
      if (!check_ran("after the in-doubt refusal")) return;
      n.in_doubt_refused++;
      // The harness (its operator) decides the step may run again.
      auto r = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, true));
      if (!r.ok()) return bail(r.status(), "override of in-doubt " + key_text);
      if (r->replayed) fail.Add(ep.id + ": override of in-doubt " + key_text + " replayed");
      ran.push_back(s);
      ep.acked.push_back({r->result.stdout_data, r->result.stderr_data, r->result.exit_code,
                          r->result.wall_time_us});
      n.overrides++;
    } else {
      auto r = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, ep.idempotent));
      if (!r.ok()) return bail(r.status(), "re-issue of in-flight " + key_text);
      if (in_doubt) {
        if (r->replayed) fail.Add(ep.id + ": in-doubt idempotent " + key_text + " replayed");
        else n.in_doubt_reran++;
      } else if (r->replayed) {
        n.lost_replies++;
      } else {
        n.never_logged++;
      }
      if (!r->replayed) ran.push_back(s);
      ep.acked.push_back({r->result.stdout_data, r->result.stderr_data, r->result.exit_code,
                          r->result.wall_time_us});
      if (in_doubt) {  // ran exactly once, then replays
        auto again = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, ep.idempotent));
        if (!again.ok()) return bail(again.status(), "replay of re-run " + key_text);
        if (!again->replayed || again->result.stderr_data != r->result.stderr_data)
          fail.Add(ep.id + ": re-run in-doubt " + key_text + " did not replay byte for byte");
      }
    }
    ep.inflight.reset();
  }
  // (b) Nothing acknowledged ran again in this lifetime.
  if (!check_ran("after resume")) return;
  if (resumed) ++*resumed;

  // New steps until the target (or the kill).
  while (ep.acked.size() < target) {
    const uint64_t s = ep.acked.size();
    ep.inflight = s;
    auto r = c.Exec(sid, StepRequest(ep.id, s), Key(ep.id, s, ep.idempotent));
    if (!r.ok()) return bail(r.status(), "step " + std::to_string(s));
    ep.inflight.reset();
    if (r->replayed) fail.Add(ep.id + ": new step " + std::to_string(s) + " answered replayed");
    ran.push_back(s);
    ep.acked.push_back({r->result.stdout_data, r->result.stderr_data, r->result.exit_code,
                        r->result.wall_time_us});
    n.fresh++;
    if (s % 3 == 2 && !check_ran("after step " + std::to_string(s))) return;
  }
  check_ran("at the target");
}

class ReplayFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/paddock-fault-XXXXXX";
    dir_ = mkdtemp(tmpl);
    fs::permissions(dir_, fs::perms(0755));  // sandbox uids must traverse it
    image_ = testing::EnsureBusyboxRootfs();
    daemon_ = MakeDaemon("d");
  }
  void TearDown() override {
    daemon_.Stop(SIGTERM);
    for (const auto& m : mounts_) umount2(m.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  Daemon MakeDaemon(const std::string& name) {
    Daemon d;
    d.state = dir_ + "/" + name + "-state";
    d.socket = dir_ + "/" + name + ".sock";
    d.log_file = dir_ + "/" + name + ".log";
    return d;
  }
  // An uninterrupted run of the workload to `steps[e]` steps on a fresh daemon.
  std::vector<std::vector<Ack>> ReferenceRun(const std::string& run, const std::vector<uint64_t>& steps) {
    Daemon ref = MakeDaemon("ref");
    std::string err = ref.Start();
    EXPECT_EQ(err, "");
    std::vector<Episode> eps(kEpisodes);
    std::atomic<bool> dying{false};
    Failures fail;
    Counters n;
    std::vector<std::thread> threads;
    for (int e = 0; e < kEpisodes; ++e) {
      eps[e].id = EpisodeId(run, e);
      eps[e].idempotent = IdempotentEpisode(e);
      threads.emplace_back([&, e] { DriveEpisode(*ref.client, image_, eps[e], steps[e], dying, fail, n); });
    }
    for (auto& t : threads) t.join();
    fail.Report();
    EXPECT_EQ(ref.Stop(SIGTERM), 0);
    std::vector<std::vector<Ack>> out;
    for (auto& ep : eps) out.push_back(ep.acked);
    return out;
  }

  std::string dir_, image_;
  Daemon daemon_;
  std::vector<std::string> mounts_;
};

// Compares resumed trajectories with the reference over each episode's
// prefix: same stdout and exit code per key.
void ExpectSameTrajectories(const std::vector<Episode>& eps, const std::vector<std::vector<Ack>>& ref) {
  for (int e = 0; e < kEpisodes; ++e) {
    ASSERT_EQ(eps[e].acked.size(), ref[e].size()) << eps[e].id;
    for (size_t s = 0; s < ref[e].size(); ++s) {
      EXPECT_EQ(eps[e].acked[s].out, ref[e][s].out) << eps[e].id << " step " << s;
      EXPECT_EQ(eps[e].acked[s].exit_code, ref[e][s].exit_code) << eps[e].id << " step " << s;
    }
  }
}

TEST_F(ReplayFaultTest, DaemonSigkilledAtRandomPoints_AcknowledgedReplayNothingRunsTwice) {
  const int kKills = 60;
  std::mt19937 rng(std::random_device{}());
  std::vector<Episode> eps(kEpisodes);
  for (int e = 0; e < kEpisodes; ++e) {
    eps[e].id = EpisodeId("run", e);
    eps[e].idempotent = IdempotentEpisode(e);
  }
  Failures fail;
  Counters n;
  int kills = 0, kills_mid_resume = 0;
  const auto t0 = Clock::now();
  for (; kills < kKills && fail.list.empty(); ++kills) {
    ASSERT_EQ(daemon_.Start(), "");
    for (auto& ep : eps) ep.ran.clear();
    std::atomic<bool> dying{false};
    std::atomic<int> resumed{0};
    std::vector<std::thread> threads;
    for (int e = 0; e < kEpisodes; ++e)
      threads.emplace_back([&, e] {
        DriveEpisode(*daemon_.client, image_, eps[e], UINT64_MAX, dying, fail, n, &resumed);
      });
    // Every 4th kill lands 0-30 ms after start-up (binding, replaying); the
    // others 0-30 ms after every episode resumed (new work in flight).
    const auto delay = milliseconds(std::uniform_int_distribution<int>(0, 30)(rng));
    if (kills % 4 != 0) {
      auto until = Clock::now() + std::chrono::seconds(10);
      while (resumed.load() < kEpisodes && Clock::now() < until)
        std::this_thread::sleep_for(milliseconds(1));
    }
    std::this_thread::sleep_for(delay);
    if (resumed.load() < kEpisodes) kills_mid_resume++;
    dying = true;
    ASSERT_EQ(daemon_.Stop(SIGKILL), 128 + SIGKILL);
    for (auto& t : threads) t.join();
    for (auto& ep : eps)
      if (ep.inflight) n.in_flight_at_kill++;
  }
  const double chaos_s = std::chrono::duration<double>(Clock::now() - t0).count();
  fail.Report();
  ASSERT_EQ(kills, kKills);

  // A last lifetime: every episode resumes and runs to the same length.
  uint64_t longest = 0;
  for (auto& ep : eps) longest = std::max<uint64_t>(longest, ep.acked.size() + (ep.inflight ? 1 : 0));
  const uint64_t target = longest + 2;
  ASSERT_EQ(daemon_.Start(), "");
  for (auto& ep : eps) ep.ran.clear();
  {
    std::atomic<bool> dying{false};
    std::vector<std::thread> threads;
    for (int e = 0; e < kEpisodes; ++e)
      threads.emplace_back([&, e] { DriveEpisode(*daemon_.client, image_, eps[e], target, dying, fail, n); });
    for (auto& t : threads) t.join();
    fail.Report();
  }
  // Once more from step 0: every call replays (DriveEpisode checks the bytes).
  {
    std::atomic<bool> dying{false};
    std::vector<std::thread> threads;
    for (int e = 0; e < kEpisodes; ++e)
      threads.emplace_back([&, e] { DriveEpisode(*daemon_.client, image_, eps[e], target, dying, fail, n); });
    for (auto& t : threads) t.join();
    fail.Report();
  }
  auto verify = daemon_.client->LogVerify();
  ASSERT_TRUE(verify.ok()) << verify.status().ToString();
  EXPECT_TRUE(verify->ok) << verify->report;
  EXPECT_TRUE(verify->in_doubt.empty()) << verify->report;
  EXPECT_EQ(verify->intents, kEpisodes * target) << verify->report;
  EXPECT_EQ(verify->results, kEpisodes * target) << verify->report;
  ASSERT_EQ(daemon_.Stop(SIGTERM), 0);

  // (d) The same workload, uninterrupted.
  auto ref = ReferenceRun("run", std::vector<uint64_t>(kEpisodes, target));
  ExpectSameTrajectories(eps, ref);

  std::printf("daemon kills: %d in %.1f s (%d before every episode had resumed); %llu (kill, episode) pairs with a call in flight "
              "at a kill: %llu replies lost (replayed on resume), %llu never logged (ran on resume), "
              "%llu in doubt and refused (then re-issued idempotent by the harness), %llu in doubt "
              "and idempotent (re-ran once); %llu calls ran, %llu replayed; %llu steps per episode\n",
              kills, chaos_s, kills_mid_resume, (unsigned long long)n.in_flight_at_kill.load(),
              (unsigned long long)n.lost_replies.load(), (unsigned long long)n.never_logged.load(),
              (unsigned long long)n.in_doubt_refused.load(), (unsigned long long)n.in_doubt_reran.load(),
              (unsigned long long)n.fresh.load(), (unsigned long long)n.replayed.load(),
              (unsigned long long)target);
  EXPECT_EQ(daemon_.orphans, 0) << "clone children of a SIGKILLed paddockd were left hanging in "
                                   "SpawnInNamespaces and had to be killed by the test";
  EXPECT_GT(n.in_flight_at_kill.load(), 0u) << "no kill landed on a call in flight";
}

// ---- the harness killed instead of the daemon ----------------------------------

std::string Hex(std::string_view s) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    h += d[c >> 4];
    h += d[c & 15];
  }
  return h.empty() ? "-" : h;
}
std::string Unhex(const std::string& h) {
  if (h == "-") return "";
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return s;
}
std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string p;
  while (std::getline(ss, p, sep)) parts.push_back(p);
  return parts;
}

// The client harness as a process of its own (this binary re-executed with
// PADDOCK_FAULT_CHILD set, so no gRPC state crosses a fork): every episode
// is bound and driven from step 0 with its keys, each call journaled with
// write(2) before it is issued ("I step") and when it is answered ("A step
// replayed exit wall stdout stderr", hex). The parent SIGKILLs it.
TEST(ReplayFaultChild, Workload) {
  const char* spec = std::getenv("PADDOCK_FAULT_CHILD");
  if (!spec) GTEST_SKIP() << "runs only as the harness child of ClientSigkilledMidWorkload";
  auto f = Split(spec, '\n');  // socket, journal prefix, image, run, target
  ASSERT_EQ(f.size(), 5u);
  client::ClientOptions o;
  o.socket_path = f[0];
  auto c = client::Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const uint64_t target = std::stoull(f[4]);
  std::vector<std::thread> threads;
  for (int e = 0; e < kEpisodes; ++e)
    threads.emplace_back([&, e] {
      int fd = open((f[1] + std::to_string(e)).c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      auto put = [&](const std::string& line) { (void)!write(fd, line.data(), line.size()); };
      const std::string ep = EpisodeId(f[3], e);
      auto bound = c->CreateForEpisode(ContainerSpec(f[2]), ep);
      if (!bound.ok()) return put("E bind " + Hex(bound.status().ToString()) + "\n");
      put("B\n");
      for (uint64_t s = 0; s < target; ++s) {
        put("I " + std::to_string(s) + "\n");
        auto r = c->Exec(bound->sandbox.id, StepRequest(ep, s), Key(ep, s, IdempotentEpisode(e)));
        if (!r.ok()) return put("E " + std::to_string(s) + " " + Hex(r.status().ToString()) + "\n");
        put("A " + std::to_string(s) + " " + std::to_string(r->replayed) + " " +
            std::to_string(r->result.exit_code) + " " + std::to_string(r->result.wall_time_us) + " " +
            Hex(r->result.stdout_data) + " " + Hex(r->result.stderr_data) + "\n");
      }
      close(fd);
    });
  for (auto& t : threads) t.join();
}

TEST_F(ReplayFaultTest, ClientSigkilledMidWorkload_ParentResumesNothingRunsTwice) {
  const int kClientKills = 15;
  const uint64_t kTarget = 30;
  std::mt19937 rng(std::random_device{}());
  ASSERT_EQ(daemon_.Start(), "");
  std::vector<Episode> eps(kEpisodes);
  Failures fail;
  int kills = 0, kills_mid_call = 0;
  for (int gen = 0; gen < kClientKills; ++gen) {
    const std::string journal = dir_ + "/journal-" + std::to_string(gen) + "-";
    pid_t child = Spawn({fs::read_symlink("/proc/self/exe").string(),
                         "--gtest_filter=ReplayFaultChild.Workload"},
                        {"PADDOCK_FAULT_CHILD=" + daemon_.socket + "\n" + journal + "\n" + image_ +
                         "\nclient\n" + std::to_string(kTarget)},
                        dir_ + "/child.log");
    ASSERT_GT(child, 0);
    // Mostly 0-30 ms after every episode is bound (calls in flight); every
    // 4th kill 0-30 ms after the child started (connecting, binding).
    if (gen % 4 != 0) {
      auto until = Clock::now() + std::chrono::seconds(10);
      auto bound = [&] {
        for (int e = 0; e < kEpisodes; ++e)
          if (Slurp(journal + std::to_string(e)).find("B\n") == std::string::npos) return false;
        return true;
      };
      while (!bound() && Clock::now() < until) std::this_thread::sleep_for(milliseconds(1));
    }
    std::this_thread::sleep_for(milliseconds(std::uniform_int_distribution<int>(0, 30)(rng)));
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the harness child finished before its kill:\n"
                                     << Slurp(dir_ + "/child.log");
    kills++;
  }

  // What the children were told, from their journals, in order.
  for (int e = 0; e < kEpisodes; ++e) {
    Episode& ep = eps[e];
    ep.id = EpisodeId("client", e);
    ep.idempotent = IdempotentEpisode(e);
    ep.daemon_lived = true;
    for (int gen = 0; gen < kills; ++gen) {
      std::optional<uint64_t> open_call;
      for (const auto& line : Split(Slurp(dir_ + "/journal-" + std::to_string(gen) + "-" + std::to_string(e)), '\n')) {
        auto w = Split(line, ' ');
        if (w.empty() || w[0] == "B") continue;
        if (w[0] == "E") {
          ADD_FAILURE() << ep.id << " child " << gen << ": " << (w.size() > 2 ? Unhex(w[2]) : line);
          continue;
        }
        if (w[0] == "I") {
          open_call = std::stoull(w[1]);
          continue;
        }
        ASSERT_EQ(w.size(), 7u) << line;  // a torn line cannot happen: one write(2) each
        const uint64_t s = std::stoull(w[1]);
        open_call.reset();
        Ack a{Unhex(w[5]), Unhex(w[6]), std::stoi(w[3]), std::stoull(w[4])};
        const bool replayed = w[2] == "1";
        if (s < ep.acked.size()) {  // (a) re-issued by a later child: replayed, same bytes
          EXPECT_TRUE(replayed) << ep.id << " step " << s << " ran again in child " << gen;
          EXPECT_EQ(a.out, ep.acked[s].out) << ep.id << " step " << s;
          EXPECT_EQ(a.err, ep.acked[s].err) << ep.id << " step " << s;
          EXPECT_EQ(a.exit_code, ep.acked[s].exit_code) << ep.id << " step " << s;
        } else {
          ASSERT_EQ(s, ep.acked.size()) << ep.id << ": a gap in the journal";
          // Replayed only if it was the call in flight when a child was killed.
          if (replayed) {
            EXPECT_TRUE(ep.inflight && *ep.inflight == s) << ep.id << " step " << s;
          }
          ep.acked.push_back(a);
          ep.inflight.reset();
        }
      }
      if (open_call && *open_call == ep.acked.size()) ep.inflight = open_call;
    }
    for (uint64_t s = 0; s < ep.acked.size(); ++s) ep.ran.push_back(s);  // each once, this sandbox
  }
  for (int gen = 0; gen < kills; ++gen)
    for (int e = 0; e < kEpisodes; ++e) {
      std::string j = Slurp(dir_ + "/journal-" + std::to_string(gen) + "-" + std::to_string(e));
      auto lines = Split(j, '\n');
      if (!lines.empty() && lines.back()[0] == 'I') {
        kills_mid_call++;
        break;
      }
    }

  uint64_t acked_by_children = 0;
  for (const auto& ep : eps) acked_by_children += ep.acked.size();
  // The parent resumes every episode from step 0 with the same keys, to the
  // end, then once more (all replayed). /work/ran of the surviving sandbox
  // must hold every step exactly once.
  Counters n;
  std::atomic<bool> dying{false};
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<std::thread> threads;
    for (int e = 0; e < kEpisodes; ++e)
      threads.emplace_back([&, e] { DriveEpisode(*daemon_.client, image_, eps[e], kTarget, dying, fail, n); });
    for (auto& t : threads) t.join();
    fail.Report();
  }
  // (d) An uninterrupted run prints "out EP STEP X" and exits STEP % 4 (the
  // daemon test compares with a real reference run; here the formula).
  for (const auto& ep : eps) {
    ASSERT_EQ(ep.acked.size(), kTarget);
    for (uint64_t s = 0; s < kTarget; ++s) {
      EXPECT_EQ(ep.acked[s].out, "out " + ep.id + " " + std::to_string(s) + " " +
                                     std::to_string(s * 7919 % 1009) + "\n");
      EXPECT_EQ(ep.acked[s].exit_code, static_cast<int>(s % 4));
    }
  }
  auto verify = daemon_.client->LogVerify();
  ASSERT_TRUE(verify.ok()) << verify.status().ToString();
  EXPECT_TRUE(verify->ok) << verify->report;
  EXPECT_TRUE(verify->in_doubt.empty()) << verify->report;
  EXPECT_EQ(verify->intents, kEpisodes * kTarget);
  EXPECT_EQ(verify->results, kEpisodes * kTarget);
  std::printf("client kills: %d (%d with a call in flight); %llu calls acknowledged to the children; "
              "calls in flight at the last kill, on resume: %llu replayed (ran, reply lost), %llu ran "
              "(never arrived)\n",
              kills, kills_mid_call, (unsigned long long)acked_by_children, (unsigned long long)n.lost_replies.load(),
              (unsigned long long)n.never_logged.load());
}

// ---- a corrupted SST file ------------------------------------------------------

TEST_F(ReplayFaultTest, CorruptedSst_DaemonRefusesToStartNamingTheFile_StartsWhenTold) {
  ASSERT_EQ(daemon_.Start(), "");
  auto bound = daemon_.client->CreateForEpisode(ContainerSpec(image_), "sst-ep");
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  std::vector<Ack> acked;
  for (uint64_t s = 0; s < 40; ++s) {
    auto r = daemon_.client->Exec(bound->sandbox.id, StepRequest("sst-ep", s), Key("sst-ep", s, false));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    acked.push_back({r->result.stdout_data, r->result.stderr_data, r->result.exit_code, 0});
  }
  ASSERT_TRUE(daemon_.client->LogCompact().ok());  // the memtables into SST files
  ASSERT_EQ(daemon_.Stop(SIGTERM), 0);

  // Flip bytes inside the first data block of the largest SST.
  std::string victim;
  uintmax_t largest = 0;
  for (const auto& entry : fs::directory_iterator(daemon_.state + "/log"))
    if (entry.path().extension() == ".sst" && entry.file_size() > largest) {
      largest = entry.file_size();
      victim = entry.path().string();
    }
  ASSERT_FALSE(victim.empty());
  ASSERT_GT(largest, 1024u);
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    for (std::streamoff off : {200, 201, 202, 203}) {
      f.seekg(off);
      char c = 0;
      f.get(c);
      f.seekp(off);
      f.put(static_cast<char>(c ^ 0x5a));
    }
  }
  const std::string file_name = fs::path(victim).filename().string();

  auto [code, out] = daemon_.RunToExit({});
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("cannot open the trajectory log at " + daemon_.state + "/log"), std::string::npos) << out;
  EXPECT_NE(out.find(file_name), std::string::npos) << "the message must name the corrupt file: " << out;
  EXPECT_NE(out.find("--log-allow-corruption"), std::string::npos) << out;

  // Told to, it starts; `paddock log verify` names the file.
  ASSERT_EQ(daemon_.Start({"--log-allow-corruption"}), "");
  auto verify = daemon_.client->LogVerify();
  ASSERT_TRUE(verify.ok()) << verify.status().ToString();
  EXPECT_FALSE(verify->ok);
  EXPECT_FALSE(verify->checksums_ok);
  ASSERT_FALSE(verify->corrupt_files.empty()) << verify->report;
  EXPECT_NE(verify->corrupt_files[0].find(file_name), std::string::npos) << verify->report;
  std::printf("corrupt %s: paddockd refused to start (exit %d); with --log-allow-corruption verify says: %s\n",
              file_name.c_str(), code, verify->checksum_error.c_str());
}

// ---- a full disk under the log -------------------------------------------------

// Fills a 4 MiB tmpfs under --log-dir with keyed calls (~64 KiB results)
// until one fails, then grows it, restarts paddockd and checks that every
// acknowledged call replays byte for byte and none ran again. With `strict`,
// also that the full disk was reported as RESOURCE_EXHAUSTED and the daemon
// kept serving (refusing new keyed work) until the restart.
void FillTheLogDiskThenRecover(Daemon& daemon, const std::string& dir, const std::string& image,
                               std::vector<std::string>& mounts, bool strict) {
  const std::string mnt = dir + "/small";
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs (needs root): " << std::strerror(errno);
  mounts.push_back(mnt);
  auto log_tail = [&] {
    std::string l = Slurp(daemon.log_file);
    return "\npaddockd's log ends:\n" + l.substr(l.size() > 2000 ? l.size() - 2000 : 0);
  };
  daemon.extra = {"--log-dir", mnt + "/log"};
  ASSERT_EQ(daemon.Start(), "");
  auto bound = daemon.client->CreateForEpisode(ContainerSpec(image), "full-ep");
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  auto big = [](uint64_t s) {
    ExecRequest r;
    r.argv = {"sh", "-c", "echo S" + std::to_string(s) + " >> /work/ran; head -c 65536 /dev/zero | tr '\\0' " +
                              std::string(1, static_cast<char>('a' + s % 26)) + "; echo; echo t$(date +%s%N) >&2"};
    r.timeout_ms = 10000;
    return r;
  };
  std::vector<Ack> acked;
  Status failure;
  for (uint64_t s = 0; s < 1000; ++s) {
    auto r = daemon.client->Exec(bound->sandbox.id, big(s), Key("full-ep", s, false));
    if (!r.ok()) {
      failure = r.status();
      break;
    }
    ASSERT_FALSE(r->replayed);
    acked.push_back({r->result.stdout_data, r->result.stderr_data, r->result.exit_code, r->result.wall_time_us});
  }
  ASSERT_FALSE(failure.ok()) << "4 MiB never filled";
  EXPECT_GT(acked.size(), 5u);
  std::printf("full disk: %zu calls acknowledged, then: %s\n", acked.size(), failure.ToString().c_str());
  if (strict) {
    ASSERT_EQ(failure.code(), Code::kResourceExhausted) << failure.ToString() << log_tail();
    // New work keeps being refused, on another episode too; the daemon lives.
    auto other = daemon.client->Exec(bound->sandbox.id, big(0), Key("full-ep2", 0, false));
    ASSERT_FALSE(other.ok());
    EXPECT_EQ(other.status().code(), Code::kResourceExhausted) << other.status().ToString() << log_tail();
    auto plain = daemon.client->Exec(bound->sandbox.id, StepRequest("x", 0));
    EXPECT_TRUE(plain.ok()) << "an unkeyed exec needs no log: " << plain.status().ToString();
  } else if (failure.code() != Code::kResourceExhausted) {
    std::printf("full disk: the first failure was not RESOURCE_EXHAUSTED (the daemon died?):%s\n",
                log_tail().c_str());
  }

  // Grow the filesystem, restart: every acknowledged call replays, byte for byte.
  ASSERT_EQ(mount("tmpfs", mnt.c_str(), "tmpfs", MS_REMOUNT, "size=64m"), 0) << std::strerror(errno);
  daemon.Stop(SIGKILL);
  ASSERT_EQ(daemon.Start(), "");
  auto rebound = daemon.client->CreateForEpisode(ContainerSpec(image), "full-ep");
  ASSERT_TRUE(rebound.ok()) << rebound.status().ToString();
  for (uint64_t s = 0; s < acked.size(); ++s) {
    auto r = daemon.client->Exec(rebound->sandbox.id, big(s), Key("full-ep", s, false));
    ASSERT_TRUE(r.ok()) << "acknowledged step " << s << ": " << r.status().ToString();
    EXPECT_TRUE(r->replayed) << s;
    EXPECT_EQ(r->result.stdout_data, acked[s].out) << s;
    EXPECT_EQ(r->result.stderr_data, acked[s].err) << s;
    EXPECT_EQ(r->result.wall_time_us, acked[s].wall_time_us) << s;
  }
  ExecRequest cat;
  cat.argv = {"sh", "-c", "cat /work/ran 2>/dev/null; true"};
  auto ran = daemon.client->Exec(rebound->sandbox.id, cat);
  ASSERT_TRUE(ran.ok());
  EXPECT_EQ(ran->stdout_data, "") << "an acknowledged call ran again";
  // The call that failed: never logged, or in doubt (re-issued idempotent);
  // then new work runs again.
  const uint64_t s = acked.size();
  auto refused = daemon.client->Exec(rebound->sandbox.id, big(s), Key("full-ep", s, true));
  EXPECT_TRUE(refused.ok()) << refused.status().ToString();
  auto fresh = daemon.client->Exec(rebound->sandbox.id, big(s + 1), Key("full-ep", s + 1, false));
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_FALSE(fresh->replayed);
  auto verify = daemon.client->LogVerify();
  ASSERT_TRUE(verify.ok());
  EXPECT_TRUE(verify->ok) << verify->report;
}

TEST_F(ReplayFaultTest, FullLogDisk_NothingAcknowledgedLost) {
  FillTheLogDiskThenRecover(daemon_, dir_, image_, mounts_, /*strict=*/false);
}

// The log keeps free space in reserve and refuses keyed work before RocksDB
// itself runs out of space (a WAL write that fails for lack of space would
// otherwise make Debian's librocksdb 7.8.3 abort the daemon on an assertion).
TEST_F(ReplayFaultTest, FullLogDisk_NewKeyedWorkRefusedWithResourceExhausted_DaemonKeepsServing) {
  FillTheLogDiskThenRecover(daemon_, dir_, image_, mounts_, /*strict=*/true);
}

}  // namespace
}  // namespace paddock
