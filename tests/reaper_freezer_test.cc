// Start-up reaping of cgroup v1 freezer cgroups (sandbox/container/freezer.h): a
// daemon SIGKILLed while a snapshot had its sandbox frozen leaves
// /sys/fs/cgroup/freezer/ROOT/ct-ID behind, FROZEN with the sandbox's processes in
// it, or empty. Timing a real crash inside a snapshot is not practical, so the
// cgroups are made by hand with the daemon's naming (real cgroups, a real frozen
// process), then reaped by ReapLeftovers and by a real paddockd starting up.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "sandbox/container/freezer.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/reaper.h"
#include "tests/support/daemon_process.h"

namespace fs = std::filesystem;

namespace paddock {
namespace {

const char* kFreezer = "/sys/fs/cgroup/freezer";

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void Put(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.flush();
  ASSERT_TRUE(out.good()) << "writing " << path;
}

class ReaperFreezerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DetectCgroupVersion() != CgroupVersion::kV1 || !fs::exists(kFreezer))
      GTEST_SKIP() << "no cgroup v1 freezer hierarchy here; the v2 freezer is the sandbox's own cgroup";
    dir_ = fmt::format("/var/tmp/reaper_freezer_test.{}", ::getpid());
    fs::create_directories(dir_ + "/state");
  }
  void TearDown() override {
    if (child_ > 0) {
      Put(cg_ + "/freezer.state", "THAWED");
      ::kill(child_, SIGKILL);
      ::waitpid(child_, nullptr, 0);
    }
    for (const auto& d : made_) ::rmdir(d.c_str());
    // The daemon-named root the cgroups were made under (a daemon's shutdown removes
    // it; reaping keeps it for the daemon that reaps): the test's state dir is unique,
    // so nothing else would ever remove it.
    if (!root_dir_.empty()) ::rmdir(root_dir_.c_str());
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // A freezer cgroup named as the daemon names a snapshot's, holding a sleeping
  // child frozen in it.
  void MakeFrozenCgroup(const std::string& root) {
    root_dir_ = fmt::format("{}/{}", kFreezer, root);
    cg_ = root_dir_ + "/ct-crashed";
    ASSERT_TRUE(fs::create_directories(cg_));
    made_ = {cg_};
    child_ = ::fork();
    ASSERT_GE(child_, 0);
    if (child_ == 0) {
      ::execl("/bin/sleep", "sleep", "600", nullptr);
      ::_exit(127);
    }
    Put(cg_ + "/cgroup.procs", std::to_string(child_));
    Put(cg_ + "/freezer.state", "FROZEN");
    for (int i = 0; i < 500 && Slurp(cg_ + "/freezer.state").rfind("FROZEN", 0) != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_EQ(Slurp(cg_ + "/freezer.state").substr(0, 6), "FROZEN");
    // And one an interrupted snapshot left empty.
    std::string empty = fmt::format("{}/{}/ct-empty", kFreezer, root);
    ASSERT_TRUE(fs::create_directories(empty));
    made_.push_back(empty);
  }

  // The child was killed (SIGKILL), not left frozen.
  void ExpectChildKilled() {
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 500 && (r = ::waitpid(child_, &status, WNOHANG)) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_EQ(r, child_) << "the frozen process is still there";
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    child_ = 0;
  }

  std::string dir_, cg_, root_dir_;
  std::vector<std::string> made_;
  pid_t child_ = 0;
};

TEST_F(ReaperFreezerTest, ReapLeftoversThawsKillsAndRemovesFreezerCgroups) {
  SubstrateEnv env;
  env.state_dir = dir_ + "/state";
  const std::string root = env.cgroup_root();
  MakeFrozenCgroup(root);
  ASSERT_EQ(FreezerCgroupsUnder(root).size(), 2u);

  ReapReport report = ReapLeftovers(env);
  EXPECT_TRUE(report.errors.empty()) << report.errors.front();
  EXPECT_GE(report.cgroups_removed, 2);
  EXPECT_TRUE(FreezerCgroupsUnder(root).empty());
  for (const auto& d : made_) EXPECT_FALSE(fs::exists(d)) << d;
  ExpectChildKilled();
  // Nothing of another daemon's (another state dir) is touched.
  SubstrateEnv other;
  other.state_dir = dir_ + "/other-state";
  EXPECT_NE(other.cgroup_root(), root);
}

TEST_F(ReaperFreezerTest, PaddockdRestartedAfterSigkillRemovesThem) {
  testing::DaemonOptions opts;
  opts.dir = dir_ + "/daemon";
  testing::DaemonProcess d(opts);
  ASSERT_EQ(d.Start(), "");
  ASSERT_EQ(d.Stop(SIGKILL), 128 + SIGKILL);
  SubstrateEnv env;
  env.state_dir = d.state_dir();
  const std::string root = env.cgroup_root();
  MakeFrozenCgroup(root);

  ASSERT_EQ(d.Start(), "");
  EXPECT_TRUE(FreezerCgroupsUnder(root).empty()) << d.LogTail();
  for (const auto& dir : made_) EXPECT_FALSE(fs::exists(dir)) << dir;
  ExpectChildKilled();
  EXPECT_NE(d.LogTail().find("reaped"), std::string::npos) << d.LogTail();
  d.Stop();
}

}  // namespace
}  // namespace paddock
