// The real binaries as a user runs them: paddockd spawned on a temp state dir
// and socket, the paddock CLI driven through the documented flow, and the
// daemon's signal handling (SIGTERM cleans up; after SIGKILL a restart reaps).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

extern char** environ;

namespace paddock {
namespace {

namespace fs = std::filesystem;

using RunResult = testing::ProgramResult;
using testing::RunProgram;

std::string Slurp(const std::string& path) { return testing::ReadWholeFile(path); }

// True when some process's command line contains `needle`.
bool ProcessRunning(const std::string& needle) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = Slurp(e.path().string() + "/cmdline");
    for (auto& c : cmd)
      if (c == '\0') c = ' ';
    if (cmd.find(needle) != std::string::npos) return true;
  }
  return false;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_process_.emplace(testing::DaemonOptions{.log_level = "debug"});
    dir_ = daemon_process_->dir();
    state_ = daemon_process_->state_dir();
    socket_ = daemon_process_->socket_path();
    log_ = daemon_process_->log_path();
    image_ = testing::EnsureBusyboxRootfs();
  }
  void TearDown() override { daemon_process_.reset(); }

  // Starts paddockd (appending to the log) and waits until it answers.
  void StartDaemon() {
    ASSERT_EQ(daemon_process_->Start(), "");
    daemon_ = daemon_process_->pid();
  }

  // Sends `sig` and returns the daemon's exit status (128+N if killed by N).
  int StopDaemon(int sig) {
    daemon_ = 0;
    return daemon_process_->Stop(sig);
  }

  RunResult Paddock(std::vector<std::string> args, const std::string& input = "") {
    return daemon_process_->Cli(std::move(args), input);
  }

  std::string CreateContainer() {
    RunResult r = Paddock({"sandbox", "create", "--substrate", "container", "--image", image_,
                           "--memory", "256M", "--label", "task=cli-test"});
    EXPECT_EQ(r.code, 0) << r.err;
    std::string id = r.out;
    while (!id.empty() && id.back() == '\n') id.pop_back();
    EXPECT_EQ(id.size(), 12u) << "create printed: " << r.out;
    return id;
  }

  std::optional<testing::DaemonProcess> daemon_process_;
  std::string dir_, state_, socket_, log_, image_;
  pid_t daemon_ = 0;
};

TEST_F(CliTest, DocumentedFlow_CreateExecWriteReadLsJsonDestroy) {
  StartDaemon();
  std::string id = CreateContainer();
  ASSERT_FALSE(id.empty());

  RunResult r = Paddock({"sandbox", "exec", id, "--", "sh", "-c", "echo hi; exit 3"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_EQ(r.out, "hi\n");

  r = Paddock({"sandbox", "exec", "--stream", id, "--", "sh", "-c", "echo streamed; echo e >&2"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "streamed\n");
  EXPECT_EQ(r.err, "e\n");

  r = Paddock({"sandbox", "exec", "--stdin", id, "--", "wc", "-c"}, "12345");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("5"), std::string::npos) << r.out;

  r = Paddock({"sandbox", "exec", id, "--", "sh", "-c", "kill -9 $$"});
  EXPECT_EQ(r.code, 128 + 9) << r.out << r.err;

  r = Paddock({"sandbox", "exec", "--timeout-ms", "300", id, "--", "sleep", "10"});
  EXPECT_EQ(r.code, 124) << r.err;

  const std::string content = "line one\nline two\n\x01\x02 binary\n";
  r = Paddock({"sandbox", "write", id, "/work/notes/a.txt"}, content);
  EXPECT_EQ(r.code, 0) << r.err;
  r = Paddock({"sandbox", "read", id, "/work/notes/a.txt"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, content);

  r = Paddock({"sandbox", "stat", id, "/work/notes/a.txt"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("size:  " + std::to_string(content.size())), std::string::npos) << r.out;
  r = Paddock({"sandbox", "listdir", id, "/work/notes"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("a.txt"), std::string::npos) << r.out;

  r = Paddock({"sandbox", "ls"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(id), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("container"), std::string::npos) << r.out;

  r = Paddock({"--json", "sandbox", "ls"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["sandboxes"].size(), 1u) << r.out;
  EXPECT_EQ(j["sandboxes"][0]["id"], id);
  EXPECT_EQ(j["sandboxes"][0]["labels"]["task"], "cli-test");
  EXPECT_EQ(j["sandboxes"][0]["limits"]["memory_bytes"], 256u << 20);

  r = Paddock({"sandbox", "exec", id, "--json", "--", "sh", "-c", "echo x; exit 4"});
  EXPECT_EQ(r.code, 4);
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["exit_code"], 4);
  EXPECT_EQ(j["stdout"], "x\n");

  r = Paddock({"--json", "sandbox", "stats", id});
  ASSERT_EQ(r.code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["live_sandboxes"], 1);
  EXPECT_GE(j["execs_total"].get<int>(), 6);

  // The container's changes become an image on top of its (directory) image.
  r = Paddock({"sandbox", "snapshot", id, "--name", "prepared"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("sha256:", 0), 0u) << r.out;

  r = Paddock({"sandbox", "destroy", id});
  EXPECT_EQ(r.code, 0) << r.err;
  r = Paddock({"sandbox", "ls"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.find(id), std::string::npos) << r.out;
  r = Paddock({"--json", "sandbox", "ls"});
  EXPECT_EQ(nlohmann::json::parse(r.out)["sandboxes"].size(), 0u);

  r = Paddock({"sandbox", "destroy", id});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("paddock: sandbox '" + id + "' not found"), std::string::npos) << r.err;
}

TEST_F(CliTest, Help_EveryCommandHasIt) {
  std::vector<std::vector<std::string>> commands = {
      {}, {"sandbox"}, {"sandbox", "create"}, {"sandbox", "exec"}, {"sandbox", "write"},
      {"sandbox", "read"}, {"sandbox", "ls"}, {"sandbox", "destroy"}, {"sandbox", "stat"},
      {"sandbox", "listdir"}, {"sandbox", "stats"}, {"sandbox", "snapshot"}, {"sandbox", "pause"},
      {"sandbox", "resume"}, {"sandbox", "fork"}};
  for (auto cmd : commands) {
    cmd.push_back("--help");
    RunResult r = Paddock(cmd);
    EXPECT_EQ(r.code, 0) << cmd.size();
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
  }
  RunResult r = RunProgram({testing::BuiltBinary("paddockd"), "--help"}, "", {});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--state-dir"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--listen-tcp"), std::string::npos) << r.out;
}

TEST_F(CliTest, UsageErrors_Exit2) {
  EXPECT_EQ(Paddock({"sandbox", "create", "--substrate", "container"}).code, 2);  // no --image
  EXPECT_EQ(Paddock({"sandbox", "frobnicate"}).code, 2);
  EXPECT_EQ(Paddock({"sandbox", "fork", "0123456789ab", "--count", "0"}).code, 2);  // 1..64
  EXPECT_EQ(Paddock({"sandbox", "pause"}).code, 2);  // no id
  EXPECT_EQ(Paddock({}).code, 2);
}

TEST_F(CliTest, NoDaemon_PrintsHowToStartItAndExits1) {
  RunResult r = Paddock({"sandbox", "ls"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("paddock: cannot reach paddockd at " + socket_), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("start it with `paddockd --state-dir /var/lib/paddock &` or set PADDOCK_SOCKET"),
            std::string::npos)
      << r.err;
}

TEST_F(CliTest, Daemon_RefusesASecondDaemonOnTheSameStateDir) {
  StartDaemon();
  RunResult r = RunProgram({testing::BuiltBinary("paddockd"), "--state-dir", state_}, "",
                           {"PADDOCK_SOCKET=" + dir_ + "/other.sock"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE((r.out + r.err).find("another paddockd (pid " + std::to_string(daemon_) + ")"),
            std::string::npos)
      << r.out << r.err;
  EXPECT_EQ(Slurp(state_ + "/paddockd.pid"), std::to_string(daemon_) + "\n");
}

TEST_F(CliTest, Daemon_RefusesRemoteTcpWithoutAllowRemoteAndTcpWithoutToken) {
  std::string d = testing::BuiltBinary("paddockd");
  std::vector<std::string> env = {"PADDOCK_SOCKET=" + socket_};
  RunResult r = RunProgram({d, "--state-dir", state_, "--listen-tcp", "0.0.0.0:7443"}, "", env);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE((r.out + r.err).find("--allow-remote"), std::string::npos) << r.out << r.err;
  r = RunProgram({d, "--state-dir", state_, "--listen-tcp", "127.0.0.1:7443"}, "", env);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE((r.out + r.err).find("--token-file"), std::string::npos) << r.out << r.err;
}

// A process no other test runs: `sleep <unique number>` in the background of a
// container, which outlives the exec that started it.
std::string StartSleeper(const std::function<RunResult(std::vector<std::string>)>& paddock,
                         const std::string& id) {
  std::mt19937 rng(std::random_device{}());
  std::string secs = std::to_string(800000 + rng() % 100000);
  RunResult r = paddock({"sandbox", "exec", id, "--", "sh", "-c",
                         "sleep " + secs + " </dev/null >/dev/null 2>&1 &"});
  EXPECT_EQ(r.code, 0) << r.err;
  return "sleep " + secs;
}

TEST_F(CliTest, SigTerm_DestroysSandboxesRemovesSocketAndExits0) {
  StartDaemon();
  std::string id = CreateContainer();
  ASSERT_FALSE(id.empty());
  std::string sleeper = StartSleeper([&](auto a) { return Paddock(a); }, id);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(ProcessRunning(sleeper)) << "the background process never started";

  EXPECT_EQ(StopDaemon(SIGTERM), 0) << Slurp(log_);
  EXPECT_FALSE(fs::exists(socket_));
  EXPECT_FALSE(fs::exists(state_ + "/paddockd.pid"));
  EXPECT_FALSE(ProcessRunning(sleeper)) << "a sandbox process survived SIGTERM";
  EXPECT_FALSE(fs::exists(state_ + "/containers/" + id));
  EXPECT_NE(Slurp(log_).find("destroyed 1 sandboxes at shutdown"), std::string::npos) << Slurp(log_);
}

TEST_F(CliTest, SigKill_RestartOnSameStateDirReapsLeftovers) {
  StartDaemon();
  std::string id = CreateContainer();
  ASSERT_FALSE(id.empty());
  std::string sleeper = StartSleeper([&](auto a) { return Paddock(a); }, id);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(ProcessRunning(sleeper));

  EXPECT_EQ(StopDaemon(SIGKILL), 128 + SIGKILL);
  EXPECT_TRUE(fs::exists(socket_)) << "a SIGKILLed daemon cannot remove its socket";
  // Sandbox processes may or may not die with their daemon (init may notice
  // its channel closing); the sandbox's directory is certainly left behind.
  EXPECT_TRUE(fs::exists(state_ + "/containers/" + id)) << "nothing was left to reap";

  // The restart removes the stale socket, reaps and serves again.
  StartDaemon();
  std::string log = Slurp(log_);
  EXPECT_NE(log.find("reaped leftovers of an earlier daemon"), std::string::npos) << log;
  EXPECT_NE(log.find("removed stale socket"), std::string::npos) << log;
  EXPECT_FALSE(ProcessRunning(sleeper)) << "the reaper left a sandbox process running";
  EXPECT_FALSE(fs::exists(state_ + "/containers/" + id)) << "the reaper left the sandbox's directory";
  RunResult r = Paddock({"--json", "sandbox", "ls"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["sandboxes"].size(), 0u);
  // And it still works.
  std::string again = CreateContainer();
  EXPECT_FALSE(again.empty());
  EXPECT_EQ(StopDaemon(SIGTERM), 0);
}

}  // namespace
}  // namespace paddock
