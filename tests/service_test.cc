// The gRPC edge end to end: a real gRPC server (SandboxServer) on a temp unix
// socket, the real SandboxManager with the real function and container
// substrates, driven through the C++ client library as a user's harness would.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>

#include "paddock/client.h"
#include "rollout/service/server.h"
#include "sandbox.grpc.pb.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

namespace fs = std::filesystem;
using client::Client;
using client::ClientOptions;

// One daemon's worth of parts in a temp directory, torn down in reverse order.
class TestDaemon {
 public:
  explicit TestDaemon(uint32_t max_sandboxes = 100, std::string token = "") {
    char tmpl[] = "/tmp/paddock-svc-XXXXXX";
    dir_ = mkdtemp(tmpl);
    // mkdtemp makes it 0700; sandboxes run as unprivileged uids in their user
    // namespace and must traverse it to reach their state.
    fs::permissions(dir_, fs::perms(0755));
    env_.state_dir = dir_ + "/state";
    env_.init_path = testing::BuiltBinary("paddock-init");
    fs::create_directories(env_.state_dir);
    ManagerOptions mo;
    mo.max_sandboxes = max_sandboxes;
    manager_ = std::make_unique<SandboxManager>(mo);
    manager_->RegisterSubstrate(MakeFunctionSubstrate(env_));
    manager_->RegisterSubstrate(MakeContainerSubstrate(env_));
    service::ServerOptions so;
    so.socket_path = socket_path();
    if (!token.empty()) {
      so.tcp_address = "127.0.0.1:0";
      so.token = token;
    }
    server_ = std::make_unique<service::SandboxServer>(*manager_, so);
    Status st = server_->Start();
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  ~TestDaemon() {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    manager_->Shutdown();
    server_.reset();
    manager_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string socket_path() const { return dir_ + "/paddockd.sock"; }
  int tcp_port() const { return server_->tcp_port(); }
  SandboxManager& manager() { return *manager_; }

  Client Connect() {
    ClientOptions o;
    o.socket_path = socket_path();
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(c).value();
  }

 private:
  std::string dir_;
  SubstrateEnv env_;
  std::unique_ptr<SandboxManager> manager_;
  std::unique_ptr<service::SandboxServer> server_;
};

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    image_ = new std::string(testing::EnsureBusyboxRootfs());
    daemon_ = new TestDaemon();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    delete image_;
  }
  void SetUp() override { client_.emplace(daemon_->Connect()); }
  void TearDown() override {
    for (const auto& id : created_) (void)client_->Destroy(id);
  }

  // Creates a sandbox that TearDown destroys.
  std::string MustCreate(const std::string& substrate) {
    SandboxSpec spec;
    spec.substrate = substrate;
    spec.image = *image_;
    auto info = client_->Create(spec);
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    if (!info.ok()) return "";
    created_.push_back(info->id);
    return info->id;
  }

  static ExecRequest Shell(const std::string& cmd) {
    ExecRequest r;
    r.shell = cmd;
    return r;
  }

  static std::string* image_;
  static TestDaemon* daemon_;
  std::optional<Client> client_;
  std::vector<std::string> created_;
};
std::string* ServiceTest::image_ = nullptr;
TestDaemon* ServiceTest::daemon_ = nullptr;

TEST_F(ServiceTest, Create_BothSubstrates_ListedUntilDestroyed) {
  std::string c = MustCreate("container");
  std::string f = MustCreate("function");
  ASSERT_FALSE(c.empty());
  ASSERT_FALSE(f.empty());
  auto list = client_->List();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  std::map<std::string, client::SandboxInfo> by_id;
  for (const auto& s : *list) by_id[s.id] = s;
  ASSERT_TRUE(by_id.count(c));
  ASSERT_TRUE(by_id.count(f));
  EXPECT_EQ(by_id[c].substrate, "container");
  EXPECT_EQ(by_id[f].substrate, "function");
  EXPECT_EQ(by_id[c].image, *image_);
  EXPECT_EQ(by_id[c].state, "running");
  EXPECT_GT(by_id[c].expires_unix_ms, by_id[c].created_unix_ms);

  ASSERT_TRUE(client_->Destroy(c).ok());
  ASSERT_TRUE(client_->Destroy(f).ok());
  list = client_->List();
  ASSERT_TRUE(list.ok());
  for (const auto& s : *list) {
    EXPECT_NE(s.id, c);
    EXPECT_NE(s.id, f);
  }
  // Destroying again: the id is gone.
  EXPECT_EQ(client_->Destroy(c).code(), Code::kNotFound);
}

TEST_F(ServiceTest, Exec_ReturnsExitCodeAndBothStreams) {
  for (const char* substrate : {"container", "function"}) {
    SCOPED_TRACE(substrate);
    std::string id = MustCreate(substrate);
    ASSERT_FALSE(id.empty());
    auto r = client_->Exec(id, Shell("echo out; echo err >&2; exit 3"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->exit_code, 3);
    EXPECT_EQ(r->signal, 0);
    EXPECT_EQ(r->stdout_data, "out\n");
    EXPECT_EQ(r->stderr_data, "err\n");
    EXPECT_FALSE(r->timed_out);

    ExecRequest argv;
    argv.argv = {"cat"};
    argv.stdin_data = "from stdin";
    r = client_->Exec(id, argv);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->exit_code, 0);
    EXPECT_EQ(r->stdout_data, "from stdin");
  }
}

TEST_F(ServiceTest, ExecStream_DeliversChunksBeforeTheResult) {
  std::string id = MustCreate("container");
  ASSERT_FALSE(id.empty());
  using Clock = std::chrono::steady_clock;
  std::string out, err;
  std::optional<Clock::time_point> first_chunk;
  auto r = client_->ExecStream(id, Shell("echo one; echo oops >&2; sleep 1; echo two; exit 5"),
                               [&](int stream, std::string_view chunk) {
                                 if (!first_chunk) first_chunk = Clock::now();
                                 (stream == 2 ? err : out).append(chunk);
                               });
  Clock::time_point done = Clock::now();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 5);
  EXPECT_EQ(out, "one\ntwo\n");
  EXPECT_EQ(err, "oops\n");
  // The stream's result carries no output: the chunks were the output.
  EXPECT_TRUE(r->stdout_data.empty());
  ASSERT_TRUE(first_chunk.has_value());
  // "one" arrived while the command was still sleeping, not with the result.
  EXPECT_GT(done - *first_chunk, std::chrono::milliseconds(500));
}

TEST_F(ServiceTest, Create_UnknownSubstrate_InvalidArgumentNamingAvailableOnes) {
  SandboxSpec spec;
  spec.substrate = "microwave";
  spec.image = *image_;
  auto r = client_->Create(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("microwave"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("container"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("function"), std::string::npos) << r.status().message();
}

TEST_F(ServiceTest, Create_UnknownImagePath_ErrorNamesThePath) {
  for (const char* substrate : {"container", "function"}) {
    SCOPED_TRACE(substrate);
    SandboxSpec spec;
    spec.substrate = substrate;
    spec.image = "/nonexistent/paddock-image-xyz";
    auto r = client_->Create(spec);
    ASSERT_FALSE(r.ok());
    if (r.ok()) created_.push_back(r->id);
    EXPECT_TRUE(r.status().code() == Code::kNotFound || r.status().code() == Code::kInvalidArgument)
        << r.status().ToString();
    EXPECT_NE(r.status().message().find("/nonexistent/paddock-image-xyz"), std::string::npos)
        << r.status().message();
  }
}

TEST_F(ServiceTest, UnknownId_NotFoundEverywhere) {
  const std::string id = "000000000000";
  EXPECT_EQ(client_->Exec(id, Shell("true")).status().code(), Code::kNotFound);
  EXPECT_EQ(client_->ReadFile(id, "/etc/passwd").status().code(), Code::kNotFound);
  EXPECT_EQ(client_->WriteFile(id, "/tmp/x", "x").status().code(), Code::kNotFound);
  EXPECT_EQ(client_->Stat(id, "/").status().code(), Code::kNotFound);
  EXPECT_EQ(client_->ListDir(id, "/").status().code(), Code::kNotFound);
  EXPECT_EQ(client_->Stats(id).status().code(), Code::kNotFound);
  Status st = client_->Destroy(id);
  EXPECT_EQ(st.code(), Code::kNotFound);
  EXPECT_NE(st.message().find(id), std::string::npos) << st.message();
}

TEST_F(ServiceTest, PathWithDotDot_InvalidArgument) {
  std::string id = MustCreate("container");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(client_->ReadFile(id, "../../etc/shadow").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(client_->WriteFile(id, "/tmp/../../x", "x").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(client_->ListDir(id, "/..").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(client_->Stat(id, "a/../b").status().code(), Code::kInvalidArgument);
  ExecRequest r = Shell("true");
  r.cwd = "/tmp/..";
  EXPECT_EQ(client_->Exec(id, r).status().code(), Code::kInvalidArgument);
}

TEST_F(ServiceTest, Exec_ArgvAndShellExclusive) {
  std::string id = MustCreate("function");
  ASSERT_FALSE(id.empty());
  ExecRequest both = Shell("true");
  both.argv = {"true"};
  auto r = client_->Exec(id, both);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("exactly one of argv and shell"), std::string::npos);
  r = client_->Exec(id, ExecRequest{});
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

TEST_F(ServiceTest, Files_WriteReadStatListDirRoundTrip) {
  std::string id = MustCreate("container");
  ASSERT_FALSE(id.empty());
  std::string content("binary\0data\n", 12);
  auto n = client_->WriteFile(id, "/work/sub/dir/f.bin", content, 0600, true);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, content.size());
  auto back = client_->ReadFile(id, "/work/sub/dir/f.bin");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, content);
  auto st = client_->Stat(id, "/work/sub/dir/f.bin");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->type, FileType::kRegular);
  EXPECT_EQ(st->size, content.size());
  EXPECT_EQ(st->mode & 0777, 0600u);
  auto ls = client_->ListDir(id, "/work/sub/dir");
  ASSERT_TRUE(ls.ok()) << ls.status().ToString();
  ASSERT_EQ(ls->size(), 1u);
  EXPECT_EQ((*ls)[0].name, "f.bin");
  // The command sees what the API wrote.
  auto r = client_->Exec(id, Shell("cat /work/sub/dir/f.bin | wc -c"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stdout_data, "12\n");
}

TEST_F(ServiceTest, WriteFile_OverTheLimit_ResourceExhausted) {
  std::string id = MustCreate("container");
  ASSERT_FALSE(id.empty());
  std::string big(kMaxFileBytes + 1, 'x');
  auto r = client_->WriteFile(id, "/tmp/big", big);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
  EXPECT_NE(r.status().message().find("at most"), std::string::npos) << r.status().message();
}

// This server's substrates have no image store (SubstrateEnv::images unset);
// snapshots with one are tested in image_substrate_test and image_cli_test.
TEST_F(ServiceTest, Snapshot_WithoutImageStoreIsUnimplemented) {
  std::string id = MustCreate("container");
  auto r = client_->Snapshot(id, "prepared");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnimplemented);
  EXPECT_NE(r.status().message().find("no image store"), std::string::npos) << r.status().message();
}

TEST_F(ServiceTest, Stats_CountsSandboxesExecsAndUsage) {
  std::string id = MustCreate("container");
  ASSERT_FALSE(id.empty());
  auto before = client_->Stats();
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  ASSERT_TRUE(client_->Exec(id, Shell("true")).ok());
  auto after = client_->Stats(id);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->execs_total, before->execs_total + 1);
  EXPECT_GE(after->live_sandboxes, 1u);
  EXPECT_EQ(after->max_sandboxes, 100u);
  EXPECT_GE(after->by_substrate["container"], 1u);
  EXPECT_GT(after->daemon_rss_bytes, 1u << 20);
  EXPECT_TRUE(after->has_usage);
  EXPECT_FALSE(before->has_usage);
  EXPECT_GE(after->usage.pids, 1u);  // at least paddock-init
}

TEST(ServiceCapTest, ThirdCreateOverCapOfTwo_ResourceExhausted) {
  std::string image = testing::EnsureBusyboxRootfs();
  TestDaemon daemon(/*max_sandboxes=*/2);
  Client c = daemon.Connect();
  SandboxSpec spec;
  spec.substrate = "function";
  spec.image = image;
  auto a = c.Create(spec);
  auto b = c.Create(spec);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  auto third = c.Create(spec);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), Code::kResourceExhausted);
  EXPECT_NE(third.status().message().find("--max-sandboxes"), std::string::npos)
      << third.status().message();
  // Room again after a destroy.
  ASSERT_TRUE(c.Destroy(a->id).ok());
  auto again = c.Create(spec);
  EXPECT_TRUE(again.ok()) << again.status().ToString();
}

TEST(ServiceAuthTest, TcpListener_NeedsTheRightToken_UnixSocketDoesNot) {
  TestDaemon daemon(10, "s3cret-token");
  ASSERT_GT(daemon.tcp_port(), 0);
  std::string target = "127.0.0.1:" + std::to_string(daemon.tcp_port());
  auto stub = v1::Sandboxes::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  auto call = [&](const std::string& auth) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!auth.empty()) ctx.AddMetadata("authorization", auth);
    v1::ListRequest req;
    v1::ListResponse resp;
    return stub->List(&ctx, req, &resp);
  };
  EXPECT_EQ(call("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call("Bearer wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call("Bearer s3cret-token-and-more").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call("s3cret-token").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status ok = call("Bearer s3cret-token");
  EXPECT_TRUE(ok.ok()) << ok.error_message();

  // Through the client library.
  ClientOptions good;
  good.tcp_target = target;
  good.token = "s3cret-token";
  auto c = Client::Connect(good);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->List().ok());
  ClientOptions bad = good;
  bad.token = "nope";
  auto b = Client::Connect(bad);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->List().status().code(), Code::kUnauthenticated);

  // The unix socket of the same daemon needs no token.
  Client local = daemon.Connect();
  EXPECT_TRUE(local.List().ok());
}

TEST(ClientTest, NoDaemon_UnavailableWithStartHint) {
  ClientOptions o;
  o.socket_path = "/tmp/paddock-no-daemon-here.sock";
  auto c = Client::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kUnavailable);
  EXPECT_NE(c.status().message().find("cannot reach paddockd at /tmp/paddock-no-daemon-here.sock"),
            std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("start it with `paddockd --state-dir"), std::string::npos);
}

}  // namespace
}  // namespace paddock
