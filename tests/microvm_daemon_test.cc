// The microvm substrate through a real paddockd and the paddock CLI: the
// daemon's flags, a create with --substrate microvm, an exec, a destroy.
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/microvm/microvm_substrate.h"
#include "tests/support/daemon_process.h"
#include "tests/support/microvm_accel.h"
#include "tests/support/test_rootfs.h"

using ::testing::HasSubstr;

namespace paddock {
namespace {

TEST(MicrovmDaemon, HelpListsTheMicrovmFlags) {
  auto r = testing::RunProgram({testing::BuiltBinary("paddockd"), "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("--microvm-warm-pool"));
  EXPECT_THAT(r.out, HasSubstr("--microvm-accel"));
  auto bad = testing::RunProgram({testing::BuiltBinary("paddockd"), "--microvm-accel", "xen"});
  EXPECT_NE(bad.code, 0);
}

TEST(MicrovmDaemon, CliCreatesExecsAndDestroysAMicrovmSandbox) {
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{
      .args = {"--microvm-accel", o.accel, "--microvm-warm-pool", "0"}});
  ASSERT_EQ(d.Start(), "");
  const std::string cli = testing::BuiltBinary("paddock");
  auto created = testing::RunProgram(
      {cli, "--socket", d.socket_path(), "sandbox", "create", "--substrate", "microvm", "--image", rootfs});
  ASSERT_EQ(created.code, 0) << created.err;
  std::string id = created.out.substr(0, created.out.find('\n'));
  ASSERT_FALSE(id.empty());
  auto ran = testing::RunProgram({cli, "--socket", d.socket_path(), "sandbox", "exec", id, "--", "sh",
                                  "-c", "uname -r; cat /etc/image-marker; exit 3"});
  EXPECT_EQ(ran.code, 3) << ran.err;
  EXPECT_THAT(ran.out, HasSubstr("busybox test image"));
  EXPECT_FALSE(StrayQemuProcesses(d.state_dir()).empty());
  auto gone = testing::RunProgram({cli, "--socket", d.socket_path(), "sandbox", "destroy", id});
  EXPECT_EQ(gone.code, 0) << gone.err;
  EXPECT_TRUE(StrayQemuProcesses(d.state_dir()).empty());
}

}  // namespace
}  // namespace paddock
