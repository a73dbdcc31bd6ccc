#include "sandbox/microvm/microvm_substrate.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>

#include <spdlog/spdlog.h>

#include "sandbox/image_source.h"
#include "sandbox/init/init_client.h"
#include "sandbox/init/init_served_sandbox.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/process.h"
#include "sandbox/linux/seccomp_profile.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/layer_disks.h"
#include "sandbox/network/egress_proxy.h"
#include "sandbox/warm_pool.h"

namespace fs = std::filesystem;

namespace paddock {

namespace {

constexpr const char* kDefaultWorkdir = "/work";
// QEMU's own memory above the guest's RAM (its code, device state, page
// tables), bounded by the VM's host cgroup.
constexpr uint64_t kQemuOverheadBytes = 256ull << 20;

std::string Tail(const std::string& s, size_t n) { return s.size() <= n ? s : s.substr(s.size() - n); }

// What went wrong, from QEMU's console log (the guest's serial console and
// QEMU's own stderr share it).
Status DiagnoseFromConsole(const std::string& console, const std::string& fallback, Code fallback_code) {
  auto line_with = [&](const std::string& needle) -> std::string {
    size_t p = console.find(needle);
    if (p == std::string::npos) return "";
    size_t b = console.rfind('\n', p);
    b = b == std::string::npos ? 0 : b + 1;
    size_t e = console.find('\n', p);
    std::string line = console.substr(b, e == std::string::npos ? std::string::npos : e - b);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    return line;
  };
  std::string init_line = line_with("paddock-init(guest): ");
  if (std::string l = line_with("emulation failure"); !l.empty() || console.find("KVM internal error") != std::string::npos)
    return Error(Code::kFailedPrecondition,
                 "KVM cannot run the guest on this machine (QEMU: KVM internal error, emulation "
                 "failure; nested virtualization without hardware support?)");
  bool oom = console.find("Out of memory") != std::string::npos ||
             console.find("out of memory") != std::string::npos ||
             console.find("System is deadlocked on memory") != std::string::npos ||
             console.find("Initramfs unpacking failed") != std::string::npos ||
             console.find("Cannot allocate memory") != std::string::npos;
  if (std::string l = line_with("Kernel panic - not syncing"); !l.empty()) {
    if (oom)
      return Error(Code::kResourceExhausted, "the guest ran out of memory and its kernel panicked: {}{}", l,
                   init_line.empty() ? "" : " (" + init_line + ")");
    return Error(Code::kInternal, "the guest kernel panicked: {}{}", l,
                 init_line.empty() ? "" : " after " + init_line);
  }
  if (oom) return Error(Code::kResourceExhausted, "the guest ran out of memory");
  if (!init_line.empty()) return Error(Code::kInternal, "the guest failed to boot: {}", init_line);
  if (std::string l = line_with("qemu-system-x86_64: "); !l.empty())
    return Error(Code::kInternal, "QEMU failed: {}", l);
  std::string tail = Tail(console, 400);
  return Error(fallback_code, "{}{}", fallback, tail.empty() ? "" : " (console: " + tail + ")");
}

class MicrovmSandbox final : public InitServedSandbox {
 public:
  MicrovmSandbox(std::string id, std::string dir) : InitServedSandbox(std::move(id)), dir_(std::move(dir)) {}
  ~MicrovmSandbox() override {
    Status ignored = Destroy();
    (void)ignored;
  }
  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override {
    if (!client_) return Destroyed();
    const ExecRequest* send = &req;
    ExecRequest merged;
    if (!env_.empty()) {
      merged = req;
      for (const auto& [k, v] : env_) merged.env.emplace(k, v);
      send = &merged;
    }
    auto r = client_->Exec(*send, on_output);
    if (!r.ok() && r.status().code() == Code::kUnavailable) return WhyGone(r.status());
    return r;
  }

  // A call failed because the channel closed: if the VM itself is gone (a
  // guest panic, a guest out of memory), say why from its console.
  Status WhyGone(const Status& st) {
    if (client_ && client_->alive()) return st;
    std::lock_guard lock(destroy_mu_);
    if (dir_.empty()) return st;
    qemu_.KillAndReap();
    auto log = ReadSmallFile(dir_ + "/console.log");
    if (!log.ok()) return st;
    Status why = DiagnoseFromConsole(log.value(), "", Code::kUnavailable);
    if (why.message().empty()) return st;
    return Status(why.code(), "the sandbox's VM is gone: " + why.message());
  }
  Result<Usage> GetUsage() override {
    if (!client_) return Destroyed();
    return client_->GuestUsage();
  }
  Result<SnapshotResult> Snapshot(const std::string& name) override {
    (void)name;
    return Error(Code::kUnimplemented,
                 "snapshots of microVM sandboxes are not implemented yet: the guest's upper layer "
                 "lives in guest memory and has no export path to the host");
  }

  Status Destroy() override {
    std::lock_guard lock(destroy_mu_);
    if (client_) client_->Close();
    qemu_.KillAndReap();  // the guest and everything in it die with QEMU
    client_.reset();      // its egress tunnel too: every connection closes
    egress_.reset();
    Status first = cgroup_.Destroy();
    if (!dir_.empty()) {
      Status st = RemoveTree(dir_);
      if (st.ok()) dir_.clear();
      else if (first.ok()) first = st;
    }
    return first;
  }

  using InitServedSandbox::client_;  // started by the substrate's Create
  std::map<std::string, std::string> env_;
  std::string dir_;
  Cgroup cgroup_;
  ChildProcess qemu_;
  std::shared_ptr<void> lease_;  // keeps the image's layers materialized
  // With a network allow list only: served through the client's egress
  // tunnel (the guest has no network device; its connections travel over
  // the channel). Outlives client_ (Destroy).
  std::unique_ptr<EgressProxy> egress_;
  std::mutex destroy_mu_;
};

struct Recipe {
  std::vector<std::string> disks;  // layer disk images, bottom first
  std::shared_ptr<void> lease;
  Limits limits;
  std::string workdir;
};

class MicrovmSubstrate final : public Substrate {
 public:
  MicrovmSubstrate(const SubstrateEnv& env, MicrovmOptions opts)
      : env_(env),
        opts_(std::move(opts)),
        disks_(env.state_dir + "/microvm/layers", opts_.boot.fs_type.empty() ? "erofs" : opts_.boot.fs_type),
        pool_(env.warm_pool_size) {
    if (opts_.boot.fs_type.empty()) opts_.boot.fs_type = "erofs";
    if (opts_.boot_timeout_ms == 0) opts_.boot_timeout_ms = opts_.accel == "tcg" ? 180'000 : 15'000;
  }
  ~MicrovmSubstrate() override { pool_.Stop(); }

  std::string name() const override { return "microvm"; }

  Result<std::unique_ptr<Sandbox>> Create(const std::string& id, const SandboxSpec& spec) override {
    PADDOCK_RETURN_IF_ERROR(CheckAccelerator(opts_));
    PADDOCK_RETURN_IF_ERROR(CheckSearchableByOthers(env_.state_dir));
    PADDOCK_ASSIGN_OR_RETURN(std::vector<EgressRule> egress, ParseEgressRules(spec.network_allow));
    PADDOCK_ASSIGN_OR_RETURN(ResolvedImage image, ResolverOrDefault(env_.images).Resolve(spec.image, {spec.host_dir_image_ok, spec.local_client}));
    auto recipe = std::make_shared<Recipe>();
    for (const auto& layer : image.layer_dirs) {
      PADDOCK_ASSIGN_OR_RETURN(std::string disk, disks_.Get(layer));
      recipe->disks.push_back(disk);
    }
    recipe->lease = image.lease;
    recipe->limits = spec.limits;
    std::map<std::string, std::string> env = spec.env;
    std::string workdir = spec.workdir;
    ApplyImageDefaults(image, &env, &workdir);
    recipe->workdir = workdir.empty() ? kDefaultWorkdir : workdir;
    std::string key = fmt::format("{}\n{}\n{}\n{}\n{}\n{}", image.id, recipe->workdir,
                                  spec.limits.cpu_millicores, spec.limits.memory_bytes,
                                  spec.limits.pids, spec.limits.disk_bytes);
    std::unique_ptr<Sandbox> sb = pool_.Take(key);
    if (!sb) {
      PADDOCK_ASSIGN_OR_RETURN(sb, Build(id, *recipe));
    }
    pool_.Want(key, [this, recipe] { return Build(NewSandboxId(), *recipe); });
    auto* vm = static_cast<MicrovmSandbox*>(sb.get());
    if (!egress.empty()) {
      // Any VM, warm or not: its paddock-init starts listening only now, and
      // only the proxy made for this sandbox's list serves it.
      vm->egress_ = EgressProxy::WithoutListener(std::move(egress));
      Status st = vm->client_->StartEgress(vm->egress_.get());
      if (!st.ok()) return st.Prefix("starting the sandbox's egress");
      for (const auto& [k, v] : EgressProxy::ProxyEnv()) env.emplace(k, v);
    }
    vm->env_ = env;
    return sb;
  }

  void Shutdown() override {
    pool_.Stop();
    RemoveCgroupRootIfEmpty(env_.cgroup_root());
  }

 private:
  Result<microvm::BootAssets> Assets() {
    std::lock_guard lock(assets_mu_);
    if (!assets_) {
      PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets a,
                               microvm::PrepareBootAssets(opts_.boot, env_.init_path,
                                                          env_.state_dir + "/microvm/boot"));
      assets_ = std::move(a);
    }
    return *assets_;
  }

  Result<std::unique_ptr<Sandbox>> Build(const std::string& id, const Recipe& r) {
    PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets assets, Assets());
    PADDOCK_ASSIGN_OR_RETURN(std::string bpf, DefaultSeccompBpf());
    const std::string dir = fmt::format("{}/vms/{}", env_.state_dir, id);
    auto sb = std::make_unique<MicrovmSandbox>(id, dir);  // cleans up on any early return
    PADDOCK_RETURN_IF_ERROR(MkdirAll(dir + "/dev", 0711));
    chmod(dir.c_str(), 0711);

    uint64_t limit = r.limits.memory_bytes ? r.limits.memory_bytes : kDefaultMemoryBytes;
    uint64_t guest_ram = opts_.guest_memory_override ? opts_.guest_memory_override
                                                     : limit + opts_.guest_overhead_bytes;
    uint64_t guest_mib = (guest_ram + (1 << 20) - 1) >> 20;
    uint32_t vcpus = opts_.vcpus ? opts_.vcpus : 1;
    if (r.limits.cpu_millicores) vcpus = std::max<uint32_t>(1, (r.limits.cpu_millicores + 999) / 1000);
    uint64_t disk = r.limits.disk_bytes ? r.limits.disk_bytes : kDefaultDiskBytes;

    // The VM's host cgroup: its RAM plus QEMU's own, and its vCPUs.
    Limits host;
    host.memory_bytes = (guest_mib << 20) + kQemuOverheadBytes;
    host.pids = 64;
    host.cpu_millicores = vcpus * 1000;
    auto cg = Cgroup::Create(env_.cgroup_root(), "vm-" + id, host);
    if (!cg.ok()) return cg.status();
    sb->cgroup_ = std::move(cg).value();

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);
    const std::string console_path = dir + "/console.log";
    UniqueFd console(open(console_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!console.valid()) return ErrnoError("creating " + console_path);

    std::string cmdline =
        "console=ttyS0 quiet panic=-1 reboot=t rdinit=/paddock-init pci=off "
        "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 "
        "cryptomgr.notests random.trust_cpu=on no_timer_check tsc=reliable "
        // A guest out of memory as a whole panics (and QEMU exits) instead of
        // killing paddock-init; the sandbox's own cgroup still OOM-kills
        // only its commands.
        "sysctl.vm.panic_on_oom=1";
    cmdline += fmt::format(" paddock.layers={} paddock.fs={} paddock.disk={}", r.disks.size(),
                           opts_.boot.fs_type, disk);
    const bool kvm = opts_.accel != "tcg";
    // Under TCG the guest cannot calibrate its TSC against anything (no
    // kvm-clock) and stalls; give it a nominal frequency.
    if (!kvm) cmdline += " tsc_early_khz=2000000";
    if (!opts_.extra_cmdline.empty()) cmdline += " " + opts_.extra_cmdline;
    std::vector<std::string> argv = {
        opts_.qemu,
        "-name", "paddock-vm-" + id,
        // microvm: no PCI, no firmware option ROMs. ACPI stays on: it is
        // how Debian's kernel (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) finds
        // the virtio-mmio devices. The RTC stays on: without it the kernel
        // spends seconds polling a missing CMOS clock (docs/microvm.md).
        "-M", "microvm,x-option-roms=off",
        // TCG: a 64 MiB translation cache instead of the 1 GiB default (host RSS per VM).
        "-accel", kvm ? "kvm" : "tcg,tb-size=64",
        "-cpu", kvm ? "host" : "max",
        "-smp", std::to_string(vcpus),
        "-m", fmt::format("{}M", guest_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        // QEMU's seccomp filter: no obsolete calls, no setuid, no fork/exec,
        // no scheduler/affinity changes.
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-kernel", assets.kernel,
        "-initrd", assets.initramfs,
        "-append", cmdline,
        // The guest's console (panic messages) and QEMU's stderr: one log.
        "-chardev", "stdio,id=con,signal=off",
        "-serial", "chardev:con",
        // The channel: a virtio-serial port on our end of a socketpair.
        "-chardev", "socket,id=ch,fd=3",
        "-device", "virtio-serial-device,max_ports=2",
        "-device", "virtserialport,chardev=ch,name=paddock",
    };
    for (size_t i = 0; i < r.disks.size(); ++i) {
      argv.push_back("-drive");
      argv.push_back(fmt::format("file={},if=none,id=l{},format=raw,readonly=on,cache=unsafe", r.disks[i], i));
      argv.push_back("-device");
      argv.push_back(fmt::format("virtio-blk-device,drive=l{},serial=layer{}", i, i));
    }

    // A pooled VM is built on the pool's nice-19 filler thread; QEMU's vCPU threads
    // and the init client's reader thread would keep that priority for the VM's
    // whole life, so they start at normal priority.
    NormalPriorityScope normal;
    auto child = SpawnQemu(argv, dir + "/dev", console.get(), theirs.get(), sb->cgroup_, kvm);
    if (!child.ok()) return child.status().Prefix("starting QEMU");
    sb->qemu_ = std::move(child).value();
    theirs.reset();
    console.reset();

    init::SetupConfig setup;
    setup.mode = init::Mode::kContainer;
    setup.rootfs = "/rootfs";  // inside the guest's switched root
    setup.hostname = "sandbox-" + id;
    setup.workdir = r.workdir;
    setup.tmp_bytes = disk;
    setup.limits = r.limits;
    setup.seccomp_bpf = bpf;
    auto client = InitClient::Start(std::move(ours), setup, opts_.boot_timeout_ms);
    if (!client.ok()) {
      bool timed_out = client.status().code() == Code::kDeadlineExceeded;
      sb->qemu_.KillAndReap();
      auto read = ReadSmallFile(console_path);
      std::string log = read.ok() ? read.value() : "";
      // Kept for a user to read whole (the error quotes only the cause).
      Status kept = WriteSmallFile(env_.state_dir + "/microvm/last-boot-failure.log", log);
      (void)kept;
      if (client.status().message().find("setup failed inside the sandbox") != std::string::npos)
        return client.status();
      return DiagnoseFromConsole(
          log,
          timed_out ? fmt::format("the guest did not answer within its boot deadline of {} ms",
                                  opts_.boot_timeout_ms)
                    : "QEMU exited before the guest answered",
          timed_out ? Code::kDeadlineExceeded : Code::kInternal);
    }
    sb->client_ = std::move(client).value();
    sb->lease_ = r.lease;
    return std::unique_ptr<Sandbox>(std::move(sb));
  }

  // clone into new mount, pid, net, ipc and uts namespaces; the child waits
  // until it is in the VM's cgroup, gives itself a private /dev/kvm node
  // owned by the QEMU uid (only in its own mount namespace), drops to that
  // uid and execs QEMU with the console on stdout/stderr and the channel on
  // fd 3. Only raw system calls after the clone (the daemon is
  // multithreaded).
  Result<ChildProcess> SpawnQemu(const std::vector<std::string>& argv, const std::string& devdir,
                                 int console_fd, int channel_fd, const Cgroup& cgroup, bool kvm) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const char* envp[] = {"PATH=/usr/bin:/bin", nullptr};
    const std::string kvm_node = devdir + "/kvm";
    struct stat kst {};
    if (kvm && stat(opts_.kvm_device.c_str(), &kst) != 0) return ErrnoError("KVM device " + opts_.kvm_device);
    int sync[2];
    if (pipe2(sync, O_CLOEXEC) != 0) return ErrnoError("pipe");
    int pidfd = -1;
    const uint32_t uid = opts_.qemu_uid, gid = opts_.qemu_gid;
    const char* kvm_dev = opts_.kvm_device.c_str();
    long pid = syscall(SYS_clone,
                       CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                           CLONE_PIDFD | SIGCHLD,
                       nullptr, &pidfd, nullptr, nullptr);
    if (pid == 0) {
      char go;
      if (read(sync[0], &go, 1) != 1) _exit(120);
      if (setsid() < 0) _exit(120);  // no controlling terminal of the daemon's
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(121);
      if (kvm) {
        if (mount("tmpfs", devdir.c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=16k") != 0)
          _exit(122);
        if (mknod(kvm_node.c_str(), S_IFCHR | 0600, kst.st_rdev) != 0) _exit(123);
        if (chown(kvm_node.c_str(), uid, gid) != 0) _exit(124);
        if (mount(kvm_node.c_str(), kvm_dev, nullptr, MS_BIND, nullptr) != 0) _exit(125);
      }
      if (syscall(SYS_setgroups, 0, nullptr) != 0 || syscall(SYS_setresgid, gid, gid, gid) != 0 ||
          syscall(SYS_setresuid, uid, uid, uid) != 0)
        _exit(126);
      prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
      int devnull = open("/dev/null", O_RDWR);
      if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(console_fd, 1) < 0 || dup2(console_fd, 2) < 0 ||
          dup2(channel_fd, 3) < 0)
        _exit(127);
      syscall(SYS_close_range, 4, ~0U, 0);
      execve(args[0], args.data(), const_cast<char**>(envp));
      _exit(127);
    }
    close(sync[0]);
    if (pid < 0) {
      close(sync[1]);
      return ErrnoError("clone");
    }
    ChildProcess child(static_cast<pid_t>(pid), UniqueFd(pidfd));
    Status st = cgroup.AddProcess(static_cast<pid_t>(pid));
    char go = 'g';
    bool sent = st.ok() && write(sync[1], &go, 1) == 1;
    close(sync[1]);
    if (!st.ok()) return st.Prefix("joining the VM's cgroup");
    if (!sent) return ErrnoError("starting QEMU");
    // QEMU that cannot start at all (missing, bad options) exits at once.
    siginfo_t info{};
    struct pollfd p {pidfd, POLLIN, 0};
    if (poll(&p, 1, 0) == 1 && waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | WNOWAIT) == 0 &&
        info.si_code == CLD_EXITED && info.si_status >= 120) {
      return Error(Code::kInternal, "QEMU's launcher failed at step {} (see docs/microvm.md)",
                   info.si_status);
    }
    return child;
  }

  SubstrateEnv env_;
  MicrovmOptions opts_;
  microvm::LayerDisks disks_;
  std::mutex assets_mu_;
  std::optional<microvm::BootAssets> assets_;
  WarmPool pool_;  // last: stopped before the rest goes
};

}  // namespace

MicrovmOptions MicrovmOptionsFromEnvironment() {
  MicrovmOptions o;
  if (const char* a = std::getenv("PADDOCK_MICROVM_ACCEL"); a && *a) o.accel = a;
  if (const char* k = std::getenv("PADDOCK_MICROVM_KERNEL"); k && *k) o.boot.kernel = k;
  if (const char* f = std::getenv("PADDOCK_MICROVM_FS"); f && *f) o.boot.fs_type = f;
  return o;
}

Status CheckAccelerator(const MicrovmOptions& o) {
  if (o.accel != "kvm" && o.accel != "tcg")
    return Error(Code::kInvalidArgument, "unknown microvm accelerator '{}' (kvm or tcg)", o.accel);
  if (access(o.qemu.c_str(), X_OK) != 0)
    return Error(Code::kFailedPrecondition,
                 "QEMU is not installed: {} is missing (install qemu-system-x86: scripts/install-deps.sh)",
                 o.qemu);
  if (o.accel == "tcg") return Status::Ok();
  int fd = open(o.kvm_device.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT)
      return Error(Code::kFailedPrecondition,
                   "KVM is not available: {} does not exist (no kvm module, or virtualization is "
                   "off in this machine's firmware or hypervisor)",
                   o.kvm_device);
    return Error(Code::kFailedPrecondition, "KVM is not usable: cannot open {}: {}", o.kvm_device,
                 std::strerror(err));
  }
  int version = ioctl(fd, KVM_GET_API_VERSION, 0);
  close(fd);
  if (version != KVM_API_VERSION)
    return Error(Code::kFailedPrecondition, "KVM is not usable: {} is not a KVM device (API version {})",
                 o.kvm_device, version);
  // A /dev/kvm without hardware virtualization under it (a nested guest
  // whose hypervisor hides VMX/SVM) starts guests that die in KVM's
  // instruction emulator long before they boot.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  bool hw = false;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    if (line.find(" vmx") != std::string::npos || line.find(" svm") != std::string::npos) hw = true;
    break;
  }
  if (!hw)
    return Error(Code::kFailedPrecondition,
                 "KVM cannot run guests here: {} exists but the CPU has no hardware virtualization "
                 "(no vmx/svm flag in /proc/cpuinfo), so guests fail in KVM's instruction emulator; "
                 "run on a host with VT-x/AMD-V, or set PADDOCK_MICROVM_ACCEL=tcg (emulation, slow)",
                 o.kvm_device);
  return Status::Ok();
}

std::vector<pid_t> StrayQemuProcesses(const std::string& state_dir) {
  std::vector<pid_t> out;
  std::error_code ec;
  // Every VM's command line names the state dir's cached kernel and disks.
  std::string needle = fs::weakly_canonical(state_dir, ec).string() + "/microvm/";
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd.find("qemu-system") == std::string::npos) continue;
    if (cmd.find(needle) == std::string::npos) continue;
    out.push_back(std::stoi(name));
  }
  return out;
}

std::unique_ptr<Substrate> MakeMicrovmSubstrate(const SubstrateEnv& env, MicrovmOptions options) {
  return std::make_unique<MicrovmSubstrate>(env, std::move(options));
}

}  // namespace paddock
