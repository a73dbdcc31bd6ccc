// The microvm substrate's own cases: the boot assets (kernel ELF, module
// closure, initramfs), the layer disks, and every bad input of issue 6 (KVM
// missing, QEMU missing, a kernel without the needed drivers, a guest that
// misses its boot deadline, a guest that panics, a starved guest), each a
// clear error with no QEMU process left. Boots use real QEMU and the real
// Debian kernel; PADDOCK_MICROVM_ACCEL=tcg runs them where KVM cannot.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <atomic>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/base/unique_fd.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/boot_assets.h"
#include "sandbox/microvm/console_log.h"
#include "sandbox/microvm/guest_control.h"
#include "sandbox/init/protocol.h"
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

// The one case that boots cold on purpose (templates off); every other
// create in these suites is a template clone.
TEST_F(MicrovmTest, BootsExecsAndDestroyLeavesNothing) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.templates = false;
  auto sb = Create(o);
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


// Issue 17, part 4: the hardened guest and jail.

TEST_F(MicrovmTest, TcgIsRefusedWithoutItsExplicitFlag) {
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.accel = "tcg";
  o.allow_tcg = false;
  Status st = CheckAccelerator(o);
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("not a security boundary"));
  EXPECT_THAT(st.message(), HasSubstr("--allow-tcg-microvms"));
  auto r = Create(o);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("--allow-tcg-microvms"));
  o.allow_tcg = true;
  EXPECT_TRUE(CheckAccelerator(o).ok()) << CheckAccelerator(o).ToString();
}

TEST_F(MicrovmTest, ProcSysAndTheKernelsKnobsAreReadOnlyInTheGuestSandbox) {
  EXPECT_ACCELERATOR_USABLE();
  auto sb = Create(MicrovmOptionsFromEnvironment());
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ExecRequest r;
  r.shell =
      "echo '|/tmp/pwn %p' > /proc/sys/kernel/core_pattern; echo core=$?; cat /proc/sys/kernel/core_pattern; "
      "echo /tmp/pwn > /proc/sys/kernel/modprobe; echo modprobe=$?; cat /proc/sys/kernel/modprobe; "
      "echo 1 > /proc/sys/vm/drop_caches; echo drop=$?; "
      "echo h > /proc/sysrq-trigger; echo sysrq=$?; "
      "echo kcore=$(wc -c < /proc/kcore); echo keys=$(wc -c < /proc/keys); "
      "echo hostname=$(cat /proc/sys/kernel/hostname)";
  auto res = (*sb)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  const std::string& out = res->stdout_data;
  EXPECT_THAT(out, HasSubstr("core=1")) << out << res->stderr_data;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("|/tmp/pwn"))) << out;
  EXPECT_THAT(out, HasSubstr("modprobe=1")) << out;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("\n/tmp/pwn"))) << out;
  EXPECT_THAT(out, HasSubstr("drop=1")) << out;
  EXPECT_THAT(out, HasSubstr("sysrq=1")) << out;
  EXPECT_THAT(out, HasSubstr("kcore=0")) << out;
  EXPECT_THAT(out, HasSubstr("keys=0")) << out;
  EXPECT_THAT(out, HasSubstr("hostname=sandbox-")) << out;  // still readable
  EXPECT_THAT(res->stderr_data, HasSubstr("Read-only file system")) << res->stderr_data;
  ASSERT_TRUE((*sb)->Destroy().ok());
}

TEST_F(MicrovmTest, ConsoleLogKeepsItsNewestPartWithinItsCapUnderAFlood) {
  // The host side alone, fed through a real pipe as QEMU's stdout would be:
  // 200 MiB of numbered lines against a 1 MiB cap.
  const std::string path = state_ + "/console.log";
  UniqueFd writer;
  const uint64_t cap = 1ull << 20;
  auto rss = [] {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
      if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) << 10;
    return 0ull;
  };
  auto log = microvm::ConsoleLog::Start(path, cap, &writer);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  const uint64_t rss_before = rss();
  std::atomic<bool> done{false};
  uint64_t biggest = 0;
  std::thread sampler([&] {
    while (!done) {
      std::error_code ec;
      biggest = std::max<uint64_t>(biggest, fs::file_size(path, ec));
      usleep(2000);
    }
  });
  const uint64_t total = 200ull << 20;
  uint64_t written = 0, line_no = 0;
  std::string chunk;
  while (written < total) {
    chunk.clear();
    while (chunk.size() < (256u << 10)) chunk += fmt::format("line {:010}\n", line_no++);
    ASSERT_EQ(write(writer.get(), chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
    written += chunk.size();
  }
  writer.reset();  // QEMU exits: EOF
  (*log)->Stop();
  done = true;
  sampler.join();
  std::string text = (*log)->Text();
  EXPECT_LE(text.size(), cap);
  EXPECT_LE(biggest, cap);
  EXPECT_LE(fs::file_size(path), cap);
  EXPECT_LT(rss(), rss_before + (16ull << 20)) << "the drain held the flood in memory";
  EXPECT_GE((*log)->dropped(), total - cap);
  EXPECT_THAT(text, HasSubstr("bytes of earlier console output dropped"));
  // The newest output is what is kept, whole to its last line.
  EXPECT_THAT(text, HasSubstr(fmt::format("line {:010}\n", line_no - 1)));
  EXPECT_EQ(text.back(), '\n');
}

TEST_F(MicrovmTest, AGuestFloodingItsConsoleReachesNeitherTheConsoleNorTheChannel) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.console_log_cap = 64 << 10;
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto a = sub->Create("flood", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = sub->Create("bystander", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  const std::string log = state_ + "/vms/flood/console.log";
  ExecRequest r;
  // Every way to the guest's console or channel the sandbox might have: its
  // init's stdio and channel fds, and the console device nodes.
  r.shell =
      "for f in /proc/1/fd/0 /proc/1/fd/1 /proc/1/fd/2 /dev/console /dev/ttyS0 /dev/kmsg /dev/tty; do "
      "  case $f in /dev/*) [ -c $f ] || continue;; esac; "  // a plain file made on the sandbox's /dev is no way out
      "  echo FLOODMARK > $f 2>/dev/null && echo reached $f; done; "
      "echo garbage > /proc/1/fd/3 2>/dev/null && echo reached channel; "
      "dd if=/proc/1/fd/3 bs=1 count=1 2>/dev/null && echo read channel; "
      "end=$(( $(date +%s) + 10 )); "
      "while [ $(date +%s) -lt $end ]; do "
      "  yes FLOODMARK-FLOODMARK-FLOODMARK | head -c 1048576 > /proc/1/fd/1 2>/dev/null || break; done; "
      "echo flooded";
  r.timeout_ms = 60'000;
  auto res = (*a)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_THAT(res->stdout_data, ::testing::Not(HasSubstr("reached"))) << res->stdout_data;
  EXPECT_THAT(res->stdout_data, ::testing::Not(HasSubstr("read channel"))) << res->stdout_data;
  EXPECT_THAT(res->stdout_data, HasSubstr("flooded"));
  std::error_code ec;
  EXPECT_LE(fs::file_size(log, ec), o.console_log_cap);
  auto text = ReadSmallFile(log);
  EXPECT_EQ((text.ok() ? text.value() : "").find("FLOODMARK"), std::string::npos)
      << "the flood reached the console log (" << (text.ok() ? text->size() : 0) << " bytes)";
  // Both VMs still work.
  for (auto* sb : {&*a, &*b}) {
    ExecRequest e;
    e.shell = "echo alive";
    auto ok = (*sb)->Exec(e, nullptr);
    ASSERT_TRUE(ok.ok()) << ok.status().ToString();
    EXPECT_EQ(ok->stdout_data, "alive\n");
  }
  EXPECT_TRUE((*a)->Destroy().ok());
  EXPECT_TRUE((*b)->Destroy().ok());
  sub->Shutdown();
}


namespace {
std::string StatusField(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ":", 0) == 0) return line.substr(key.size() + 1);
  return "";
}
}  // namespace

TEST_F(MicrovmTest, EachVmsQemuRunsAsItsOwnUidInARootOfOnlyWhatItNeeds) {
  EXPECT_ACCELERATOR_USABLE();
  auto sub = MakeMicrovmSubstrate(env_, MicrovmOptionsFromEnvironment());
  auto a = sub->Create("ja", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = sub->Create("jb", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  auto pids = StrayQemuProcesses(state_);
  ASSERT_EQ(pids.size(), 2u);
  std::set<std::string> uids;
  for (pid_t pid : pids) {
    std::string uid = StatusField(pid, "Uid");
    std::istringstream in(uid);
    uint32_t real = 0, eff = 0, saved = 0, fsuid = 0;
    in >> real >> eff >> saved >> fsuid;
    EXPECT_GE(real, 400000u) << uid;
    EXPECT_LT(real, 400000u + 65536u) << uid;
    EXPECT_TRUE(real == eff && eff == saved && saved == fsuid) << uid;
    uids.insert(std::to_string(real));
    EXPECT_THAT(StatusField(pid, "NoNewPrivs"), HasSubstr("1"));
    // Its root: /usr and the VM's own files, nothing else of the host's.
    const std::string root = "/proc/" + std::to_string(pid) + "/root";
    std::error_code ec;
    EXPECT_TRUE(fs::exists(root + "/usr/bin/qemu-system-x86_64", ec));
    for (const char* absent : {"/etc/shadow", "/etc/passwd", "/proc/sys", "/proc/kcore", "/proc/meminfo",
                               "/sys/kernel", "/home", "/root", "/var", "/dev/sda", "/dev/mem"})
      EXPECT_FALSE(fs::exists(root + absent, ec)) << pid << " sees " << absent;
    // A clone's /proc (its RAM is reached as /proc/self/fd/4) shows its own
    // process only: QEMU is pid 1 of its namespace, nothing kernel-wide.
    for (const auto& e : fs::directory_iterator(root + "/proc", ec)) {
      std::string n = e.path().filename();
      EXPECT_TRUE(n == "1" || n == "self" || n == "thread-self") << pid << " has /proc/" << n;
    }
    // The template's RAM is its memfd (sealed: no write reaches it), its
    // device state an fd: no template file is in the jail.
    EXPECT_FALSE(fs::exists(root + state_ + "/microvm/templates", ec)) << pid << " sees the templates";
    EXPECT_TRUE(fs::exists(root + "/dev/null", ec));
    // No other VM's directory, no state dir besides its own boot files and disks.
    EXPECT_FALSE(fs::exists(root + state_ + "/vms", ec)) << pid << " sees the VM directories";
    for (const auto& e : fs::directory_iterator(root + "/", ec)) {
      std::string n = e.path().filename();
      EXPECT_TRUE(n == "usr" || n == "lib" || n == "lib64" || n == "lib32" || n == "bin" || n == "sbin" ||
                  n == "dev" || n == "etc" || n == "tmp" || n == "proc")
          << pid << " has /" << n;
    }
    for (const auto& e : fs::directory_iterator(root + "/etc", ec))
      EXPECT_EQ(e.path().filename(), "ld.so.cache") << pid;
  }
  EXPECT_EQ(uids.size(), 2u) << "two VMs' QEMUs share a uid";
  for (auto* sb : {&*a, &*b}) {
    ExecRequest e;
    e.shell = "echo alive";
    auto ok = (*sb)->Exec(e, nullptr);
    ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  }
  EXPECT_TRUE((*a)->Destroy().ok());
  EXPECT_TRUE((*b)->Destroy().ok());
  sub->Shutdown();
}

// Issue 17, part 1: template clones with fresh identity.

namespace {
struct Identity {
  std::string random, hostname, machine_id;
  long long clock = 0;
};
Identity IdentityOf(Sandbox& sb) {
  ExecRequest r;
  r.shell = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; cat /etc/machine-id; date +%s";
  auto res = sb.Exec(r, nullptr);
  EXPECT_TRUE(res.ok()) << res.status().ToString();
  Identity id;
  if (!res.ok()) return id;
  EXPECT_EQ(res->exit_code, 0) << res->stderr_data;
  std::istringstream in(res->stdout_data);
  std::string clock;
  std::getline(in, id.random);
  std::getline(in, id.hostname);
  std::getline(in, id.machine_id);
  std::getline(in, clock);
  id.clock = std::atoll(clock.c_str());
  return id;
}
}  // namespace

TEST_F(MicrovmTest, ATemplateIsSetUpPerWorkdirAndLimitsItsClonesTakeTheirs) {
  // A template is saved after its sandbox's setup: what the setup takes from
  // the spec (workdir, limits) is part of its key, so no clone runs with
  // another spec's.
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.templates = true;
  auto sub = MakeMicrovmSubstrate(env_, o);
  struct Case {
    std::string id, workdir;
    uint32_t pids;
  };
  std::vector<Case> cases = {{"wa", "/wa", 0}, {"wb", "/wb", 0}, {"wc", "/wa", 50}, {"wd", "/wa", 0}};
  std::vector<std::unique_ptr<Sandbox>> made;
  for (const auto& c : cases) {
    SandboxSpec spec{.image = rootfs_};
    spec.workdir = c.workdir;
    spec.limits.pids = c.pids;
    auto sb = sub->Create(c.id, spec);
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    ExecRequest r;
    r.shell = "pwd; hostname";
    auto res = (*sb)->Exec(r, nullptr);
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->stdout_data, c.workdir + "\nsandbox-" + c.id + "\n");
    made.push_back(std::move(sb).value());
  }
  const MicrovmCounters* counters = MicrovmCountersOf(sub.get());
  EXPECT_EQ(counters->template_builds.load(), 3u) << "two specs that differ in workdir or limits shared a template";
  EXPECT_EQ(counters->clones.load(), 4u);
  for (auto& sb : made) EXPECT_TRUE(sb->Destroy().ok());
  sub->Shutdown();
}

TEST_F(MicrovmTest, TemplatesBeyondTheCapAreEvictedLeastRecentlyUsedFirst) {
  // Each template holds its guest's RAM: one more key than max_templates
  // evicts the one used longest ago; its clones run on, its state file goes.
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.templates = true;
  o.max_templates = 2;
  auto sub = MakeMicrovmSubstrate(env_, o);
  const MicrovmCounters* counters = MicrovmCountersOf(sub.get());
  auto make = [&](const std::string& id, const std::string& workdir) {
    SandboxSpec spec{.image = rootfs_};
    spec.workdir = workdir;
    auto sb = sub->Create(id, spec);
    EXPECT_TRUE(sb.ok()) << sb.status().ToString();
    return sb.ok() ? std::move(sb).value() : nullptr;
  };
  auto state_files = [&] {
    size_t n = 0;
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(state_ + "/microvm/templates", ec))
      if (e.path().filename() == "state") ++n;
    return n;
  };
  auto a = make("ea", "/a");
  auto b = make("eb", "/b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(state_files(), 2u);
  auto a2 = make("ea2", "/a");  // /a is now the most recently used
  auto c = make("ec", "/c");    // a third key: /b goes
  ASSERT_TRUE(a2 && c);
  EXPECT_EQ(counters->template_builds.load(), 3u);
  EXPECT_EQ(counters->template_evictions.load(), 1u);
  EXPECT_EQ(state_files(), 2u) << "an evicted template's state file was left behind";
  auto a3 = make("ea3", "/a");  // still held: no build
  ASSERT_TRUE(a3);
  EXPECT_EQ(counters->template_builds.load(), 3u) << "the most recently used template was evicted";
  auto b2 = make("eb2", "/b");  // evicted: built again
  ASSERT_TRUE(b2);
  EXPECT_EQ(counters->template_builds.load(), 4u);
  // The clone of the evicted template still runs.
  ExecRequest r;
  r.shell = "pwd";
  auto res = b->Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->stdout_data, "/b\n");
  for (auto* sb : {&a, &b, &a2, &c, &a3, &b2}) EXPECT_TRUE((*sb)->Destroy().ok());
  sub->Shutdown();
}

TEST_F(MicrovmTest, TwoClonesOfOneTemplateHaveFreshIdentity) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.templates = true;
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto a = sub->Create("ida", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = sub->Create("idb", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  const MicrovmCounters* c = MicrovmCountersOf(sub.get());
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->template_builds.load(), 1u);
  EXPECT_EQ(c->clones.load(), 2u) << "a create booted instead of cloning";
  EXPECT_EQ(c->cold_boots.load(), 0u);
  Identity ia = IdentityOf(**a), ib = IdentityOf(**b);
  for (const Identity* i : {&ia, &ib}) {
    EXPECT_EQ(i->random.size(), 64u) << i->random;
    EXPECT_EQ(i->machine_id.size(), 32u) << i->machine_id;
    EXPECT_EQ(i->machine_id.find_first_not_of("0123456789abcdef"), std::string::npos) << i->machine_id;
    // The template was saved seconds ago: a clone's clock is the host's.
    EXPECT_LE(std::llabs(i->clock - static_cast<long long>(time(nullptr))), 3) << "guest clock " << i->clock;
  }
  EXPECT_NE(ia.random, ib.random) << "two clones read the same random bytes";
  EXPECT_NE(ia.hostname, ib.hostname);
  EXPECT_NE(ia.machine_id, ib.machine_id);
  EXPECT_EQ(ia.hostname, "sandbox-ida");
  // A cold boot takes the same identity step.
  MicrovmOptions cold = o;
  cold.templates = false;
  auto sub_cold = MakeMicrovmSubstrate(env_, cold);
  auto d = sub_cold->Create("idc", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  Identity id = IdentityOf(**d);
  EXPECT_EQ(id.machine_id.size(), 32u) << id.machine_id;
  EXPECT_NE(id.machine_id, ia.machine_id);
  EXPECT_LE(std::llabs(id.clock - static_cast<long long>(time(nullptr))), 3);
  for (auto* sb : {&*a, &*b, &*d}) EXPECT_TRUE((*sb)->Destroy().ok());
  sub->Shutdown();
  sub_cold->Shutdown();
}

namespace {
std::string TemplateStateFile(const std::string& state) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state + "/microvm/templates", ec))
    if (fs::exists(e.path() / "state")) return (e.path() / "state").string();
  return "";
}
}  // namespace

TEST_F(MicrovmTest, ATemplateWithACorruptOrTruncatedStateFallsBackToAColdBoot) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  o.templates = true;
  auto sub = MakeMicrovmSubstrate(env_, o);
  std::vector<std::unique_ptr<Sandbox>> vms;
  auto create = [&](const std::string& id) {
    auto sb = sub->Create(id, SandboxSpec{.image = rootfs_});
    EXPECT_TRUE(sb.ok()) << sb.status().ToString();
    if (!sb.ok()) return;
    ExecRequest e;
    e.shell = "echo alive";
    auto r = (*sb)->Exec(e, nullptr);
    EXPECT_TRUE(r.ok() && r->stdout_data == "alive\n") << r.status().ToString();
    vms.push_back(std::move(sb).value());
  };
  const MicrovmCounters* c = MicrovmCountersOf(sub.get());
  create("ca");
  EXPECT_EQ(c->clones.load(), 1u);
  std::string state = TemplateStateFile(state_);
  ASSERT_FALSE(state.empty());
  struct stat st {};
  ASSERT_EQ(stat(state.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Truncated: QEMU reads half a stream and exits; the create boots cold.
  fs::resize_file(state, fs::file_size(state) / 2);
  create("cb");
  EXPECT_EQ(c->clone_failures.load(), 1u);
  EXPECT_EQ(c->cold_boots.load(), 1u);
  EXPECT_EQ(StrayQemuProcesses(state_).size(), vms.size()) << "the failed clone's QEMU is left";
  // The template was dropped: the next create makes a new one and clones it.
  create("cc");
  EXPECT_EQ(c->template_builds.load(), 2u);
  EXPECT_EQ(c->clones.load(), 2u);
  // Corrupt: the stream's header overwritten.
  state = TemplateStateFile(state_);
  ASSERT_FALSE(state.empty());
  {
    std::fstream f(state, std::ios::in | std::ios::out | std::ios::binary);
    f.write("garbage!", 8);
  }
  create("cd");
  EXPECT_EQ(c->clone_failures.load(), 2u);
  EXPECT_EQ(c->cold_boots.load(), 2u);
  EXPECT_EQ(StrayQemuProcesses(state_).size(), vms.size());
  EXPECT_EQ(vms.size(), 4u);
  for (auto& sb : vms) EXPECT_TRUE(sb->Destroy().ok());
  sub->Shutdown();
}

namespace {
// A process in the guest that writes an ever-growing count to /tmp/count
// (the tmpfs upper: guest memory) ten times a second.
void StartCounter(Sandbox& sb) {
  ExecRequest r;
  r.shell = "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) >/dev/null 2>&1 &";
  auto res = sb.Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  ASSERT_EQ(res->exit_code, 0) << res->stderr_data;
}
long Count(Sandbox& sb) {
  ExecRequest r;
  r.shell = "cat /tmp/count";
  auto res = sb.Exec(r, nullptr);
  EXPECT_TRUE(res.ok()) << res.status().ToString();
  return res.ok() ? std::atol(res->stdout_data.c_str()) : -1;
}
std::string Cat(Sandbox& sb, const std::string& path) {
  auto r = sb.ReadFile(path, 1 << 20);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : "";
}
// Waits (up to 20 s, TCG) until the guest's counter passes `than`.
long CountAbove(Sandbox& sb, long than) {
  long c = -1;
  for (int i = 0; i < 100 && (c = Count(sb)) <= than; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  return c;
}
}  // namespace

TEST_F(MicrovmTest, APausedVmKeepsItsProcessesAndFilesReleasesItsQemuAndResumesWithTheHostsClock) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto sb = sub->Create("pz", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ASSERT_TRUE((*sb)->WriteFile("/work/notes", "written before the pause\n", 0644, true).ok());
  StartCounter(**sb);
  long before = CountAbove(**sb, 0);
  ASSERT_GT(before, 0);

  auto paused = (*sb)->Pause("the manager's record");
  ASSERT_TRUE(paused.ok()) << paused.status().ToString();
  EXPECT_GT(paused->state_bytes, 1u << 20);
  EXPECT_TRUE((*sb)->Paused());
  EXPECT_TRUE(StrayQemuProcesses(state_).empty()) << "a paused VM's QEMU runs on";
  EXPECT_TRUE(fs::exists(state_ + "/microvm/paused/pz/stream"));
  EXPECT_EQ((fs::status(state_ + "/microvm/paused").permissions() & fs::perms::others_all), fs::perms::none);
  ExecRequest r;
  r.shell = "true";
  auto refused = (*sb)->Exec(r, nullptr);
  EXPECT_EQ(refused.status().code(), Code::kFailedPrecondition) << refused.status().ToString();
  EXPECT_THAT(refused.status().message(), HasSubstr("paused"));
  EXPECT_EQ((*sb)->Pause("again").status().code(), Code::kFailedPrecondition);
  std::this_thread::sleep_for(std::chrono::seconds(4));  // the guest's clock stood still meanwhile

  ASSERT_TRUE((*sb)->Resume().ok());
  EXPECT_FALSE((*sb)->Paused());
  EXPECT_FALSE(fs::exists(state_ + "/microvm/paused/pz"));
  EXPECT_EQ(Cat(**sb, "/work/notes"), "written before the pause\n");
  long after = Count(**sb);
  EXPECT_GE(after, before) << "the counter's memory was lost";
  EXPECT_GT(CountAbove(**sb, after), after) << "the counting process did not go on after the resume";
  Identity id = IdentityOf(**sb);
  EXPECT_LE(std::llabs(id.clock - static_cast<long long>(time(nullptr))), 3) << "guest clock " << id.clock;
  EXPECT_EQ(id.hostname, "sandbox-pz");
  EXPECT_EQ((*sb)->Resume().code(), Code::kFailedPrecondition);
  ASSERT_TRUE((*sb)->Destroy().ok());
  sub->Shutdown();
}

TEST_F(MicrovmTest, APausedVmOutlivesItsSubstrateAndANewOneResumesIt) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  {
    auto sub = MakeMicrovmSubstrate(env_, o);
    auto sb = sub->Create("px", SandboxSpec{.image = rootfs_, .env = {{"FROM_SPEC", "kept"}}});
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    ASSERT_TRUE((*sb)->WriteFile("/work/notes", "kept across daemons\n", 0644, true).ok());
    StartCounter(**sb);
    ASSERT_GT(CountAbove(**sb, 0), 0);
    ASSERT_TRUE((*sb)->Pause("record of px").ok());
    ASSERT_TRUE((*sb)->Release().ok());  // the daemon stops
    sb->reset();
    sub->Shutdown();
  }
  // A pause that never finished (no stream) is not recovered.
  fs::create_directories(state_ + "/microvm/paused/half");
  std::ofstream(state_ + "/microvm/paused/half/vm.json") << "{}";
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto found = sub->Recover();
  ASSERT_EQ(found.size(), 1u);
  EXPECT_FALSE(fs::exists(state_ + "/microvm/paused/half"));
  Sandbox& sb = *found[0].sandbox;
  EXPECT_EQ(sb.id(), "px");
  EXPECT_EQ(found[0].record, "record of px");
  EXPECT_TRUE(sb.Paused());
  ASSERT_TRUE(sb.Resume().ok());
  EXPECT_EQ(Cat(sb, "/work/notes"), "kept across daemons\n");
  long c = Count(sb);
  EXPECT_GT(c, 0);
  EXPECT_GT(CountAbove(sb, c), c);
  ExecRequest r;
  r.shell = "echo $FROM_SPEC";
  auto env = sb.Exec(r, nullptr);
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->stdout_data, "kept\n");
  ASSERT_TRUE(sb.Destroy().ok());
  sub->Shutdown();
}

TEST_F(MicrovmTest, AForkOfARunningVmGivesEightIndependentCopiesWithFreshEntropy) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto parent = sub->Create("pa", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(parent.ok()) << parent.status().ToString();
  ASSERT_TRUE((*parent)->WriteFile("/work/who", "parent", 0644, true).ok());
  StartCounter(**parent);
  ASSERT_GT(CountAbove(**parent, 0), 0);
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) ids.push_back("fk" + std::to_string(i));
  auto forks = (*parent)->Fork(ids);
  ASSERT_TRUE(forks.ok()) << forks.status().ToString();
  ASSERT_EQ(forks->size(), 8u);
  const MicrovmCounters* counters = MicrovmCountersOf(sub.get());
  EXPECT_EQ(counters->forks.load(), 8u);
  EXPECT_TRUE(fs::is_empty(state_ + "/microvm/forks")) << "a fork's saved state was left behind";

  std::set<std::string> randoms;
  for (size_t i = 0; i < forks->size(); ++i) {
    Sandbox& f = *(*forks)[i];
    EXPECT_EQ(f.id(), ids[i]);
    EXPECT_EQ(Cat(f, "/work/who"), "parent");
    long c = Count(f);
    EXPECT_GT(CountAbove(f, c), c) << "the counter did not go on in copy " << i;
    ASSERT_TRUE(f.WriteFile("/work/who", ids[i], 0644, false).ok());
    randoms.insert(IdentityOf(f).random);
  }
  randoms.insert(IdentityOf(**parent).random);
  EXPECT_EQ(randoms.size(), 9u) << "two copies read the same random bytes";
  for (size_t i = 0; i < forks->size(); ++i) EXPECT_EQ(Cat(*(*forks)[i], "/work/who"), ids[i]);
  EXPECT_EQ(Cat(**parent, "/work/who"), "parent");
  long p = Count(**parent);
  EXPECT_GT(CountAbove(**parent, p), p) << "the parent did not run on";
  // Destroying one leaves the others.
  ASSERT_TRUE((*forks)[0]->Destroy().ok());
  EXPECT_EQ(Cat(*(*forks)[1], "/work/who"), ids[1]);
  for (auto& f : *forks) EXPECT_TRUE(f->Destroy().ok());
  EXPECT_TRUE((*parent)->Destroy().ok());
  sub->Shutdown();
}

TEST_F(MicrovmTest, AVmWithAnAllowListOrABusyOneIsNeitherPausedNorForked) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto sb = sub->Create("pe", SandboxSpec{.image = rootfs_, .network_allow = {"example.com"}});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  auto refused = (*sb)->Pause("r");
  EXPECT_EQ(refused.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("allow list"));
  EXPECT_EQ((*sb)->Fork({"x"}).status().code(), Code::kFailedPrecondition);
  ASSERT_TRUE((*sb)->Destroy().ok());
  // A call in flight: the pause waits for it (10 s), then refuses.
  auto busy = sub->Create("pb", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(busy.ok()) << busy.status().ToString();
  // (Under TCG the guest's clock may run faster than the host's: the exec is
  // ended by the destroy below, not by its own sleep.)
  std::thread sleeper([&] {
    ExecRequest r;
    r.shell = "sleep 120";
    auto ignored = (*busy)->Exec(r, nullptr);
    (void)ignored;
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto waited = (*busy)->Pause("r");
  EXPECT_EQ(waited.status().code(), Code::kFailedPrecondition) << waited.status().ToString();
  EXPECT_THAT(waited.status().message(), HasSubstr("between calls"));
  EXPECT_FALSE((*busy)->Paused());
  ASSERT_TRUE((*busy)->Destroy().ok());
  sleeper.join();
  sub->Shutdown();
}

// The guest's control port (paddock-ctl: the host's reseed of a restored VM)
// is its PID 1's, outside the sandbox: an agent tries every way to it (the
// port's device nodes, sysfs, a device node of its own made with the ports'
// major number, PID 1's fds) and reaches none; a pause and resume after the
// attempt still reseed the guest (its clock is the host's again).
TEST_F(MicrovmTest, AnAgentCannotReachTheGuestsControlPortAndAResumeStillReseeds) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto sb = sub->Create("ctl", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ExecRequest r;
  r.shell =
      "for p in /sys/class/virtio-ports/*; do [ -e $p/name ] && echo \"saw port $(cat $p/name)\"; done; "
      "for d in /dev/vport* /dev/virtio-ports/*; do [ -e $d ] || continue; echo \"saw $d\"; "
      "  echo garbage > $d 2>/dev/null && echo \"reached $d\"; done; "
      "major=$(awk '$2 == \"virtio-portsdev\" { print $1 }' /proc/devices 2>/dev/null); "
      "echo \"major=$major\"; "
      "if [ -n \"$major\" ]; then for m in 0 1 2 3 4 5; do "
      "  mknod /tmp/vp$m c $major $m 2>/dev/null || continue; echo made $m; "
      "  (echo garbage > /tmp/vp$m) 2>/dev/null && echo \"reached mknod $m\"; "
      "  dd if=/tmp/vp$m bs=1 count=1 2>/dev/null | grep -q . && echo \"read mknod $m\"; done; fi; "
      "for f in /proc/1/fd/*; do echo garbage > $f 2>/dev/null && echo \"reached $f\"; done; "
      "echo tried";
  r.timeout_ms = 60'000;
  auto res = (*sb)->Exec(r, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  std::printf("%s", res->stdout_data.c_str());
  EXPECT_THAT(res->stdout_data, HasSubstr("tried"));
  EXPECT_THAT(res->stdout_data, ::testing::Not(HasSubstr("reached"))) << res->stdout_data;
  EXPECT_THAT(res->stdout_data, ::testing::Not(HasSubstr("read "))) << res->stdout_data;
  EXPECT_THAT(res->stdout_data, ::testing::Not(HasSubstr("paddock-ctl"))) << res->stdout_data;

  ASSERT_TRUE((*sb)->Pause("r").ok());
  std::this_thread::sleep_for(std::chrono::seconds(3));
  ASSERT_TRUE((*sb)->Resume().ok());
  Identity id = IdentityOf(**sb);
  EXPECT_LE(std::llabs(id.clock - static_cast<long long>(time(nullptr))), 3) << "guest clock " << id.clock;
  ASSERT_TRUE((*sb)->Destroy().ok());
  sub->Shutdown();
}

// The host's side of the control port against a fake guest on a socketpair
// playing each way a hostile guest can answer: every call ends by its
// deadline with an error naming why, and only the right reply passes.
TEST_F(MicrovmTest, AReseedAgainstAHostileGuestEndsByItsDeadlineWithAClearError) {
  using Clock = std::chrono::steady_clock;
  // `call` on the host's end of a port whose other end `guest` plays, with a
  // 300 ms deadline.
  using Call = std::function<Status(int, Clock::time_point)>;
  auto call_against = [](const Call& call, const std::function<void(int)>& guest) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd host(sv[0]), peer(sv[1]);
    std::thread t([&] { guest(peer.get()); });
    const auto t0 = Clock::now();
    Status st = call(host.get(), t0 + std::chrono::milliseconds(300));
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3)) << "the call outlived its deadline: " << st.ToString();
    host.reset();  // a guest blocked on the port sees it close
    t.join();
    return st;
  };
  auto reseed_against = [&](const std::function<void(int)>& guest) {
    return call_against(
        [](int host, Clock::time_point by) { return microvm::ReseedGuest(host, std::string(32, 'e'), 1234, by); },
        guest);
  };
  auto request = [](int fd) {
    init::Frame f;
    EXPECT_TRUE(init::ReadFrame(fd, &f));
    return f;
  };
  // Answers nothing: the deadline.
  auto silent_guest = [&](int fd) {
    request(fd);
    char c;
    while (read(fd, &c, 1) > 0) {
    }
  };
  Status silent = reseed_against(silent_guest);
  EXPECT_EQ(silent.code(), Code::kDeadlineExceeded) << silent.ToString();
  // Half a header, then nothing.
  Status half = reseed_against([&](int fd) {
    request(fd);
    EXPECT_EQ(write(fd, "\x10\x00", 2), 2);
    char c;
    while (read(fd, &c, 1) > 0) {
    }
  });
  EXPECT_EQ(half.code(), Code::kDeadlineExceeded) << half.ToString();
  // A header claiming 1 GiB: refused from the header, nothing allocated for it.
  Status huge = reseed_against([&](int fd) {
    request(fd);
    uint32_t hdr[3] = {1u << 30, static_cast<uint32_t>(init::FrameType::kReply), 1};
    EXPECT_EQ(write(fd, hdr, sizeof hdr), static_cast<ssize_t>(sizeof hdr));
  });
  EXPECT_EQ(huge.code(), Code::kInternal) << huge.ToString();
  EXPECT_THAT(huge.message(), HasSubstr("over 4096 bytes"));
  // A reply to another request, and a frame of another type.
  for (auto [type, id] : {std::pair{init::FrameType::kReply, 7u}, std::pair{init::FrameType::kReseed, 1u}}) {
    Status wrong = reseed_against([&, type = type, id = id](int fd) {
      request(fd);
      init::WriteFrame(fd, type, id, init::EncodeReply(0, "", ""));
    });
    EXPECT_EQ(wrong.code(), Code::kInternal) << wrong.ToString();
    EXPECT_THAT(wrong.message(), HasSubstr("malformed"));
  }
  // Garbage in the reply's payload.
  Status garbage = reseed_against([&](int fd) {
    request(fd);
    init::WriteFrame(fd, init::FrameType::kReply, 1, "\xff\xff\xff\xff garbage");
  });
  EXPECT_THAT(garbage.message(), HasSubstr("malformed")) << garbage.ToString();
  // The port closed.
  Status closed = reseed_against([&](int fd) {
    request(fd);
    shutdown(fd, SHUT_RDWR);
  });
  EXPECT_EQ(closed.code(), Code::kInternal) << closed.ToString();
  // The guest's own error, its (long) message cut.
  Status refused = reseed_against([&](int fd) {
    request(fd);
    init::WriteFrame(fd, init::FrameType::kReply, 1, init::EncodeReply(EIO, std::string(3000, 'x'), ""));
  });
  EXPECT_THAT(refused.message(), HasSubstr("could not reseed"));
  EXPECT_LT(refused.message().size(), 400u);
  // The right reply passes, after a request that carries the entropy and clock.
  Status good = reseed_against([&](int fd) {
    init::Frame f = request(fd);
    EXPECT_EQ(f.type, init::FrameType::kReseed);
    init::WireReader r(f.payload);
    std::string entropy;
    uint64_t ns = 0;
    EXPECT_TRUE(r.Str(&entropy) && r.U64(&ns) && r.done());
    EXPECT_EQ(entropy, std::string(32, 'e'));
    EXPECT_EQ(ns, 1234u);
    init::WriteFrame(fd, init::FrameType::kReply, f.id, init::EncodeReply(0, "", ""));
  });
  EXPECT_TRUE(good.ok()) << good.ToString();
  // A clone's reseed with its identity goes through the same bounded call: a
  // silent guest ends it by its deadline, an error is quoted, and the request
  // carries the entropy, clock, hostname and machine-id.
  auto identity_against = [&](const std::function<void(int)>& guest) {
    return call_against(
        [](int host, Clock::time_point by) {
          return microvm::ReseedGuestAs(host, std::string(32, 'e'), 1234, "sandbox-c1", std::string(32, 'a'), by);
        },
        guest);
  };
  Status id_silent = identity_against(silent_guest);
  EXPECT_EQ(id_silent.code(), Code::kDeadlineExceeded) << id_silent.ToString();
  Status id_refused = identity_against([&](int fd) {
    request(fd);
    init::WriteFrame(fd, init::FrameType::kReply, 1, init::EncodeReply(EIO, "no uts", ""));
  });
  EXPECT_THAT(id_refused.message(), HasSubstr("could not reseed and take its hostname and machine-id: no uts"));
  Status id_good = identity_against([&](int fd) {
    init::Frame f = request(fd);
    EXPECT_EQ(f.type, init::FrameType::kIdentity);
    init::WireReader r(f.payload);
    std::string entropy, hostname, machine_id;
    uint64_t ns = 0;
    EXPECT_TRUE(r.Str(&entropy) && r.U64(&ns) && r.Str(&hostname) && r.Str(&machine_id) && r.done());
    EXPECT_EQ(entropy, std::string(32, 'e'));
    EXPECT_EQ(ns, 1234u);
    EXPECT_EQ(hostname, "sandbox-c1");
    EXPECT_EQ(machine_id, std::string(32, 'a'));
    init::WriteFrame(fd, init::FrameType::kReply, f.id, init::EncodeReply(0, "", ""));
  });
  EXPECT_TRUE(id_good.ok()) << id_good.ToString();
}

// Snapshot of a running microVM keeps its memory: creates from
// `microvm-snapshot:NAME` are independent running copies of the VM as it was
// (a process's memory and the guest's files), the VM itself runs on, and the
// name taken again moves to the newer state.
TEST_F(MicrovmTest, AMemorySnapshotOfARunningVmCreatesIndependentCopiesOfIt) {
  EXPECT_ACCELERATOR_USABLE();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  auto sub = MakeMicrovmSubstrate(env_, o);
  auto sb = sub->Create("ms", SandboxSpec{.image = rootfs_});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  auto sh = [](Sandbox& s, const std::string& cmd) {
    ExecRequest r;
    r.shell = cmd;
    auto res = s.Exec(r, nullptr);
    EXPECT_TRUE(res.ok()) << res.status().ToString();
    return res.ok() ? res->stdout_data : "";
  };
  sh(**sb, "echo 41 > /tmp/mem");
  auto snap = (*sb)->Snapshot("s1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->image, "microvm-snapshot:s1");
  EXPECT_EQ(snap->name, "s1");
  EXPECT_GT(snap->layer_bytes, 1u << 20);
  EXPECT_EQ(fs::status(state_ + "/microvm/snapshots").permissions() & fs::perms::others_all, fs::perms::none);
  EXPECT_EQ(sh(**sb, "cat /tmp/mem; echo 99 > /tmp/mem"), "41\n");  // it runs on

  std::vector<std::unique_ptr<Sandbox>> copies;
  for (const char* id : {"mc1", "mc2"}) {
    auto c = sub->Create(id, SandboxSpec{.image = "microvm-snapshot:s1"});
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    copies.push_back(std::move(c).value());
  }
  EXPECT_EQ(sh(*copies[0], "cat /tmp/mem; echo one > /tmp/mem"), "41\n");
  EXPECT_EQ(sh(*copies[1], "cat /tmp/mem; hostname"), "41\nsandbox-ms\n");  // a copy of that VM
  EXPECT_EQ(sh(*copies[0], "cat /tmp/mem"), "one\n");
  EXPECT_EQ(sh(*copies[1], "cat /tmp/mem"), "41\n");
  EXPECT_EQ(sh(**sb, "cat /tmp/mem"), "99\n");
  EXPECT_NE(IdentityOf(*copies[0]).random, IdentityOf(*copies[1]).random);  // reseeded apiece

  // The name again: the newer state.
  ASSERT_TRUE((*sb)->Snapshot("s1").ok());
  auto later = sub->Create("mc3", SandboxSpec{.image = "microvm-snapshot:s1"});
  ASSERT_TRUE(later.ok()) << later.status().ToString();
  EXPECT_EQ(sh(**later, "cat /tmp/mem"), "99\n");

  // Bad names and specs, each a clear error.
  EXPECT_EQ((*sb)->Snapshot("../escape").status().code(), Code::kInvalidArgument);
  EXPECT_EQ((*sb)->Snapshot(".hidden").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(sub->Create("x1", SandboxSpec{.image = "microvm-snapshot:none"}).status().code(), Code::kNotFound);
  EXPECT_EQ(sub->Create("x2", SandboxSpec{.image = "microvm-snapshot:a/b"}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(sub->Create("x3", SandboxSpec{.image = "microvm-snapshot:s1", .env = {{"A", "1"}}}).status().code(),
            Code::kInvalidArgument);
  for (auto& c : copies) EXPECT_TRUE(c->Destroy().ok());
  EXPECT_TRUE((*later)->Destroy().ok());
  EXPECT_TRUE((*sb)->Destroy().ok());
  sub->Shutdown();
}

}  // namespace
}  // namespace paddock
