// The smaller user-facing commands: paddock-init, sandbox_bench and the
// scripts each answer --help, and behave when run as documented.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

struct Output {
  int code;
  std::string out;
};

Output Shell(const std::string& cmd) {
  Output r{-1, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string Repo() { return PADDOCK_SOURCE_DIR; }

TEST(Tools, PaddockInitHelpAndRefusalOutsideASandbox) {
  std::string init = paddock::testing::BuiltBinary("paddock-init");
  Output help = Shell(init + " --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("not meant to be run by hand"));
  // Without the daemon's channel on fd 3 it explains and exits 2.
  Output bare = Shell(init + " 3</dev/null");
  EXPECT_EQ(bare.code, 2);
  EXPECT_THAT(bare.out, HasSubstr("run by paddockd only"));
}

TEST(Tools, SandboxBenchHelpListsItsFlags) {
  Output help = Shell(paddock::testing::BuiltBinary("sandbox_bench") + " --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("--cycles"));
  EXPECT_THAT(help.out, HasSubstr("--scenarios"));
}

TEST(Tools, DemoScriptHelp) {
  Output help = Shell("bash " + Repo() + "/scripts/demo.sh --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("make demo"));
}

TEST(Tools, MakeBusyboxRootfsBuildsAnImage) {
  std::string script = "bash " + Repo() + "/scripts/make-busybox-rootfs.sh";
  Output help = Shell(script + " --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_EQ(Shell(script).code, 2);  // usage error
  std::string dir = "/tmp/paddock-tools-test-rootfs-" + std::to_string(getpid());
  Output made = Shell(script + " " + dir);
  ASSERT_EQ(made.code, 0) << made.out;
  EXPECT_TRUE(fs::exists(dir + "/bin/busybox"));
  EXPECT_TRUE(fs::is_symlink(dir + "/bin/sh"));
  EXPECT_TRUE(fs::is_directory(dir + "/proc"));
  EXPECT_EQ(Shell(dir + "/bin/sh -c 'echo ok'").out, "ok\n");
  fs::remove_all(dir);
}

}  // namespace
