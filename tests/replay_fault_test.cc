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
    std::vector<std::string> argv = {testing::BuiltBinary("paddockd"), "--state-dir", state,
                                     "--socket", socket, "--log-level", "info"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), more.begin(), more.end());
    pid = Spawn(argv, {}, log_file);
    if (pid <= 0) return "cannot spawn paddockd";
    for (int i = 0; i < 400; ++i) {
      if (fs::exists(socket)) {
        client::ClientOptions o;
        o.socket_path = socket;
        o.connect_timeout = milliseconds(200);
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
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
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
  if (ep.inflight) {
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
  EXPECT_GT(n.in_flight_at_kill.load(), 0u) << "no kill landed on a call in flight";
}

}  // namespace
}  // namespace paddock
