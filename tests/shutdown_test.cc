// paddockd must exit promptly on SIGTERM after it has sent large responses.
//
// A response bigger than the socket buffer (a 2 MB exec output, a large
// export) makes gRPC core start its TCP "backup poller" on one of its executor
// threads; that thread can be left in a poll of up to 10 s after the write has
// finished. When the daemon's last gRPC object went away, grpc_shutdown()
// joined that thread, so the daemon said "paddockd stopped" and then sat for
// up to 10 s before exiting. Through the real paddockd (DaemonProcess) and the
// real CLI: large unary and streamed exec outputs, then SIGTERM, and the exit
// must come within 3 s — while a unary call in flight at the SIGTERM is still
// drained and the trajectory log is closed cleanly (a keyed result written
// before the stop is replayed after a restart; `paddock log verify` passes).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "sandbox/sandbox.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using testing::DaemonProcess;

constexpr auto kExitLimit = std::chrono::milliseconds(3000);
constexpr size_t kBigOutput = 2'000'000;

// A shell command printing `bytes` 'a's.
std::string BigOutputCommand(size_t bytes) {
  return "head -c " + std::to_string(bytes) + " /dev/zero | tr '\\0' a";
}

// Waits up to `limit` for a process whose whole command line is `cmdline`
// (a function sandbox's processes are in the host's process table).
bool WaitForProcess(const std::string& cmdline, std::chrono::milliseconds limit) {
  auto until = Clock::now() + limit;
  do {
    if (testing::RunProgram({"/usr/bin/pgrep", "-x", "-f", cmdline}).code == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (Clock::now() < until);
  return false;
}

class ShutdownTest : public ::testing::Test {
 protected:
  void SetUp() override { rootfs_ = testing::EnsureBusyboxRootfs(); }

  // A function sandbox (bound to `episode` when given); its id.
  std::string CreateSandbox(const std::string& episode = "") {
    std::vector<std::string> args = {"sandbox", "create", "--substrate", "function", "--image", rootfs_};
    if (!episode.empty()) args.insert(args.end(), {"--episode", episode});
    auto r = daemon_.Cli(args);
    EXPECT_EQ(r.code, 0) << r.err << daemon_.LogTail();
    std::string id = r.out;
    while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
    return id;
  }

  // SIGTERM; the exit status, and how long the exit took.
  std::pair<int, std::chrono::milliseconds> TimedStop() {
    auto t0 = Clock::now();
    int code = daemon_.Stop(SIGTERM);
    return {code, std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0)};
  }

  DaemonProcess daemon_;
  std::string rootfs_;
};

// Each round: a fresh start, a 2 MB output as one unary response and as a
// stream, then SIGTERM. Before the fix most rounds took ~10 s; several rounds
// catch the case even where it is intermittent.
TEST_F(ShutdownTest, LargeExecOutputs_ThenSigterm_DaemonExitsWithin3s) {
  const int kRounds = 4;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ASSERT_EQ(daemon_.Start(), "");
    std::string id = CreateSandbox();
    ASSERT_FALSE(id.empty());
    auto plain = daemon_.Cli({"sandbox", "exec", id, "--output-cap", "4M", "--shell", BigOutputCommand(kBigOutput)});
    ASSERT_EQ(plain.code, 0) << plain.err << daemon_.LogTail();
    EXPECT_EQ(plain.out.size(), kBigOutput);
    auto streamed = daemon_.Cli(
        {"sandbox", "exec", id, "--stream", "--output-cap", "4M", "--shell", BigOutputCommand(kBigOutput)});
    ASSERT_EQ(streamed.code, 0) << streamed.err << daemon_.LogTail();
    EXPECT_EQ(streamed.out.size(), kBigOutput);

    auto [code, took] = TimedStop();
    EXPECT_EQ(code, 0) << daemon_.LogTail();
    EXPECT_NE(daemon_.LogTail().find("paddockd stopped"), std::string::npos) << daemon_.LogTail();
    ASSERT_LT(took.count(), kExitLimit.count())
        << "paddockd took " << took.count() << " ms to exit after SIGTERM\n" << daemon_.LogTail();
  }
}

// The prompt exit loses nothing: a unary exec in flight at the SIGTERM
// finishes within the 2 s shutdown deadline and its client gets the output;
// a keyed exec logged before the stop (with a large output, so the backup
// poller runs) is answered from the log after a restart; the log verifies.
TEST_F(ShutdownTest, Sigterm_DrainsInFlightUnaryCall_LogClosedCleanly) {
  ASSERT_EQ(daemon_.Start(), "");
  std::string id = CreateSandbox("shutdown-ep");
  ASSERT_FALSE(id.empty());
  const size_t kKeyedOutput = 600'000;
  auto keyed = daemon_.Cli({"--json", "sandbox", "exec", id, "--key", "shutdown-ep:1:0", "--output-cap", "4M",
                            "--shell", BigOutputCommand(kKeyedOutput)});
  ASSERT_EQ(keyed.code, 0) << keyed.err << daemon_.LogTail();
  json first = json::parse(keyed.out);
  EXPECT_EQ(first["replayed"], false);

  // A duration no other process on the machine is sleeping.
  const std::string secs = "1." + std::to_string(100 + getpid() % 800);
  const std::string out_file = daemon_.dir() + "/inflight.out";
  pid_t cli = testing::SpawnProgram({testing::BuiltBinary("paddock"), "--socket", daemon_.socket_path(), "sandbox",
                                     "exec", id, "--shell", "sleep " + secs + "; echo drained"},
                                    out_file);
  ASSERT_GT(cli, 0);
  ASSERT_TRUE(WaitForProcess("sleep " + secs, std::chrono::seconds(10)))
      << testing::ReadWholeFile(out_file) << daemon_.LogTail();

  auto [code, took] = TimedStop();
  EXPECT_EQ(code, 0) << daemon_.LogTail();
  EXPECT_LT(took.count(), kExitLimit.count()) << "paddockd took " << took.count() << " ms\n" << daemon_.LogTail();
  int status = 0;
  ASSERT_EQ(waitpid(cli, &status, 0), cli);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << " " << testing::ReadWholeFile(out_file);
  EXPECT_EQ(testing::ReadWholeFile(out_file), "drained\n");

  // Restarted on the same state: the keyed call is answered from the log.
  ASSERT_EQ(daemon_.Start(), "");
  std::string again_id = CreateSandbox("shutdown-ep");
  ASSERT_FALSE(again_id.empty());
  auto again = daemon_.Cli({"--json", "sandbox", "exec", again_id, "--key", "shutdown-ep:1:0", "--output-cap", "4M",
                            "--shell", BigOutputCommand(kKeyedOutput)});
  ASSERT_EQ(again.code, 0) << again.err << daemon_.LogTail();
  json second = json::parse(again.out);
  EXPECT_EQ(second["replayed"], true);
  EXPECT_EQ(second["stdout"], first["stdout"]);
  auto verify = daemon_.Cli({"log", "verify"});
  EXPECT_EQ(verify.code, 0) << verify.out << verify.err;
}

// A stopped daemon leaves no cgroup of its own behind: not its sandboxes'
// (a function sandbox holding a stub for its next exec included), nor the
// subtree root that held them.
TEST_F(ShutdownTest, Sigterm_LeavesNoCgroupBehind) {
  ASSERT_EQ(daemon_.Start(), "");
  SubstrateEnv env;
  env.state_dir = daemon_.state_dir();
  const std::string root = "/sys/fs/cgroup/pids/" + env.cgroup_root();
  std::string fn = CreateSandbox();
  ASSERT_FALSE(fn.empty());
  for (int i = 0; i < 3; ++i) {
    auto r = daemon_.Cli({"sandbox", "exec", fn, "--", "true"});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  auto ct = daemon_.Cli({"sandbox", "create", "--substrate", "container", "--image", rootfs_});
  ASSERT_EQ(ct.code, 0) << ct.err;
  ASSERT_EQ(access(root.c_str(), F_OK), 0) << root << " missing while the daemon runs";
  auto [code, took] = TimedStop();
  EXPECT_EQ(code, 0) << daemon_.LogTail();
  EXPECT_NE(access(root.c_str(), F_OK), 0) << root << " outlived the daemon";
}

// A daemon killed with SIGKILL cannot clean up; the next daemon on its state
// dir reaps what it left. A test whose killed daemon is never restarted
// leaves that to the DaemonProcess helper, whose destructor reaps: without
// it every such suite left cgroups (and at times sandbox processes) behind.
TEST_F(ShutdownTest, Sigkill_TheHelperReapsWhatTheKilledDaemonLeft) {
  std::string root;
  {
    DaemonProcess killed;
    ASSERT_EQ(killed.Start(), "");
    SubstrateEnv env;
    env.state_dir = killed.state_dir();
    root = "/sys/fs/cgroup/pids/" + env.cgroup_root();
    auto ct = killed.Cli({"sandbox", "create", "--substrate", "container", "--image", rootfs_});
    ASSERT_EQ(ct.code, 0) << ct.err;
    ASSERT_EQ(killed.Stop(SIGKILL), 128 + SIGKILL);
    ASSERT_EQ(access(root.c_str(), F_OK), 0) << root << ": a SIGKILLed daemon removed its cgroups itself?";
  }
  EXPECT_NE(access(root.c_str(), F_OK), 0) << root << " outlived the helper of a killed daemon";
}

}  // namespace
}  // namespace paddock
