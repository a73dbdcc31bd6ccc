// The microvm substrate's own cases: the boot assets (kernel ELF, module
// closure, initramfs), the layer disks, and every bad input of issue 6 (KVM
// missing, QEMU missing, a kernel without the needed drivers, a guest that
// misses its boot deadline, a guest that panics, a starved guest), each a
// clear error with no QEMU process left. Boots use real QEMU and the real
// Debian kernel; PADDOCK_MICROVM_ACCEL=tcg runs them where KVM cannot.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/linux/cgroup.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/boot_assets.h"
#include "sandbox/microvm/layer_disks.h"
#include "sandbox/microvm/microvm_substrate.h"
#include "sandbox/reaper.h"
#include "tests/support/microvm_accel.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace paddock {
namespace {

std::string KernelVersion() {
  std::string best;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/boot", ec)) {
    std::string n = e.path().filename();
    if (n.rfind("vmlinuz-", 0) == 0 && n > best) best = n;
  }
  return best.empty() ? "" : best.substr(8);
}

class MicrovmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::UseEmulationWhereKvmCannotRunGuests();
    rootfs_ = testing::EnsureBusyboxRootfs();
    state_ = fmt::format("/tmp/paddock-microvm-{}", getpid());
    fs::create_directories(state_);
    env_.state_dir = state_;
    env_.init_path = testing::BuiltBinary("paddock-init");
    env_.warm_pool_size = 0;
  }
  void TearDown() override {
    EXPECT_TRUE(StrayQemuProcesses(state_).empty()) << "a QEMU process was left behind";
    FlushCgroupRemovals();
    if (!std::getenv("PADDOCK_TEST_KEEP_STATE")) fs::remove_all(state_);
  }
  // Creates through the substrate; the QEMU processes of this state dir are
  // checked by TearDown.
  Result<std::unique_ptr<Sandbox>> Create(MicrovmOptions opts, SandboxSpec spec = {}) {
    auto sub = MakeMicrovmSubstrate(env_, std::move(opts));
    if (spec.image.empty()) spec.image = rootfs_;
    auto r = sub->Create("t" + std::to_string(counter_++), spec);
    sub->Shutdown();
    return r;
  }
  std::string rootfs_, state_;
  SubstrateEnv env_;
  int counter_ = 0;
};

TEST_F(MicrovmTest, BootModulesOfTheDebianKernelAreResolvedDependenciesFirst) {
  std::string ver = KernelVersion();
  ASSERT_FALSE(ver.empty()) << "no /boot/vmlinuz-*: run scripts/install-deps.sh";
  std::vector<std::string> files;
  auto mods = microvm::ResolveBootModules("/lib/modules/" + ver, "erofs", &files);
  ASSERT_TRUE(mods.ok()) << mods.status().ToString();
  auto pos = [&](const std::string& m) {
    return std::find(mods->begin(), mods->end(), m) - mods->begin();
  };
  // Whatever is built into this kernel is left out; what is a module comes
  // after its dependencies.
  for (const char* m : {"virtio_mmio", "virtio_blk", "virtio_console", "erofs", "overlay"}) {
    if (pos(m) == static_cast<long>(mods->size())) continue;
    if (std::string(m).rfind("virtio_", 0) == 0 && pos("virtio") != static_cast<long>(mods->size()))
      EXPECT_LT(pos("virtio"), pos(m)) << m;
  }
  if (pos("erofs") != static_cast<long>(mods->size()) && pos("libcrc32c") != static_cast<long>(mods->size())) {
    EXPECT_LT(pos("libcrc32c"), pos("erofs"));
    EXPECT_LT(pos("crc32c_generic"), pos("libcrc32c"));  // asked for by name at load time
  }
  EXPECT_EQ(files.size(), mods->size());
}

TEST_F(MicrovmTest, KernelWithoutTheNeededDriversIsAClearError) {
  // A modules tree whose kernel has no virtio-serial driver at all.
  std::string dir = state_ + "/modules";
  fs::create_directories(dir);
  std::ofstream(dir + "/modules.dep") << "kernel/drivers/virtio/virtio_mmio.ko:\n"
                                         "kernel/drivers/block/virtio_blk.ko:\n"
                                         "kernel/fs/erofs/erofs.ko:\nkernel/fs/overlayfs/overlay.ko:\n";
  std::ofstream(dir + "/modules.builtin") << "";
  std::vector<std::string> files;
  auto mods = microvm::ResolveBootModules(dir, "erofs", &files);
  EXPECT_EQ(mods.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(mods.status().message(), HasSubstr("virtio-serial channel (CONFIG_VIRTIO_CONSOLE)"));
  // Through the substrate: the same error, before any QEMU starts.
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.accel = "tcg";  // the driver check comes before the accelerator matters
  o.boot.modules_dir = dir;
  auto r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("lacks virtio-serial channel"));
}

TEST_F(MicrovmTest, KernelIsUnpackedToAnElfWithAPvhEntryAndCached) {
  std::vector<std::string> files;
  auto a = microvm::PrepareBootAssets({}, testing::BuiltBinary("paddock-init"), state_ + "/boot");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  std::ifstream k(a->kernel, std::ios::binary);
  char magic[4];
  k.read(magic, 4);
  EXPECT_EQ(std::string(magic, 4), "\x7f" "ELF");
  struct stat before;
  ASSERT_EQ(stat(a->initramfs.c_str(), &before), 0);
  // The initramfs starts with a newc header and holds paddock-init and the modules.
  std::ifstream in(a->initramfs, std::ios::binary);
  std::string cpio((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(cpio.substr(0, 6), "070701");
  EXPECT_NE(cpio.find("paddock-init"), std::string::npos);
  for (const auto& m : a->modules) EXPECT_NE(cpio.find("modules/" + m + ".ko"), std::string::npos) << m;
  EXPECT_NE(cpio.find("TRAILER!!!"), std::string::npos);
  // A second preparation reuses both files.
  auto again = microvm::PrepareBootAssets({}, testing::BuiltBinary("paddock-init"), state_ + "/boot");
  ASSERT_TRUE(again.ok());
  struct stat after;
  ASSERT_EQ(stat(again->initramfs.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(a->kernel, again->kernel);
}

TEST_F(MicrovmTest, LayerDiskIsBuiltOnceForConcurrentFirstUses) {
  microvm::LayerDisks disks(state_ + "/layers", "erofs");
  std::vector<std::thread> threads;
  std::vector<std::string> got(4);
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      auto r = disks.Get(rootfs_);
      got[i] = r.ok() ? r.value() : r.status().ToString();
    });
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, got[0]);
  ASSERT_TRUE(fs::exists(got[0])) << got[0];
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(state_ + "/layers"))
    ++files;
  EXPECT_EQ(files, 2u);  // the image and its lock file, nothing half-built
  auto missing = disks.Get("/no/such/layer");
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
}

TEST_F(MicrovmTest, MissingKvmIsAClearError) {
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.accel = "kvm";
  o.kvm_device = "/nonexistent/kvm";
  auto r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("KVM is not available: /nonexistent/kvm does not exist"));
  o.kvm_device = "/dev/null";  // there, but not KVM
  r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("not a KVM device"));
}

TEST_F(MicrovmTest, MissingQemuIsAClearError) {
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.qemu = "/nonexistent/qemu-system-x86_64";
  auto r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("QEMU is not installed"));
}

// Skips where KVM was asked for and cannot run guests, else fails with the reason.
#define EXPECT_ACCELERATOR_USABLE() PADDOCK_REQUIRE_MICROVM()

TEST_F(MicrovmTest, BootsExecsAndDestroyLeavesNothing) {
  EXPECT_ACCELERATOR_USABLE();
  auto sb = Create(MicrovmOptionsFromEnvironment());
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ExecRequest r;
  r.shell = "cat /etc/image-marker; uname -r; cat /proc/1/cmdline | tr '\\0' ' '";
  auto res = (*sb)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_THAT(res->stdout_data, HasSubstr("busybox test image\n"));
  EXPECT_THAT(res->stdout_data, HasSubstr(KernelVersion()));  // the guest's own kernel
  EXPECT_THAT(res->stdout_data, HasSubstr("paddock-init"));
  auto usage = (*sb)->GetUsage();
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  EXPECT_GT(usage->memory_bytes, 0u);
  EXPECT_GE(usage->pids, 1u);
  EXPECT_FALSE(StrayQemuProcesses(state_).empty());
  ASSERT_TRUE((*sb)->Destroy().ok());
  EXPECT_TRUE(StrayQemuProcesses(state_).empty());
  EXPECT_FALSE((*sb)->Alive());
  EXPECT_TRUE(fs::is_empty(state_ + "/vms"));
}

TEST_F(MicrovmTest, GuestMissingItsBootDeadlineIsKilled) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.boot_timeout_ms = 300;
  auto r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("did not answer within its boot deadline of 300 ms"));
}

TEST_F(MicrovmTest, GuestPanicIsReportedWithTheKernelsReason) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.extra_cmdline = "paddock.layers=0";  // the guest's init gives up; PID 1 exiting panics
  auto r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kInternal) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("the guest kernel panicked: "));
  EXPECT_THAT(r.status().message(), HasSubstr("Attempted to kill init"));
  EXPECT_THAT(r.status().message(), HasSubstr("paddock.layers missing"));
}

TEST_F(MicrovmTest, GuestOutOfMemoryIsReportedAndTheVmIsGone) {
  EXPECT_ACCELERATOR_USABLE();
  // The sandbox may use more than the guest has: the guest as a whole runs
  // out of memory, its kernel panics and QEMU exits.
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.guest_memory_override = 160ull << 20;
  SandboxSpec spec;
  spec.limits.memory_bytes = 1ull << 30;
  auto sb = Create(o, spec);
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ExecRequest r;
  r.shell = "tail /dev/zero";
  auto res = (*sb)->Exec(r, nullptr);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kResourceExhausted) << res.status().ToString();
  EXPECT_THAT(res.status().message(), HasSubstr("the guest ran out of memory"));
  EXPECT_TRUE(StrayQemuProcesses(state_).empty());
  EXPECT_FALSE((*sb)->Alive());
  EXPECT_TRUE((*sb)->Destroy().ok());
}

TEST_F(MicrovmTest, ReaperKillsStrayQemuOfThisStateDir) {
  EXPECT_ACCELERATOR_USABLE();
  env_.warm_pool_size = 0;
  auto sub = MakeMicrovmSubstrate(env_);
  auto sb = sub->Create("stray", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  auto pids = StrayQemuProcesses(state_);
  ASSERT_EQ(pids.size(), 1u);
  // As if the daemon died: the sandbox object is leaked, QEMU keeps running.
  (void)sb->release();
  ReapReport report = ReapLeftovers(env_);
  EXPECT_TRUE(report.errors.empty()) << report.errors.front();
  EXPECT_GE(report.processes_killed, 1);
  for (int i = 0; i < 100 && !StrayQemuProcesses(state_).empty(); ++i) usleep(20000);
  EXPECT_TRUE(StrayQemuProcesses(state_).empty());
  EXPECT_FALSE(fs::exists(state_ + "/vms/stray"));
}

}  // namespace
}  // namespace paddock
