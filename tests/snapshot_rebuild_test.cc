// Issue 4 part 4 against a real paddockd killed with SIGKILL: an episode's
// sandbox is rebuilt from the episode's latest snapshot plus the idempotent
// calls logged after it; a call after the snapshot that is not marked
// idempotent (completed, or in doubt because the daemon died while it ran)
// makes the rebuild fail with a reason that says so, recorded in the episode.
#include <sys/stat.h>

#include <chrono>
#include <optional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "paddock/client.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

using ::testing::HasSubstr;

namespace paddock {
namespace {

class SnapshotRebuildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    daemon_.emplace();
    ASSERT_EQ(daemon_->Start(), "");
    chmod(daemon_->dir().c_str(), 0755);
  }
  void TearDown() override { daemon_.reset(); }

  client::Client Connect() {
    client::ClientOptions o;
    o.socket_path = daemon_->socket_path();
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(c).value();
  }

  static ExecRequest Shell(const std::string& s) {
    ExecRequest r;
    r.shell = s;
    return r;
  }

  std::string rootfs_;
  std::optional<testing::DaemonProcess> daemon_;
};

TEST_F(SnapshotRebuildTest, RebuildStartsFromSnapshotAndRerunsOnlyIdempotentCalls) {
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = "base:1";
  std::string a_id;
  {
    client::Client c = Connect();
    ASSERT_TRUE(c.ImageImportDir(rootfs_, "base:1").ok());

    // ep-a: a non-idempotent call, the snapshot, then idempotent calls and an
    // unlogged one.
    auto a = c.CreateForEpisode(spec, "ep-a");
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    a_id = a->sandbox.id;
    ASSERT_TRUE(c.Exec(a_id, Shell("echo one > /work/f"), client::CallKey{"ep-a", 1, 0, false}).ok());
    auto snap = c.SnapshotImage(a_id, "");
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    auto two = c.Exec(a_id, Shell("echo two >> /work/g"), client::CallKey{"ep-a", 2, 0, true});
    ASSERT_TRUE(two.ok()) << two.status().ToString();
    auto three = c.WriteFile(a_id, "/work/h", "three\n", 0, true, client::CallKey{"ep-a", 2, 1, true});
    ASSERT_TRUE(three.ok()) << three.status().ToString();
    ASSERT_TRUE(c.Exec(a_id, Shell("echo unlogged > /work/u")).ok());

    // ep-b: a completed non-idempotent call after its snapshot.
    auto b = c.CreateForEpisode(spec, "ep-b");
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    ASSERT_TRUE(c.SnapshotImage(b->sandbox.id, "").ok());
    ASSERT_TRUE(c.Exec(b->sandbox.id, Shell("echo x > /work/x"), client::CallKey{"ep-b", 3, 0, false}).ok());

    // ep-c: a non-idempotent call after its snapshot, in flight when the
    // daemon dies (its intent is logged, its result never is).
    auto cc = c.CreateForEpisode(spec, "ep-c");
    ASSERT_TRUE(cc.ok()) << cc.status().ToString();
    ASSERT_TRUE(c.SnapshotImage(cc->sandbox.id, "").ok());
    std::string c_id = cc->sandbox.id;
    std::thread in_flight([this, c_id] {
      client::Client c2 = Connect();
      auto r = c2.Exec(c_id, Shell("sleep 30"), client::CallKey{"ep-c", 4, 0, false});
      EXPECT_FALSE(r.ok());  // the daemon is killed under it
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    ASSERT_EQ(daemon_->Restart(), "");
    in_flight.join();
  }

  client::Client c = Connect();
  auto a = c.CreateForEpisode(spec, "ep-a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE(a->rebuilt);
  EXPECT_EQ(a->previous_sandbox_id, a_id);
  // f comes from the snapshot, g and h from the idempotent calls run once
  // more on it; the unlogged write is gone.
  auto state = c.Exec(a->sandbox.id, Shell("cat /work/f /work/g /work/h; test -e /work/u || echo no-u"));
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_EQ(state->stdout_data, "one\ntwo\nthree\nno-u\n");
  // The logged calls are still answered from the log.
  auto again = c.Exec(a->sandbox.id, Shell("echo two >> /work/g"), client::CallKey{"ep-a", 2, 0, true});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->replayed);
  auto rec = c.LogShowEpisode("ep-a");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_THAT(rec->episode.rebuild_note, HasSubstr("from snapshot sha256:"));
  EXPECT_THAT(rec->episode.rebuild_note, HasSubstr("ep-a:2:0"));
  EXPECT_THAT(rec->episode.rebuild_note, HasSubstr("ep-a:2:1"));

  auto b = c.CreateForEpisode(spec, "ep-b");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr("ep-b:3:0"));
  EXPECT_THAT(b.status().message(), HasSubstr("not marked idempotent"));
  auto brec = c.LogShowEpisode("ep-b");
  ASSERT_TRUE(brec.ok());
  EXPECT_EQ(brec->episode.state, "failed");
  EXPECT_THAT(brec->episode.failure_reason, HasSubstr("ep-b:3:0"));

  auto cc = c.CreateForEpisode(spec, "ep-c");
  ASSERT_FALSE(cc.ok());
  EXPECT_EQ(cc.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(cc.status().message(), HasSubstr("ep-c:4:0"));
  EXPECT_THAT(cc.status().message(), HasSubstr("in doubt"));
}

}  // namespace
}  // namespace paddock
