// The uniform-API contract suite: every case runs against every substrate
// through the real SandboxManager (real namespaces, cgroups, overlayfs,
// seccomp, paddock-init). A case that cannot apply to a substrate says why.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/mounts.h"
#include "sandbox/linux/userns.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/microvm_substrate.h"
#include "sandbox/reaper.h"
#include "tests/support/microvm_accel.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace paddock {
namespace {

SubstrateEnv TestEnv(const std::string& state_dir) {
  SubstrateEnv env;
  env.state_dir = state_dir;
  env.init_path = testing::BuiltBinary("paddock-init");
  return env;
}

// The microvm substrate's counters of the suite's manager (its creates are
// template clones: docs/microvm.md, "Templates and clones").
const MicrovmCounters* g_vm_counters = nullptr;

std::unique_ptr<SandboxManager> MakeManager(const SubstrateEnv& env, ManagerOptions opts = {},
                                            const MicrovmCounters** vm_counters = nullptr) {
  fs::create_directories(env.state_dir);
  auto m = std::make_unique<SandboxManager>(opts);
  m->RegisterSubstrate(MakeFunctionSubstrate(env));
  m->RegisterSubstrate(MakeContainerSubstrate(env));
  // One warm VM per recipe: enough for the cases that create twice, and
  // boots are the suite's cost.
  SubstrateEnv vm_env = env;
  vm_env.warm_pool_size = std::min<size_t>(env.warm_pool_size, 1);
  auto vm = MakeMicrovmSubstrate(vm_env);
  if (vm_counters) *vm_counters = MicrovmCountersOf(vm.get());
  m->RegisterSubstrate(std::move(vm));
  return m;
}

// Host pids whose command line is exactly `argv`.
std::vector<pid_t> HostPidsRunning(const std::vector<std::string>& argv) {
  std::string want;
  for (const auto& a : argv) want += a + '\0';
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd == want) out.push_back(std::stoi(name));
  }
  return out;
}

// A sleep duration no other process on the host uses: the test process's pid
// in it, so that concurrent test runs never see each other's sleeps.
std::string UniqueSleep(int tag) { return std::to_string(tag * 1000000 + getpid() % 1000000); }

// Whether no process runs `sleep SECONDS` within `within` (a function exec's
// stub kills what the exec left before it answers).
bool SleepGone(const std::string& seconds, std::chrono::milliseconds within) {
  auto deadline = std::chrono::steady_clock::now() + within;
  while (!HostPidsRunning({"sleep", seconds}).empty()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

class Contract : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    testing::UseEmulationWhereKvmCannotRunGuests();
    rootfs_ = new std::string(testing::EnsureBusyboxRootfs());
    state_ = new std::string(fmt::format("/tmp/paddock-contract-{}", getpid()));
    manager_ = MakeManager(TestEnv(*state_), {}, &g_vm_counters).release();
  }
  static void TearDownTestSuite() {
    delete manager_;
    fs::remove_all(*state_);
  }
  void TearDown() override {
    for (const auto& id : created_) {
      Status ignored = manager_->Destroy(id);
      (void)ignored;
    }
  }

  bool IsFunction() const { return GetParam() == "function"; }
  bool IsMicrovm() const { return GetParam() == "microvm"; }

  // Where KVM cannot run guests the suite uses TCG emulation (see
  // tests/support/microvm_accel.h); with QEMU missing the microvm cases fail
  // with the reason.
  void SetUp() override {
    if (IsMicrovm()) PADDOCK_REQUIRE_MICROVM();
  }

  SandboxSpec Spec() const {
    SandboxSpec s;
    s.substrate = GetParam();
    s.image = *rootfs_;
    return s;
  }
  std::string Create(SandboxSpec spec) {
    auto info = manager_->Create(spec);
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    if (!info.ok()) return "";
    created_.push_back(info->id);
    return info->id;
  }
  std::string Create() { return Create(Spec()); }
  std::shared_ptr<Sandbox> Get(const std::string& id) {
    auto sb = manager_->Get(id);
    EXPECT_TRUE(sb.ok());
    return sb.ok() ? sb.value() : nullptr;
  }
  ExecResult Run(const std::string& id, const std::string& shell, uint32_t timeout_ms = 20000) {
    ExecRequest r;
    r.shell = shell;
    r.timeout_ms = timeout_ms;
    auto sb = Get(id);
    if (!sb) return ExecResult{.exit_code = -100};
    auto res = sb->Exec(r, nullptr);
    EXPECT_TRUE(res.ok()) << res.status().ToString();
    return res.ok() ? res.value() : ExecResult{};
  }

  static std::string* rootfs_;
  static std::string* state_;
  static SandboxManager* manager_;
  std::vector<std::string> created_;
};
std::string* Contract::rootfs_;
std::string* Contract::state_;
SandboxManager* Contract::manager_;

TEST_P(Contract, Exec_ReportsExitCodeAndBothStreams) {
  auto id = Create();
  ExecResult r = Run(id, "echo hi; echo oops >&2; exit 3");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.signal, 0);
  EXPECT_EQ(r.stdout_data, "hi\n");
  EXPECT_EQ(r.stderr_data, "oops\n");
  EXPECT_FALSE(r.timed_out);
  EXPECT_GT(r.wall_time_us, 0u);
}

TEST_P(Contract, Exec_RunsArgvWithoutAShell) {
  auto id = Create();
  ExecRequest r;
  r.argv = {"echo", "a  b", "$HOME"};
  auto res = Get(id)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->stdout_data, "a  b $HOME\n");
}

TEST_P(Contract, Exec_MissingCommandExits127WithMessage) {
  auto id = Create();
  ExecRequest r;
  r.argv = {"no-such-command"};
  auto res = Get(id)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->exit_code, 127);
  EXPECT_THAT(res->stderr_data, HasSubstr("no-such-command: command not found"));
}

TEST_P(Contract, Exec_DeliversBinaryStdin) {
  auto id = Create();
  std::string input(300000, '\0');
  std::mt19937 rng(7);
  for (auto& c : input) c = static_cast<char>(rng());
  ExecRequest r;
  r.argv = {"cat"};
  r.stdin_data = input;
  auto res = Get(id)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->exit_code, 0);
  EXPECT_TRUE(res->stdout_data == input) << "stdin did not round-trip";
}

// Scripts open their stdio by name (`/dev/stdin`, `> /dev/stderr`): links to
// /proc/self/fd, which reopen the pipe itself, so the sandbox's root must be
// allowed to open the pipes its commands were given. Twice: a function
// sandbox's second exec runs on a reused stub.
TEST_P(Contract, Exec_StdioCanBeOpenedByName) {
  auto id = Create();
  for (int i = 0; i < 2; ++i) {
    ExecRequest r;
    r.shell = "cat /dev/stdin; echo out > /dev/stdout; echo err > /dev/stderr";
    r.stdin_data = "in\n";
    auto res = Get(id)->Exec(r, nullptr);
    ASSERT_TRUE(res.ok()) << res.status().message();
    EXPECT_EQ(res->exit_code, 0) << res->stderr_data;
    EXPECT_EQ(res->stdout_data, "in\nout\n");
    EXPECT_EQ(res->stderr_data, "err\n");
  }
}

// A command that exits without reading its stdin: the rest of the input is
// dropped (EPIPE), never a SIGPIPE to whoever writes it (this test process
// does not ignore SIGPIPE, so that would kill it).
TEST_P(Contract, Exec_CommandThatIgnoresItsStdinEndsNormally) {
  auto id = Create();
  ExecRequest r;
  r.argv = {"true"};
  r.stdin_data = std::string(4 << 20, 'x');
  for (int i = 0; i < 3; ++i) {
    auto res = Get(id)->Exec(r, nullptr);
    ASSERT_TRUE(res.ok()) << res.status().message();
    EXPECT_EQ(res->exit_code, 0);
  }
}

TEST_P(Contract, Exec_UsesSpecAndRequestEnvAndCwd) {
  SandboxSpec spec = Spec();
  spec.env = {{"FROM_SPEC", "s"}, {"OVERRIDE", "spec"}};
  auto id = Create(spec);
  ExecRequest r;
  r.shell = "echo $FROM_SPEC $FROM_REQ $OVERRIDE; pwd";
  r.env = {{"FROM_REQ", "r"}, {"OVERRIDE", "req"}};
  r.cwd = "/bin";
  auto res = Get(id)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->stdout_data, "s r req\n/bin\n");
  r.cwd = "/no/such/dir";
  res = Get(id)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->exit_code, 127);
  EXPECT_THAT(res->stderr_data, HasSubstr("/no/such/dir"));
}

TEST_P(Contract, Exec_LargeOutputIsCappedAndFlagged) {
  auto id = Create();
  ExecResult r = Run(id, "head -c 5000000 /dev/zero; echo done >&2");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data.size(), kDefaultOutputCap);
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_EQ(r.stderr_data, "done\n");
  EXPECT_FALSE(r.stderr_truncated);
  ExecRequest small;
  small.shell = "seq 1 10000";
  small.output_cap = 10;
  auto res = Get(id)->Exec(small, nullptr);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->stdout_data, "1\n2\n3\n4\n5\n");
  EXPECT_TRUE(res->stdout_truncated);
}

TEST_P(Contract, Exec_TimeoutKillsWholeProcessTree) {
  auto id = Create();
  auto start = std::chrono::steady_clock::now();
  const std::string a = UniqueSleep(1), b = UniqueSleep(2), c = UniqueSleep(3);
  ExecResult r = Run(id, fmt::format("sleep {} & sleep {} & sleep {}", a, b, c), 400);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_LT(took, std::chrono::seconds(5));
  // Neither the foreground nor the background sleeps survive, anywhere.
  for (const auto& s : {a, b, c}) EXPECT_TRUE(SleepGone(s, std::chrono::milliseconds(1000))) << s;
}

TEST_P(Contract, Exec_ReportsKillingSignal) {
  auto id = Create();
  ExecResult r = Run(id, "kill -TERM $$");
  EXPECT_EQ(r.exit_code, -1);
  EXPECT_EQ(r.signal, SIGTERM);
}

TEST_P(Contract, ExecStream_DeliversOutputBeforeCompletion) {
  auto id = Create();
  ExecRequest r;
  r.shell = "echo first; sleep 0.5; echo second >&2";
  std::vector<std::pair<int, std::string>> chunks;
  std::chrono::steady_clock::time_point first_at;
  auto start = std::chrono::steady_clock::now();
  OutputCallback cb = [&](int stream, std::string_view data) {
    if (chunks.empty()) first_at = std::chrono::steady_clock::now();
    chunks.emplace_back(stream, std::string(data));
  };
  auto res = Get(id)->Exec(r, cb);
  auto end = std::chrono::steady_clock::now();
  ASSERT_TRUE(res.ok());
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0], std::make_pair(1, std::string("first\n")));
  EXPECT_EQ(chunks[1], std::make_pair(2, std::string("second\n")));
  EXPECT_LT(first_at - start, end - start - std::chrono::milliseconds(300));
  EXPECT_TRUE(res->stdout_data.empty());  // delivered as chunks instead
}

TEST_P(Contract, Files_BinaryRoundTripAndListing) {
  auto id = Create();
  auto sb = Get(id);
  std::string data(3 << 20, '\0');
  std::mt19937 rng(1);
  for (auto& c : data) c = static_cast<char>(rng());
  Status w = sb->WriteFile("/work/sub/dir/data.bin", data, 0600, true);
  if (IsFunction()) {
    // Function sandboxes are stateless: nothing can be written to keep.
    EXPECT_EQ(w.code(), Code::kFailedPrecondition);
    EXPECT_THAT(w.message(), HasSubstr("read-only"));
    auto marker = sb->ReadFile("/etc/image-marker", kDefaultReadCap);
    ASSERT_TRUE(marker.ok()) << marker.status().ToString();
    EXPECT_EQ(marker.value(), "busybox test image\n");
    auto listing = sb->ListDir("/etc");
    ASSERT_TRUE(listing.ok());
    EXPECT_GE(listing->size(), 3u);
    return;
  }
  ASSERT_TRUE(w.ok()) << w.ToString();
  auto back = sb->ReadFile("/work/sub/dir/data.bin", kDefaultReadCap);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back.value() == data);
  auto st = sb->Stat("/work/sub/dir/data.bin");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->size, data.size());
  EXPECT_EQ(st->type, FileType::kRegular);
  EXPECT_EQ(st->mode, 0600u);
  ASSERT_TRUE(sb->WriteFile("rel.txt", "relative", 0, false).ok());  // relative to /work
  ExecResult r = Run(id, "cat /work/rel.txt; md5sum /work/sub/dir/data.bin | cut -c1-8");
  EXPECT_THAT(r.stdout_data, HasSubstr("relative"));
  auto listing = sb->ListDir("/work");
  ASSERT_TRUE(listing.ok());
  std::vector<std::string> names;
  for (const auto& e : *listing) names.push_back(e.name);
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("sub", "rel.txt"));
}

TEST_P(Contract, Files_ErrorsAreTyped) {
  auto id = Create();
  auto sb = Get(id);
  EXPECT_EQ(sb->ReadFile("/no/such/file", 100).status().code(), Code::kNotFound);
  EXPECT_EQ(sb->ReadFile("/etc", 100).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(sb->ReadFile("/bin/busybox", 100).status().code(), Code::kResourceExhausted);
  EXPECT_EQ(sb->Stat("/nope").status().code(), Code::kNotFound);
  EXPECT_EQ(sb->ListDir("/nope").status().code(), Code::kNotFound);
  if (!IsFunction()) {
    EXPECT_EQ(sb->WriteFile("/work/missing/parent.txt", "x", 0, false).code(), Code::kNotFound);
  }
}

TEST_P(Contract, Isolation_NoHostProcessesVisible) {
  auto id = Create();
  ExecResult r = Run(id, "ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '");
  int visible = std::atoi(r.stdout_data.c_str());
  EXPECT_GT(visible, 0);
  EXPECT_LT(visible, 6) << r.stdout_data;  // init (container), sh, ls, grep, cat
  // PID 1 is paddock-init: the container's init, or a function sandbox's stub.
  EXPECT_THAT(r.stdout_data, HasSubstr("paddock-init"));
  // The test process itself is not visible inside.
  ExecResult mine = Run(id, fmt::format("test -e /proc/{}/cmdline && echo visible || echo hidden", getpid()));
  if (getpid() > 10) {
    EXPECT_EQ(mine.stdout_data, "hidden\n");
  }
}

TEST_P(Contract, Isolation_NoNetwork) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len);
  listen(s, 4);
  auto id = Create();
  ExecResult r = Run(id, fmt::format("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
                                     "echo x | nc -w 1 127.0.0.1 {} && echo CONNECTED",
                                     ntohs(addr.sin_port)));
  close(s);
  EXPECT_EQ(r.stdout_data.substr(0, 3), "lo\n") << r.stdout_data;
  EXPECT_THAT(r.stdout_data, ::testing::Not(HasSubstr("eth")));
  EXPECT_THAT(r.stdout_data, ::testing::Not(HasSubstr("CONNECTED")));
}

TEST_P(Contract, Isolation_WritesDoNotReachTheImage) {
  auto id = Create();
  ExecResult r = Run(id, "echo changed > /etc/image-marker; touch /new-file; rm -f /bin/ls; echo $?");
  std::ifstream marker(*rootfs_ + "/etc/image-marker");
  std::string content((std::istreambuf_iterator<char>(marker)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "busybox test image\n");
  EXPECT_FALSE(fs::exists(*rootfs_ + "/new-file"));
  EXPECT_TRUE(fs::exists(*rootfs_ + "/bin/ls"));
  if (IsFunction()) {
    EXPECT_THAT(r.stderr_data, HasSubstr("Read-only file system"));
  } else {
    // The container sees its own change; a second container does not.
    EXPECT_EQ(Run(id, "cat /etc/image-marker").stdout_data, "changed\n");
    auto other = Create();
    EXPECT_EQ(Run(other, "cat /etc/image-marker").stdout_data, "busybox test image\n");
  }
}

TEST_P(Contract, Isolation_StateDoesNotPersistInFunctions) {
  auto id = Create();
  // Every place an exec could leave something: scratch, shared memory, a
  // background process, the root, the working directory.
  const std::string secs = UniqueSleep(6);
  // The first exec returns only once the background process has exec'd sleep
  // (until then its comm is the shell's; on a loaded machine that takes a while).
  Run(id, fmt::format("echo kept > /tmp/state; echo kept > /dev/shm/state; (sleep {} > /dev/null 2>&1 &) ; "
                      "echo kept > /state 2>/dev/null; echo kept > ./state 2>/dev/null; "
                      "i=0; while [ $i -lt 100 ]; do for p in /proc/[0-9]*; do read c < $p/comm 2>/dev/null; "
                      "[ \"$c\" = sleep ] && exit 0; done; i=$((i+1)); sleep 0.1 2>/dev/null || sleep 1; done; true",
                      secs));
  ExecResult r = Run(id, fmt::format("for f in /tmp/state /dev/shm/state /state ./state; do "
                                     "test -e $f && echo \"kept $f\"; done; "
                                     "for p in /proc/[0-9]*; do read c < $p/comm 2>/dev/null; "
                                     "[ \"$c\" = sleep ] && echo \"kept process\"; done; echo end"));
  if (IsFunction()) {
    EXPECT_EQ(r.stdout_data, "end\n");
  } else {
    // A container or guest keeps what its execs leave (the guest may have no /dev/shm).
    EXPECT_THAT(r.stdout_data, HasSubstr("kept /tmp/state"));
    EXPECT_THAT(r.stdout_data, HasSubstr("kept process"));
  }
}

TEST_P(Contract, Isolation_HostProcIsNotReachable) {
  auto id = Create();
  // Host-only files: the host's kernel command line is fine to read, but the
  // host's processes and mounts are not in this /proc.
  ExecResult r = Run(id, "cat /proc/self/mountinfo | wc -l; ls /proc/1/root/ | head -3");
  EXPECT_LT(std::atoi(r.stdout_data.c_str()), 30);
  // The sandbox's PID 1 is not the host's, and the host's processes (this
  // test process among them) are not in its /proc.
  std::ifstream host_cmdline("/proc/1/cmdline");
  std::string host_init((std::istreambuf_iterator<char>(host_cmdline)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(host_init.empty());
  ExecResult sandbox_init = Run(id, "cat /proc/1/cmdline");
  EXPECT_NE(sandbox_init.stdout_data, host_init);
  ExecResult pids = Run(id, "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n");
  EXPECT_LT(std::atoi(pids.stdout_data.c_str()), 20) << "the sandbox sees many processes: the host's?";
  ExecResult mine = Run(id, fmt::format("test -e /proc/{}/cmdline && cat /proc/{}/cmdline; true", getpid(), getpid()));
  EXPECT_THAT(mine.stdout_data, ::testing::Not(HasSubstr("contract_test")));
  ExecResult escape = Run(id, "ls /proc/1/root/var/lib 2>&1 | head -1");
  EXPECT_THAT(escape.stdout_data, ::testing::Not(HasSubstr("paddock")));
}

TEST_P(Contract, Limits_MemoryLimitIsReportedAsOom) {
  SandboxSpec spec = Spec();
  spec.limits.memory_bytes = 64ull << 20;
  auto id = Create(spec);
  ExecResult r = Run(id, "tail /dev/zero", 20000);
  EXPECT_TRUE(r.oom_killed) << "exit " << r.exit_code << " signal " << r.signal << " " << r.stderr_data;
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(Run(id, "echo alive").stdout_data, "alive\n");
}

TEST_P(Contract, Limits_ForkBombIsContainedByPidsLimit) {
  SandboxSpec spec = Spec();
  spec.limits.pids = 48;
  auto id = Create(spec);
  // Counted inside the exec while the bomb runs, with shell builtins only
  // (no fork is left to spend): the limit holds for every substrate, the
  // function sandbox's short-lived exec included.
  // Each bomb process forks two more and then waits 4 s on a FIFO (a builtin
  // read: no fork), so the tree stays at whatever size the limit allows.
  ExecResult r = Run(id,
                     "rm -f /tmp/bf; mkfifo /tmp/bf; b() { b & b & read -t 4 x <> /tmp/bf; }; "
                     "b > /dev/null 2>&1 & i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; "
                     "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo count=$n",
                     20000);
  ASSERT_NE(r.stdout_data.find("count="), std::string::npos) << r.stdout_data << r.stderr_data;
  int count = std::atoi(r.stdout_data.c_str() + r.stdout_data.find("count=") + 6);
  // (A guest under TCG emulation may not grow the tree far in the time.)
  if (!IsMicrovm()) EXPECT_GT(count, 8) << "the bomb did not run";
  EXPECT_LE(count, 48 + 2) << "processes beyond the pids limit";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto usage = Get(id)->GetUsage();
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  EXPECT_LE(usage->pids, 48u);
  // The sandbox recovers once the timed-out tree is killed; an emulated
  // guest (microvm under TCG) may take a few seconds to reap it.
  ExecResult after;
  for (int i = 0; i < 50; ++i) {
    after = Run(id, "echo alive");
    if (after.stdout_data == "alive\n") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(after.stdout_data, "alive\n");
}

// A pids limit above the host's hard RLIMIT_NPROC (which a user namespace
// cannot raise) still runs commands: the hard limit applies there instead.
TEST_P(Contract, Limits_PidsAboveTheHostsHardLimitStillRun) {
  SandboxSpec spec = Spec();
  spec.limits.pids = 4'000'000;
  auto id = Create(spec);
  EXPECT_EQ(Run(id, "echo alive").stdout_data, "alive\n");
}

TEST_P(Contract, Limits_CpuBandwidthIsEnforced) {
  SandboxSpec spec = Spec();
  spec.limits.cpu_millicores = 200;
  auto id = Create(spec);
  ExecResult r = Run(id, "while :; do :; done", 1500);
  EXPECT_TRUE(r.timed_out);
  // 20% of one core over 1.5 s is 0.3 s of cpu; unlimited would be ~1.5 s.
  EXPECT_LT(r.cpu_time_us, 700'000u);
  EXPECT_GT(r.cpu_time_us, 50'000u);
}

TEST_P(Contract, Limits_FullDiskIsAnErrorInsideTheSandbox) {
  SandboxSpec spec = Spec();
  spec.limits.disk_bytes = 8ull << 20;
  auto id = Create(spec);
  std::string dir = IsFunction() ? "/tmp" : "/work";
  ExecResult r = Run(id, fmt::format("dd if=/dev/zero of={}/big bs=1M count=20; echo rc=$?", dir));
  EXPECT_THAT(r.stdout_data, ::testing::Not(HasSubstr("rc=0")));
  // ENOSPC from the sized filesystem, or SIGXFSZ from RLIMIT_FSIZE (function).
  EXPECT_THAT(r.stderr_data, ::testing::AnyOf(HasSubstr("No space left on device"),
                                               HasSubstr("File size limit exceeded")));
  if (!IsFunction()) {
    std::string big(12 << 20, 'x');
    Run(id, "rm -f /work/big");
    Status w = Get(id)->WriteFile("/work/too-big.bin", big, 0, false);
    EXPECT_EQ(w.code(), Code::kResourceExhausted) << w.ToString();
    EXPECT_THAT(w.message(), HasSubstr("disk is full"));
  }
  EXPECT_EQ(Run(id, "echo alive").stdout_data, "alive\n");
}

TEST_P(Contract, Seccomp_DeniedCallsFail) {
  auto id = Create();
  ExecResult r = Run(id, "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m; echo mount=$?; "
                         "unshare -U true; echo unshare=$?");
  EXPECT_THAT(r.stdout_data, HasSubstr("mount=1"));
  EXPECT_THAT(r.stdout_data, HasSubstr("unshare=1"));
  EXPECT_THAT(r.stderr_data, HasSubstr("Operation not permitted"));
}

TEST_P(Contract, Destroy_LeavesNothingBehind) {
  auto id = Create();
  const std::string secs = UniqueSleep(4);
  ExecResult r = Run(id, fmt::format("sleep {} > /dev/null 2>&1 & echo started", secs));
  ASSERT_EQ(r.stdout_data, "started\n");
  std::vector<std::string> cgroups_before = CgroupDirsUnder(TestEnv(*state_).cgroup_root());
  ASSERT_TRUE(manager_->Destroy(id).ok());
  created_.clear();
  EXPECT_EQ(manager_->Get(id).status().code(), Code::kNotFound);
  EXPECT_EQ(manager_->Destroy(id).code(), Code::kNotFound);
  if (IsFunction()) {
    // Per-exec state dies with each exec; the zygote is shared by every
    // function sandbox of this image and limits, and goes at shutdown. The
    // exec's background processes were killed by its stub before the answer.
    EXPECT_TRUE(SleepGone(secs, std::chrono::milliseconds(1000)));
    return;
  }
  EXPECT_TRUE(HostPidsRunning({"sleep", secs}).empty());  // at once: Destroy waited for them
  EXPECT_FALSE(fs::exists(*state_ + "/containers/" + id));
  EXPECT_TRUE(MountsUnder(*state_ + "/containers/" + id).empty());
  // The empty cgroup is removed in the background, right after.
  FlushCgroupRemovals();
  for (const auto& dir : CgroupDirsUnder(TestEnv(*state_).cgroup_root()))
    EXPECT_THAT(dir, ::testing::Not(HasSubstr(id)));
}

TEST_P(Contract, Concurrency_ManyThreadsShareSandboxes) {
  std::vector<std::string> ids = {Create(), Create()};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 15; ++i) {
        auto sb = manager_->Get(ids[(t + i) % 2]);
        if (!sb.ok()) { ++failures; continue; }
        ExecRequest r;
        r.argv = {"echo", fmt::format("{}-{}", t, i)};
        auto res = sb.value()->Exec(r, nullptr);
        if (!res.ok() || res->stdout_data != fmt::format("{}-{}\n", t, i)) ++failures;
      }
    });
  }
  // Creates and destroys interleave with the execs.
  for (int i = 0; i < 4; ++i) {
    auto extra = manager_->Create(Spec());
    ASSERT_TRUE(extra.ok()) << extra.status().ToString();
    ASSERT_TRUE(manager_->Destroy(extra->id).ok());
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// A daemon process killed with SIGKILL leaves sandboxes behind; the reaper of
// the next run finds and removes all of it.
TEST_P(Contract, Crash_SigkilledOwnerLeftoversAreReaped) {
  std::string state = fmt::format("/tmp/paddock-crash-{}-{}", getpid(), GetParam());
  fs::remove_all(state);
  fs::create_directories(state);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const std::string crash_sleep = UniqueSleep(5);  // computed here: the child has another pid
  pid_t owner = fork();
  if (owner == 0) {
    close(ready[0]);
    auto m = MakeManager(TestEnv(state));
    SandboxSpec s = Spec();
    for (int i = 0; i < 2; ++i) {
      auto info = m->Create(s);
      if (!info.ok()) _exit(3);
      ExecRequest r;
      r.shell = "sleep " + crash_sleep + " >/dev/null 2>&1 &";
      auto res = m->Get(info->id).value()->Exec(r, nullptr);
      if (!res.ok()) _exit(4);
    }
    char c = 'r';
    if (write(ready[1], &c, 1) != 1) _exit(5);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1) << "owner process failed to create sandboxes";
  close(ready[0]);
  // Stop every sandbox process first, so none can notice the owner's death
  // and exit by itself: the reaper has to kill them.
  for (const auto& dir : CgroupDirsUnder(TestEnv(state).cgroup_root())) {
    std::ifstream procs(dir + "/cgroup.procs");
    pid_t pid;
    while (procs >> pid) kill(pid, SIGSTOP);
  }
  kill(owner, SIGKILL);
  waitpid(owner, nullptr, 0);
  // Left behind: processes, mounts, cgroups, directories (a microVM's
  // mounts are inside its guest: the host has none to leave).
  if (!IsMicrovm()) EXPECT_FALSE(MountsUnder(state).empty());
  EXPECT_FALSE(CgroupDirsUnder(TestEnv(state).cgroup_root()).empty());

  ReapReport report = ReapLeftovers(TestEnv(state));
  EXPECT_TRUE(report.errors.empty()) << report.errors.front();
  EXPECT_GE(report.processes_killed, IsFunction() ? 1 : 2);
  EXPECT_GE(report.cgroups_removed, 1);
  if (!IsMicrovm()) EXPECT_GE(report.mounts_removed, 1);  // the image view (sandbox roots die with their mount namespaces)
  EXPECT_GE(report.dirs_removed, 1);
  EXPECT_TRUE(MountsUnder(state).empty());
  EXPECT_TRUE(CgroupDirsUnder(TestEnv(state).cgroup_root()).empty());
  EXPECT_TRUE(SleepGone(crash_sleep, std::chrono::milliseconds(1000)));
  // A daemon on the reaped state dir works again.
  auto m = MakeManager(TestEnv(state));
  SandboxSpec s = Spec();
  auto info = m->Create(s);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  m.reset();
  EXPECT_TRUE(MountsUnder(state).empty());
  fs::remove_all(state);
}

// Every microvm case above ran on template clones (templates are on by
// default; PADDOCK_MICROVM_TEMPLATES=off would make them cold boots): none of
// the suite's VMs (warm-pool fills included) booted cold.
TEST_P(Contract, MicrovmCasesRunOnTemplateClones) {
  if (!IsMicrovm()) GTEST_SKIP() << "microvm only";
  if (const char* t = std::getenv("PADDOCK_MICROVM_TEMPLATES"); t && std::string_view(t) == "off")
    GTEST_SKIP() << "PADDOCK_MICROVM_TEMPLATES=off";
  ASSERT_NE(g_vm_counters, nullptr);
  std::string id = Create(Spec());
  ASSERT_FALSE(id.empty());
  EXPECT_GE(g_vm_counters->clones.load(), 1u);
  EXPECT_EQ(g_vm_counters->cold_boots.load(), 0u) << "a microvm case booted cold";
  EXPECT_EQ(g_vm_counters->clone_failures.load(), 0u);
  EXPECT_GE(g_vm_counters->template_builds.load(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Substrates, Contract, ::testing::Values("function", "container", "microvm"),
                         [](const auto& info) { return info.param; });

// --- Manager behaviour that does not depend on the substrate -------------

class ManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    state_ = fmt::format("/tmp/paddock-manager-{}", getpid());
  }
  void TearDown() override { fs::remove_all(state_); }
  std::string rootfs_, state_;
};

TEST_F(ManagerTest, UnknownSubstrateNamesTheAvailableOnes) {
  auto m = MakeManager(TestEnv(state_));
  SandboxSpec s{.substrate = "vm", .image = rootfs_};
  auto r = m->Create(s);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("container, function"));
}

TEST_F(ManagerTest, UnknownOrBadImageIsAClearError) {
  auto m = MakeManager(TestEnv(state_));
  for (const char* sub : {"function", "container"}) {
    SandboxSpec s{.substrate = sub, .image = "/no/such/rootfs"};
    auto r = m->Create(s);
    EXPECT_EQ(r.status().code(), Code::kNotFound);
    EXPECT_THAT(r.status().message(), HasSubstr("/no/such/rootfs"));
    s.image = "relative/dir";
    EXPECT_EQ(m->Create(s).status().code(), Code::kInvalidArgument);
    s.image = state_;  // a directory, but no root filesystem
    EXPECT_EQ(m->Create(s).status().code(), Code::kInvalidArgument);
    s.image = "/etc";  // a host system directory: never an image
    EXPECT_EQ(m->Create(s).status().code(), Code::kPermissionDenied);
  }
  // Nothing leaked on the error paths.
  EXPECT_FALSE(fs::exists(state_ + "/containers") && !fs::is_empty(state_ + "/containers"));
  EXPECT_EQ(m->live(), 0u);
}

TEST_F(ManagerTest, StateDirSandboxesCannotReachIsAClearError) {
  std::string parent = state_ + "/private";
  fs::create_directories(parent);
  chmod(parent.c_str(), 0700);
  auto m = MakeManager(TestEnv(parent + "/state"));
  for (const char* sub : {"function", "container"}) {
    SandboxSpec s{.substrate = sub, .image = rootfs_};
    auto r = m->Create(s);
    EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
    EXPECT_THAT(r.status().message(), HasSubstr("chmod o+x " + parent));
  }
}

TEST_F(ManagerTest, InitBinaryInAPrivateDirectoryStillStarts) {
  // Sandbox root is an unprivileged host user; the daemon hands it the
  // binary by fd, so a build under a 0700 home directory works.
  std::string hidden = state_ + "-hidden";
  fs::create_directories(hidden);
  chmod(hidden.c_str(), 0700);
  fs::copy_file(testing::BuiltBinary("paddock-init"), hidden + "/paddock-init");
  chmod((hidden + "/paddock-init").c_str(), 0755);
  SubstrateEnv env = TestEnv(state_);
  env.init_path = hidden + "/paddock-init";
  auto m = MakeManager(env);
  for (const char* sub : {"function", "container"}) {
    SandboxSpec s{.substrate = sub, .image = rootfs_};
    auto r = m->Create(s);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ExecRequest e;
    e.argv = {"echo", "ok"};
    EXPECT_EQ(m->Get(r->id).value()->Exec(e, nullptr)->stdout_data, "ok\n");
  }
  m.reset();
  fs::remove_all(hidden);
}

TEST_F(ManagerTest, FailedSetupInsideTheSandboxLeavesNothing) {
  auto m = MakeManager(TestEnv(state_));
  // paddock-init cannot create this workdir: setup fails inside the sandbox,
  // after namespaces, mounts and cgroups exist.
  SandboxSpec s{.substrate = "container", .image = rootfs_, .workdir = "/dev/null/work"};
  auto r = m->Create(s);
  EXPECT_EQ(r.status().code(), Code::kInternal);
  EXPECT_THAT(r.status().message(), HasSubstr("creating workdir /dev/null/work"));
  EXPECT_EQ(m->live(), 0u);
  EXPECT_TRUE(fs::is_empty(state_ + "/containers"));
  EXPECT_TRUE(MountsUnder(state_ + "/containers").empty());
  FlushCgroupRemovals();
  for (const auto& dir : CgroupDirsUnder(TestEnv(state_).cgroup_root()))
    EXPECT_THAT(dir, ::testing::Not(HasSubstr("/ct-"))) << "leaked cgroup";
}

TEST_F(ManagerTest, WarmPoolHandsOverAPreparedContainer) {
  SubstrateEnv env = TestEnv(state_);
  env.warm_pool_size = 2;
  auto m = MakeManager(env);
  SandboxSpec s{.substrate = "container", .image = rootfs_, .env = {{"WHO", "first"}}};
  auto first = m->Create(s);  // cold: nothing asked for this recipe before
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  // The pool fills in the background: two more containers appear.
  auto dirs = [&] {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(state_ + "/containers")) out.insert(e.path().filename());
    return out;
  };
  for (int i = 0; i < 200 && dirs().size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  std::set<std::string> before = dirs();
  ASSERT_EQ(before.size(), 3u);
  s.env = {{"WHO", "second"}};
  auto second = m->Create(s);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(before.count(second->id)) << "second create did not come from the pool";
  ExecRequest r;
  r.shell = "echo $WHO; ls /work | wc -l";
  EXPECT_EQ(m->Get(second->id).value()->Exec(r, nullptr)->stdout_data, "second\n0\n");
  // A different recipe is not served from this pool.
  SandboxSpec other = s;
  other.limits.pids = 77;
  auto third = m->Create(other);
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(before.count(third->id));
  m.reset();  // shutdown destroys pooled containers too
  EXPECT_TRUE(fs::is_empty(state_ + "/containers"));
  EXPECT_TRUE(MountsUnder(state_).empty());
}

TEST_F(ManagerTest, WarmPoolOfZeroBuildsNothingAhead) {
  SubstrateEnv env = TestEnv(state_);
  env.warm_pool_size = 0;
  auto m = MakeManager(env);
  SandboxSpec s{.substrate = "container", .image = rootfs_};
  ASSERT_TRUE(m->Create(s).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(state_ + "/containers")) ++n;
  EXPECT_EQ(n, 1u);
}

TEST_F(ManagerTest, GlobalCapIsEnforced) {
  auto m = MakeManager(TestEnv(state_), ManagerOptions{.max_sandboxes = 2});
  SandboxSpec s{.substrate = "container", .image = rootfs_};
  auto a = m->Create(s);
  auto b = m->Create(s);
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = m->Create(s);
  EXPECT_EQ(c.status().code(), Code::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr("--max-sandboxes"));
  ASSERT_TRUE(m->Destroy(a->id).ok());
  EXPECT_TRUE(m->Create(s).ok());
}

TEST_F(ManagerTest, TimeToLiveDestroysTheSandbox) {
  auto m = MakeManager(TestEnv(state_));
  SandboxSpec s{.substrate = "container", .image = rootfs_, .ttl_seconds = 1};
  auto a = m->Create(s);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(m->List().size(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1800));
  EXPECT_EQ(m->List().size(), 0u);
  EXPECT_FALSE(fs::exists(state_ + "/containers/" + a->id));
}

TEST_F(ManagerTest, ShutdownLeavesNothing) {
  auto m = MakeManager(TestEnv(state_));
  for (const char* sub : {"function", "container"}) {
    SandboxSpec s{.substrate = sub, .image = rootfs_};
    ASSERT_TRUE(m->Create(s).ok());
  }
  m.reset();
  EXPECT_TRUE(MountsUnder(state_).empty());
  EXPECT_TRUE(CgroupDirsUnder(TestEnv(state_).cgroup_root()).empty());
  EXPECT_TRUE(fs::is_empty(state_ + "/containers"));
  EXPECT_TRUE(fs::is_empty(state_ + "/functions"));
}

// Image views open a user namespace through a throwaway child. Many at once
// (concurrent creates) must not wait on each other: a child that waited for
// EOF on a pipe could be holding another call's pipe open, and that one its.
TEST(UserNamespaces, ConcurrentOpensNeverWaitOnEachOther) {
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&] {
        for (int i = 0; i < 40; ++i)
          if (!OpenUsernsWithMap(kFunctionIds).ok()) ++failed;
      });
    for (auto& th : threads) th.join();
    _exit(failed.load() == 0 ? 0 : 1);
  }
  int status = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  pid_t done = 0;
  while ((done = waitpid(child, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (done == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL() << "320 concurrent user-namespace opens did not finish within 60 s (they wait on each other)";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "an open failed";
}

}  // namespace
}  // namespace paddock
