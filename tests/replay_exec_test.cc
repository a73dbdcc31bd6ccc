// Idempotent calls at the sandbox API, end to end: the real paddockd spawned
// on a temp state dir (so it can be SIGKILLed and restarted), its real
// trajectory log (RocksDB), driven through the C++ client, raw gRPC stubs and
// the paddock CLI. Side effects are counted inside the sandbox: each keyed
// command appends a line to a file, and the test reads the line count.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "paddock/client.h"
#include "proto/convert.h"
#include "replay/idempotent_calls.h"
#include "replay/trajectory_log.h"
#include "sandbox.grpc.pb.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

extern char** environ;

namespace paddock {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using RunResult = testing::ProgramResult;

std::string Slurp(const std::string& path) { return testing::ReadWholeFile(path); }

class ReplayExecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_process_.emplace(testing::DaemonOptions{.log_level = "debug"});
    dir_ = daemon_process_->dir();
    state_ = daemon_process_->state_dir();
    socket_ = daemon_process_->socket_path();
    daemon_log_ = daemon_process_->log_path();
    image_ = testing::EnsureBusyboxRootfs();
  }
  void TearDown() override {
    client_.reset();
    daemon_process_.reset();
  }

  void StartDaemon(std::vector<std::string> extra = {}) {
    ASSERT_EQ(daemon_process_->Start(extra), "");
    daemon_ = daemon_process_->pid();
    client::ClientOptions o;
    o.socket_path = socket_;
    o.connect_timeout = std::chrono::milliseconds(2000);
    auto c = client::Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_.emplace(std::move(c).value());
  }

  int StopDaemon(int sig) {
    client_.reset();
    daemon_ = 0;
    return daemon_process_->Stop(sig);
  }

  RunResult Paddock(std::vector<std::string> args, const std::string& input = "") {
    return daemon_process_->Cli(std::move(args), input);
  }

  std::string CreateContainer(const std::string& episode = "") {
    SandboxSpec spec;
    spec.substrate = "container";
    spec.image = image_;
    if (episode.empty()) {
      auto info = client_->Create(spec);
      EXPECT_TRUE(info.ok()) << info.status().ToString();
      return info.ok() ? info->id : "";
    }
    auto bound = client_->CreateForEpisode(spec, episode);
    EXPECT_TRUE(bound.ok()) << bound.status().ToString();
    return bound.ok() ? bound->sandbox.id : "";
  }

  // Lines in /work/count of sandbox `id`: how many times the counted command ran.
  int RunCount(const std::string& id) {
    ExecRequest r;
    r.shell = "cat /work/count 2>/dev/null | wc -l";
    auto res = client_->Exec(id, r);
    EXPECT_TRUE(res.ok()) << res.status().ToString();
    return res.ok() ? std::stoi(res->stdout_data) : -1;
  }

  // A command with a side effect (one line appended) and an output that
  // differs on every run (a nanosecond clock and a random number).
  static ExecRequest Counted(const std::string& tag = "x") {
    ExecRequest r;
    r.argv = {"sh", "-c", "echo " + tag + " >> /work/count; echo run $(wc -l < /work/count) "
                          "$(date +%s%N) $RANDOM; echo err >&2"};
    return r;
  }

  std::unique_ptr<v1::Sandboxes::Stub> RawStub() {
    auto channel = grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials());
    return v1::Sandboxes::NewStub(channel);
  }

  std::optional<testing::DaemonProcess> daemon_process_;
  std::string dir_, state_, socket_, daemon_log_, image_;
  pid_t daemon_ = 0;
  std::optional<client::Client> client_;
};

client::CallKey Key(const std::string& ep, uint64_t step, uint32_t call, bool idempotent = false) {
  client::CallKey k;
  k.episode = ep;
  k.step = step;
  k.call = call;
  k.idempotent = idempotent;
  return k;
}

TEST_F(ReplayExecTest, KeyedExec_RunsOnce_RepeatReturnsIdenticalBytesReplayed) {
  StartDaemon();
  std::string id = CreateContainer();
  ASSERT_FALSE(id.empty());

  // Raw gRPC, to compare the response bytes themselves.
  auto stub = RawStub();
  v1::ExecRequest req;
  req.set_sandbox_id(id);
  v1conv::ToProto(Counted(), &req);
  req.mutable_idempotency_key()->set_episode("ep-a");
  req.mutable_idempotency_key()->set_step(1);
  req.mutable_idempotency_key()->set_call(0);
  v1::ExecResult first, second;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Exec(&ctx, req, &first).ok());
  }
  EXPECT_FALSE(first.replayed());
  EXPECT_EQ(first.stdout().rfind("run 1 ", 0), 0u) << first.stdout();
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Exec(&ctx, req, &second).ok());
  }
  EXPECT_TRUE(second.replayed());
  second.set_replayed(false);
  EXPECT_EQ(second.SerializeAsString(), first.SerializeAsString())
      << "a replay must return the logged response byte for byte";

  // Through the client too, and via ExecStream; still nothing runs again.
  auto c = client_->Exec(id, Counted(), Key("ep-a", 1, 0));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->replayed);
  EXPECT_EQ(c->result.stdout_data, first.stdout());
  std::string streamed;
  auto s = client_->ExecStream(id, Counted(), Key("ep-a", 1, 0),
                               [&](int stream, std::string_view chunk) {
                                 if (stream == 1) streamed += chunk;
                               });
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(s->replayed);
  EXPECT_EQ(streamed, first.stdout());
  EXPECT_EQ(RunCount(id), 1) << "the keyed command ran more than once";

  // The next key runs for real.
  auto next = client_->Exec(id, Counted(), Key("ep-a", 1, 1));
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(next->replayed);
  EXPECT_EQ(RunCount(id), 2);
}

TEST_F(ReplayExecTest, KeyReusedWithDifferentArgv_RefusedNamingTheDifference) {
  StartDaemon();
  std::string id = CreateContainer();
  ASSERT_TRUE(client_->Exec(id, Counted("a"), Key("ep-b", 0, 0)).ok());
  auto r = client_->Exec(id, Counted("b"), Key("ep-b", 0, 0));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("idempotency key ep-b:0:0 was already used for a different request"),
            std::string::npos) << m;
  EXPECT_NE(m.find("differs in: argv (logged [\"sh\",\"-c\",\"echo a >>"), std::string::npos) << m;
  EXPECT_NE(m.find("now [\"sh\",\"-c\",\"echo b >>"), std::string::npos) << m;
  EXPECT_EQ(m.find("cwd"), std::string::npos) << "only the fields that differ are named: " << m;
  EXPECT_EQ(RunCount(id), 1);

  // An exec's key used by a write is refused too.
  auto w = client_->WriteFile(id, "/work/f", "data", 0, true, Key("ep-b", 0, 0));
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("the kind of call (logged exec, now write)"), std::string::npos)
      << w.status().message();
}

TEST_F(ReplayExecTest, KeyedWriteFile_ReplayDoesNotWriteAgain) {
  StartDaemon();
  std::string id = CreateContainer();
  auto w = client_->WriteFile(id, "/work/f", "first", 0, true, Key("ep-w", 0, 0));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_FALSE(w->replayed);
  EXPECT_EQ(w->bytes_written, 5u);
  ASSERT_TRUE(client_->WriteFile(id, "/work/f", "changed since").ok());  // unkeyed
  auto again = client_->WriteFile(id, "/work/f", "first", 0, true, Key("ep-w", 0, 0));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->replayed);
  EXPECT_EQ(again->bytes_written, 5u);
  auto content = client_->ReadFile(id, "/work/f");
  ASSERT_TRUE(content.ok());
  EXPECT_EQ(*content, "changed since") << "the replay wrote again";
  auto other = client_->WriteFile(id, "/work/f", "second", 0, true, Key("ep-w", 0, 0));
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("content (logged 5 bytes"), std::string::npos)
      << other.status().message();
}

TEST_F(ReplayExecTest, SigKilledDaemon_RestartAnswersAcknowledgedCallsFromTheLog) {
  StartDaemon();
  std::string id = CreateContainer("ep-k");
  ASSERT_FALSE(id.empty());
  auto first = client_->Exec(id, Counted(), Key("ep-k", 0, 0));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_FALSE(first->replayed);

  EXPECT_EQ(StopDaemon(SIGKILL), 128 + SIGKILL);
  StartDaemon();
  // The sandbox died with its daemon; the acknowledged call is still answered.
  EXPECT_FALSE(client_->Stat(id, "/").ok());
  auto again = client_->Exec(id, Counted(), Key("ep-k", 0, 0));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->replayed);
  EXPECT_EQ(again->result.stdout_data, first->result.stdout_data);
  EXPECT_EQ(again->result.stderr_data, "err\n");
  EXPECT_EQ(again->result.wall_time_us, first->result.wall_time_us);
  // A new call on the lost sandbox is refused before anything is logged.
  auto lost = client_->Exec(id, Counted(), Key("ep-k", 0, 1));
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.status().code(), Code::kNotFound) << lost.status().ToString();

  // The episode gets a rebuilt sandbox; its logged calls still replay on it,
  // and new ones run there.
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = image_;
  auto bound = client_->CreateForEpisode(spec, "ep-k");
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  EXPECT_TRUE(bound->rebuilt);
  EXPECT_FALSE(bound->reused);
  EXPECT_EQ(bound->previous_sandbox_id, id);
  EXPECT_NE(bound->sandbox.id, id);
  auto replay_on_new = client_->Exec(bound->sandbox.id, Counted(), Key("ep-k", 0, 0));
  ASSERT_TRUE(replay_on_new.ok());
  EXPECT_TRUE(replay_on_new->replayed);
  auto fresh = client_->Exec(bound->sandbox.id, Counted(), Key("ep-k", 0, 1));
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE(fresh->replayed);
  EXPECT_EQ(RunCount(bound->sandbox.id), 1);
  // While it lives, a second create returns it.
  auto same = client_->CreateForEpisode(spec, "ep-k");
  ASSERT_TRUE(same.ok());
  EXPECT_TRUE(same->reused);
  EXPECT_EQ(same->sandbox.id, bound->sandbox.id);
  auto detail = client_->LogShowEpisode("ep-k");
  ASSERT_TRUE(detail.ok()) << detail.status().ToString();
  EXPECT_EQ(detail->episode.sandbox_id, bound->sandbox.id);
  EXPECT_NE(detail->episode.rebuild_note.find("sandbox " + id + " was gone"), std::string::npos)
      << detail->episode.rebuild_note;
}

TEST_F(ReplayExecTest, InDoubtCall_RefusedUnlessIdempotent) {
  StartDaemon();
  std::string id = CreateContainer("ep-d");
  ASSERT_FALSE(id.empty());
  ASSERT_EQ(StopDaemon(SIGTERM), 0);

  // The state a daemon killed mid-exec leaves: an intent, no result. Written
  // through the log library on the daemon's own database while it is stopped.
  v1::ExecRequest req;
  v1conv::ToProto(Counted(), &req);
  replay::RequestIdentity identity = replay::IdentifyExec(req);
  {
    replay::LogOptions o;
    o.dir = state_ + "/log";
    auto log = replay::TrajectoryLog::Open(o);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    ASSERT_TRUE((*log)->PutIntent({"ep-d", 4, 0}, identity.fingerprint, identity.summary, false).ok());
  }
  StartDaemon();
  std::string id2 = CreateContainer("ep-d");  // rebuilt
  auto refused = client_->Exec(id2, Counted(), Key("ep-d", 4, 0));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kFailedPrecondition);
  const std::string& m = refused.status().message();
  EXPECT_NE(m.find("call ep-d:4:0 is in doubt: it started (intent logged at "), std::string::npos) << m;
  EXPECT_NE(m.find("but its result was not recorded; pass idempotent=true"), std::string::npos) << m;
  EXPECT_NE(m.find("image store"), std::string::npos) << m;
  EXPECT_EQ(RunCount(id2), 0) << "an in-doubt call ran without being marked idempotent";

  auto verify = client_->LogVerify();
  ASSERT_TRUE(verify.ok());
  ASSERT_EQ(verify->in_doubt.size(), 1u);
  EXPECT_EQ(verify->in_doubt[0].key, "ep-d:4:0");

  auto rerun = client_->Exec(id2, Counted(), Key("ep-d", 4, 0, /*idempotent=*/true));
  ASSERT_TRUE(rerun.ok()) << rerun.status().ToString();
  EXPECT_FALSE(rerun->replayed);
  EXPECT_EQ(RunCount(id2), 1);
  auto replayed = client_->Exec(id2, Counted(), Key("ep-d", 4, 0));
  ASSERT_TRUE(replayed.ok()) << replayed.status().ToString();
  EXPECT_TRUE(replayed->replayed);
  EXPECT_EQ(RunCount(id2), 1);
}

TEST_F(ReplayExecTest, DaemonRefusesToStartWithoutItsLog) {
  fs::create_directories(state_);
  std::ofstream(dir_ + "/not-a-dir") << "x";
  RunResult r = testing::RunProgram({testing::BuiltBinary("paddockd"), "--state-dir", state_, "--socket",
                                     socket_, "--log-dir", dir_ + "/not-a-dir/log"});
  EXPECT_EQ(r.code, 1);
  std::ofstream(daemon_log_, std::ios::app) << r.out << r.err;
  EXPECT_NE(Slurp(daemon_log_).find("cannot open the trajectory log at " + dir_ + "/not-a-dir/log"),
            std::string::npos)
      << Slurp(daemon_log_);
}

TEST_F(ReplayExecTest, Cli_KeyJsonReplayed_LogLsShowVerify_RestoreRefused) {
  StartDaemon();
  RunResult r = Paddock({"--json", "sandbox", "create", "--substrate", "container", "--image", image_,
                         "--episode", "cli-ep"});
  ASSERT_EQ(r.code, 0) << r.err;
  json created = json::parse(r.out);
  std::string id = created["id"];
  EXPECT_EQ(created["reused"], false);
  EXPECT_EQ(created["rebuilt"], false);
  r = Paddock({"--json", "sandbox", "create", "--substrate", "container", "--image", image_,
               "--episode", "cli-ep"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["id"], id);
  EXPECT_EQ(json::parse(r.out)["reused"], true);

  std::vector<std::string> cmd = {"--json", "sandbox", "exec", id, "--key", "cli-ep:0:0", "--",
                                  "sh", "-c", "echo x >> /work/count; wc -l < /work/count; exit 3"};
  r = Paddock(cmd);
  EXPECT_EQ(r.code, 3) << r.err;
  json j = json::parse(r.out);
  EXPECT_EQ(j["replayed"], false);
  EXPECT_EQ(j["stdout"], "1\n");
  r = Paddock(cmd);
  EXPECT_EQ(r.code, 3) << "a replay exits with the logged status: " << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j["replayed"], true);
  EXPECT_EQ(j["stdout"], "1\n");
  r = Paddock({"--json", "sandbox", "exec", id, "--", "true"});
  EXPECT_EQ(json::parse(r.out)["replayed"], false);
  r = Paddock({"sandbox", "exec", id, "--key", "cli-ep:0:0", "--", "echo", "other"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("paddock: idempotency key cli-ep:0:0 was already used"), std::string::npos) << r.err;
  r = Paddock({"sandbox", "exec", id, "--key", "nonsense", "--", "true"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--key: key 'nonsense': expected EPISODE:STEP:CALL"), std::string::npos) << r.err;

  r = Paddock({"--json", "sandbox", "write", id, "/work/w", "--key", "cli-ep:1:0"}, "hello");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["replayed"], false);
  r = Paddock({"--json", "sandbox", "write", id, "/work/w", "--key", "cli-ep:1:0"}, "hello");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["replayed"], true);

  r = Paddock({"log", "ls"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("EPISODE"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cli-ep"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(id), std::string::npos) << r.out;
  r = Paddock({"--json", "log", "ls"});
  ASSERT_EQ(r.code, 0) << r.err;
  j = json::parse(r.out);
  ASSERT_EQ(j["episodes"].size(), 1u) << r.out;
  EXPECT_EQ(j["episodes"][0]["episode_id"], "cli-ep");
  EXPECT_EQ(j["episodes"][0]["sandbox_id"], id);

  r = Paddock({"log", "show", "cli-ep"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("episode:  cli-ep"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sandbox:  " + id), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("in doubt: 0"), std::string::npos) << r.out;
  r = Paddock({"--json", "log", "show", "cli-ep"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["episode"]["state"], "running");
  r = Paddock({"log", "show", "no-such-episode"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("episode 'no-such-episode' is not in the log"), std::string::npos) << r.err;

  r = Paddock({"log", "verify"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("log OK"), std::string::npos) << r.out;
  r = Paddock({"--json", "log", "verify"});
  ASSERT_EQ(r.code, 0) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["intents"], 2);
  EXPECT_EQ(j["results"], 2);

  r = Paddock({"log", "export", "cli-ep", "--format", "jsonl"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out.substr(0, r.out.find('\n')))["type"], "episode") << r.out;

  r = Paddock({"log", "backup", dir_ + "/backup"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("backup 1 in " + dir_ + "/backup"), std::string::npos) << r.out;
  r = Paddock({"log", "restore", dir_ + "/backup"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("paddockd --restore-log " + dir_ + "/backup"), std::string::npos) << r.err;
  r = Paddock({"log", "compact"});
  EXPECT_EQ(r.code, 0) << r.err;

  // Offline restore: the backup's state comes back, later calls are gone.
  ASSERT_TRUE(client_->Exec(id, Counted(), Key("cli-ep", 2, 0)).ok());
  ASSERT_EQ(StopDaemon(SIGTERM), 0);
  StartDaemon({"--restore-log", dir_ + "/backup"});
  r = Paddock({"--json", "log", "verify"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["intents"], 2) << r.out;
}

}  // namespace
}  // namespace paddock
