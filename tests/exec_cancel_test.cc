// A streaming exec whose client cancels it or goes away must not leave its
// command running in the sandbox. Through the real paddockd (DaemonProcess)
// on container, function and microvm sandboxes (the microVM under TCG where
// KVM cannot run guests): a gRPC client cancels its ExecStream
// (ClientContext::TryCancel), and the paddock CLI — the C++ SDK's
// Client::ExecStream — is interrupted with Ctrl-C mid-stream. Either way the
// command (`sleep N`, N unique to the test) must be gone within a few
// seconds (from the host's process table; a guest's own for a microVM), and
// the sandbox must still run commands.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "paddock/client.h"
#include "sandbox/microvm/microvm_substrate.h"
#include "sandbox.grpc.pb.h"
#include "tests/support/daemon_process.h"
#include "tests/support/microvm_accel.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// True while a process runs `sleep <secs>` (argv exactly that: `exec sleep`).
bool SleepRunning(const std::string& secs) {
  const std::string want = std::string("sleep") + '\0' + secs + '\0';
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (testing::ReadWholeFile(e.path().string() + "/cmdline") == want) return true;
  }
  return false;
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

class ExecCancelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    std::vector<std::string> args;
    if (GetParam() == "microvm") {
      testing::UseEmulationWhereKvmCannotRunGuests();
      MicrovmOptions vm = MicrovmOptionsFromEnvironment();
      PADDOCK_REQUIRE_MICROVM();
      args = {"--microvm-accel", vm.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "0"};
    }
    ASSERT_EQ(daemon_.Start(args), "");
    client::ClientOptions o;
    o.socket_path = daemon_.socket_path();
    auto c = client::Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status().message();
    client_.emplace(std::move(*c));
    SandboxSpec spec;
    spec.substrate = GetParam();
    spec.image = rootfs_;
    auto sb = client_->Create(spec);
    ASSERT_TRUE(sb.ok()) << sb.status().message() << daemon_.LogTail();
    id_ = sb->id;
    // A duration no other process on the machine is sleeping.
    secs_ = std::to_string(7000 + (getpid() % 1000) * 8 + counter_++);
  }

  // The sandbox's own process list (a container's or a microVM guest's).
  std::string Ps() {
    ExecRequest r;
    r.shell = "ps -o args";
    auto res = client_->Exec(id_, r);
    EXPECT_TRUE(res.ok()) << res.status().message() << daemon_.LogTail();
    if (!res.ok()) return "";
    EXPECT_NE(res->stdout_data.find("ps -o args"), std::string::npos) << res->stdout_data;
    return res->stdout_data;
  }

  // Whether the streamed command still runs: seen from the host (container
  // and function sandboxes share its kernel) or inside the guest (microvm).
  bool CommandRunning() {
    if (GetParam() == "microvm") return Ps().find("sleep " + secs_ + "\n") != std::string::npos;
    return SleepRunning(secs_);
  }

  // The sandbox still runs commands, and no sleep is left in it.
  void ExpectUsable() {
    ExecRequest r;
    r.argv = {"echo", "ok"};
    auto res = client_->Exec(id_, r);
    ASSERT_TRUE(res.ok()) << res.status().message() << daemon_.LogTail();
    EXPECT_EQ(res->stdout_data, "ok\n");
    if (GetParam() != "function") {
      EXPECT_EQ(Ps().find("sleep"), std::string::npos);
    }
  }

  std::string Command() const { return "echo started; exec sleep " + secs_; }

  testing::DaemonProcess daemon_;
  std::optional<client::Client> client_;
  std::string rootfs_, id_, secs_;
  static inline int counter_ = 0;
};

TEST_P(ExecCancelTest, ClientCancelsExecStream_CommandKilled_SandboxUsable) {
  auto stub = v1::Sandboxes::NewStub(
      grpc::CreateChannel("unix:" + daemon_.socket_path(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::ExecRequest req;
  req.set_sandbox_id(id_);
  req.set_shell(Command());
  req.set_timeout_ms(120000);
  auto reader = stub->ExecStream(&ctx, req);
  v1::ExecEvent ev;
  ASSERT_TRUE(reader->Read(&ev)) << daemon_.LogTail();
  EXPECT_EQ(ev.stdout(), "started\n");
  ASSERT_TRUE(WaitFor([&] { return CommandRunning(); }, std::chrono::seconds(5))) << "sleep " << secs_;

  auto t0 = Clock::now();
  ctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return !CommandRunning(); }, std::chrono::seconds(5)))
      << "sleep " << secs_ << " still runs after the client cancelled";
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  RecordProperty("cancel_to_gone_ms", static_cast<int>(took.count()));
  ExpectUsable();
  // A later streaming exec runs to its end as before.
  std::string out;
  ExecRequest again;
  again.shell = "echo one; echo two >&2; exit 3";
  auto r = client_->ExecStream(id_, again, [&](int stream, std::string_view c) { out += std::to_string(stream) + ":" + std::string(c); });
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_NE(out.find("1:one\n"), std::string::npos) << out;
  EXPECT_NE(out.find("2:two\n"), std::string::npos) << out;
}

// The C++ SDK's own handle: ExecCancel::Cancel from the output callback (the
// first chunk) and from another thread; the call returns CANCELLED.
TEST_P(ExecCancelTest, SdkExecCancel_CommandKilled_SandboxUsable) {
  for (bool from_callback : {true, false}) {
    SCOPED_TRACE(from_callback ? "cancelled in the output callback" : "cancelled from another thread");
    if (!from_callback) secs_ = std::to_string(std::stoi(secs_) + 3);  // a sleep of its own
    ExecRequest r;
    r.shell = Command();
    r.timeout_ms = 120000;
    client::ExecCancel cancel;
    std::string out;
    std::thread other;
    auto res = client_->ExecStream(
        id_, r,
        [&](int, std::string_view chunk) {
          out += chunk;
          if (from_callback) {
            ASSERT_TRUE(WaitFor([&] { return CommandRunning(); }, std::chrono::seconds(5))) << "sleep " << secs_;
            cancel.Cancel();
          } else if (!other.joinable()) {
            other = std::thread([&] {
              WaitFor([&] { return CommandRunning(); }, std::chrono::seconds(5));
              cancel.Cancel();
            });
          }
        },
        &cancel);
    if (other.joinable()) other.join();
    EXPECT_EQ(out, "started\n");
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.status().code(), Code::kCancelled) << res.status().message();
    EXPECT_TRUE(cancel.cancelled());
    EXPECT_TRUE(WaitFor([&] { return !CommandRunning(); }, std::chrono::seconds(5)))
        << "sleep " << secs_ << " still runs after ExecCancel::Cancel";
    ExpectUsable();
  }
  // A handle cancelled before the call cancels it at once: the command never
  // gets to print.
  client::ExecCancel early;
  early.Cancel();
  ExecRequest r;
  r.shell = "echo never";
  std::string out;
  auto res = client_->ExecStream(id_, r, [&](int, std::string_view c) { out += c; }, &early);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kCancelled);
  EXPECT_EQ(out, "");
}

// `paddock sandbox exec --stream` is the C++ SDK's Client::ExecStream; Ctrl-C
// ends the process and with it the connection.
TEST_P(ExecCancelTest, SdkClientGoesAwayMidStream_CommandKilled_SandboxUsable) {
  std::string out = daemon_.dir() + "/stream.out";
  pid_t cli = testing::SpawnProgram({testing::BuiltBinary("paddock"), "sandbox", "exec", "--stream", id_, "--shell",
                                     Command(), "--timeout-ms", "120000"},
                                    out, {"PADDOCK_SOCKET=" + daemon_.socket_path()});
  ASSERT_GT(cli, 0);
  ASSERT_TRUE(WaitFor([&] { return testing::ReadWholeFile(out).find("started") != std::string::npos; },
                      std::chrono::seconds(10)))
      << testing::ReadWholeFile(out) << daemon_.LogTail();
  ASSERT_TRUE(WaitFor([&] { return CommandRunning(); }, std::chrono::seconds(5)));
  kill(cli, SIGINT);
  int st = 0;
  waitpid(cli, &st, 0);
  EXPECT_TRUE(WaitFor([&] { return !CommandRunning(); }, std::chrono::seconds(5)))
      << "sleep " << secs_ << " still runs after its client went away";
  ExpectUsable();
}

INSTANTIATE_TEST_SUITE_P(Substrates, ExecCancelTest, ::testing::Values("container", "function", "microvm"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace paddock
