#include "sandbox/microvm/microvm_substrate.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/random.h>
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
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>

#include "sandbox/image_source.h"
#include "sandbox/init/init_client.h"
#include "sandbox/init/init_served_sandbox.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/process.h"
#include "sandbox/linux/seccomp_profile.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/console_log.h"
#include "sandbox/microvm/layer_disks.h"
#include "sandbox/microvm/qmp.h"
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

// The host uids QEMU runs as: one per VM, so that no VM's QEMU can signal,
// ptrace or read the memory of another's.
class UidPool {
 public:
  UidPool(uint32_t base, uint32_t count) : base_(base), count_(count) {}
  Result<uint32_t> Take() {
    std::lock_guard lock(mu_);
    for (uint32_t i = 0; i < count_; ++i) {
      uint32_t uid = base_ + (next_ + i) % count_;
      if (used_.insert(uid).second) {
        next_ = (next_ + i + 1) % count_;
        return uid;
      }
    }
    return Error(Code::kResourceExhausted, "all {} QEMU uids ({}..{}) are in use", count_, base_,
                 base_ + count_ - 1);
  }
  void Give(uint32_t uid) {
    std::lock_guard lock(mu_);
    used_.erase(uid);
  }

 private:
  const uint32_t base_, count_;
  std::mutex mu_;
  std::set<uint32_t> used_;
  uint32_t next_ = 0;
};

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
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  // The file calls as InitServedSandbox's, with a VM whose channel is gone
  // stopped and explained.
  Status WriteFile(const std::string& path, std::string_view content, uint32_t mode, bool make_parents) override {
    Status st = InitServedSandbox::WriteFile(path, content, mode, make_parents);
    return st.ok() ? st : WhyGone(st);
  }
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override {
    auto r = InitServedSandbox::ReadFile(path, max_bytes);
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override {
    auto r = InitServedSandbox::ListDir(path);
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  Result<FileInfo> Stat(const std::string& path) override {
    auto r = InitServedSandbox::Stat(path);
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }

  // A call failed and the channel is closed: the VM is stopped (QEMU killed;
  // a guest that broke the protocol or stopped answering is not trusted with
  // another call) and, if it died on its own (a guest panic, a guest out of
  // memory), its console says why.
  Status WhyGone(const Status& st) {
    if (!client_ || client_->alive()) return st;
    std::lock_guard lock(destroy_mu_);
    if (dir_.empty()) return st;
    qemu_.KillAndReap();
    if (!client_->broken_reason().empty()) return st;  // the daemon closed it: st says why
    if (!console_) return st;
    console_->Stop();  // QEMU is gone: everything it wrote is in the log
    Status why = DiagnoseFromConsole(console_->Text(), "", Code::kUnavailable);
    if (why.message().empty()) return st;
    return Status(why.code(), "the sandbox's VM is gone: " + why.message());
  }
  Result<Usage> GetUsage() override {
    if (!client_) return Destroyed();
    auto r = client_->GuestUsage();
    if (!r.ok()) return WhyGone(r.status());
    return r;
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
    if (console_) console_->Stop();
    egress_.reset();
    Status first = cgroup_.Destroy();
    if (uids_ && uid_) {
      uids_->Give(*uid_);
      uid_.reset();
    }
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
  std::unique_ptr<microvm::ConsoleLog> console_;  // QEMU's stdout/stderr, bounded
  std::shared_ptr<UidPool> uids_;
  std::optional<uint32_t> uid_;  // QEMU's, from uids_; given back once QEMU is gone
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
        uids_(std::make_shared<UidPool>(opts_.qemu_uid, std::max<uint32_t>(1, opts_.qemu_uid_count))),
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

  // What shapes a VM's QEMU and its guest up to the setup frame: the same for
  // a cold boot, a template and the template's clones (a template's key is
  // made of it; a clone's command line must match its template's).
  struct Shape {
    std::vector<std::string> argv;   // without -name, the memory backend, the monitor, -incoming
    std::vector<std::string> files;  // what the jail binds: kernel, initramfs, disks
    uint64_t guest_mib = 0;
    uint32_t vcpus = 1;
    uint64_t disk = 0;
    bool kvm = true;
  };
  enum class Start { kCold, kTemplate, kClone };

  // A template: a VM booted once to the point where its paddock-init waits
  // for the setup frame, then saved. Its RAM is a memfd sealed against
  // writes (every clone maps it private, copy on write); its device state a
  // file under <state>/microvm/templates/<hash>/state, held open.
  struct Template {
    std::string hash;
    UniqueFd ram;    // sealed memfd (F_SEAL_WRITE | SHRINK | GROW | SEAL)
    UniqueFd state;  // O_RDONLY; each clone gets its own open of it
  };
  struct TemplateBuild {
    std::shared_ptr<Template> t;  // or:
    Status error;
    std::chrono::steady_clock::time_point at;
  };

  Shape ShapeOf(const Recipe& r, const microvm::BootAssets& assets) {
    Shape s;
    uint64_t limit = r.limits.memory_bytes ? r.limits.memory_bytes : kDefaultMemoryBytes;
    uint64_t guest_ram = opts_.guest_memory_override ? opts_.guest_memory_override
                                                     : limit + opts_.guest_overhead_bytes;
    s.guest_mib = (guest_ram + (1 << 20) - 1) >> 20;
    s.vcpus = opts_.vcpus ? opts_.vcpus : 1;
    if (r.limits.cpu_millicores) s.vcpus = std::max<uint32_t>(1, (r.limits.cpu_millicores + 999) / 1000);
    s.disk = r.limits.disk_bytes ? r.limits.disk_bytes : kDefaultDiskBytes;

    std::string cmdline =
        "console=ttyS0 quiet panic=-1 reboot=t rdinit=/paddock-init pci=off "
        "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 "
        "cryptomgr.notests random.trust_cpu=on no_timer_check tsc=reliable "
        // A guest out of memory as a whole panics (and QEMU exits) instead of
        // killing paddock-init; the sandbox's own cgroup still OOM-kills
        // only its commands.
        "sysctl.vm.panic_on_oom=1";
    cmdline += fmt::format(" paddock.layers={} paddock.fs={} paddock.disk={}", r.disks.size(),
                           opts_.boot.fs_type, s.disk);
    s.kvm = opts_.accel != "tcg";
    // Under TCG the guest cannot calibrate its TSC against anything (no
    // kvm-clock) and stalls; give it a nominal frequency.
    if (!s.kvm) cmdline += " tsc_early_khz=2000000";
    if (!opts_.extra_cmdline.empty()) cmdline += " " + opts_.extra_cmdline;
    s.argv = {
        opts_.qemu,
        // TCG: a 64 MiB translation cache instead of the 1 GiB default (host RSS per VM).
        "-accel", s.kvm ? "kvm" : "tcg,tb-size=64",
        "-cpu", s.kvm ? "host" : "max",
        "-smp", std::to_string(s.vcpus),
        "-m", fmt::format("{}M", s.guest_mib),
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
      s.argv.push_back("-drive");
      s.argv.push_back(fmt::format("file={},if=none,id=l{},format=raw,readonly=on,cache=unsafe", r.disks[i], i));
      s.argv.push_back("-device");
      s.argv.push_back(fmt::format("virtio-blk-device,drive=l{},serial=layer{}", i, i));
    }
    s.files = {assets.kernel, assets.initramfs};
    s.files.insert(s.files.end(), r.disks.begin(), r.disks.end());
    return s;
  }

  // The full command line. A template and its clones have their RAM in a
  // file-backed memory backend on fd 4 (the template's memfd, reached as
  // /proc/self/fd/4 in QEMU's jail): shared while the template runs (its
  // writes land in the memfd), private in a clone (copy on write, the
  // memfd's pages shared by every clone until written). Their monitor (QMP)
  // is on fd 5; a clone waits for its device state (-incoming defer; it
  // arrives on fd 6, migrate-incoming).
  std::vector<std::string> Argv(const std::string& id, const Shape& s, Start start) {
    std::vector<std::string> argv = s.argv;
    // microvm: no PCI, no firmware option ROMs. ACPI stays on: it is how
    // Debian's kernel (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) finds the
    // virtio-mmio devices. The RTC stays on: without it the kernel spends
    // seconds polling a missing CMOS clock (docs/microvm.md).
    std::string machine = "microvm,x-option-roms=off";
    std::vector<std::string> extra = {"-name", "paddock-vm-" + id};
    if (start != Start::kCold) {
      machine += ",memory-backend=mem";
      extra.insert(extra.end(),
                   {"-object",
                    fmt::format("memory-backend-file,id=mem,size={}M,mem-path=/proc/self/fd/4,share={}", s.guest_mib,
                                start == Start::kTemplate ? "on" : "off"),
                    "-chardev", "socket,id=qmp,fd=5", "-mon", "chardev=qmp,mode=control"});
      if (start == Start::kClone) extra.insert(extra.end(), {"-incoming", "defer"});
    }
    argv.insert(argv.begin() + 1, {"-M", machine});
    argv.insert(argv.begin() + 1, extra.begin(), extra.end());
    return argv;
  }

  std::string TemplateKey(const Shape& s) {
    struct stat st {};
    stat(opts_.qemu.c_str(), &st);
    std::string key = fmt::format("qemu {} {} {}\n", opts_.qemu, st.st_size, st.st_mtim.tv_sec);
    for (const auto& a : s.argv) key += a + "\n";
    return key;
  }

  // The host side of a VM before QEMU starts: its directory, uid, cgroup and
  // console log. `console` receives the write end QEMU gets.
  Status PrepareHost(MicrovmSandbox* sb, const std::string& id, const Shape& s, UniqueFd* console) {
    PADDOCK_RETURN_IF_ERROR(MkdirAll(sb->dir_, 0711));
    chmod(sb->dir_.c_str(), 0711);
    PADDOCK_ASSIGN_OR_RETURN(uint32_t qemu_uid, uids_->Take());
    sb->uids_ = uids_;
    sb->uid_ = qemu_uid;
    // The VM's host cgroup: its RAM plus QEMU's own, and its vCPUs.
    Limits host;
    host.memory_bytes = (s.guest_mib << 20) + kQemuOverheadBytes;
    host.pids = 64;
    host.cpu_millicores = s.vcpus * 1000;
    auto cg = Cgroup::Create(env_.cgroup_root(), "vm-" + id, host);
    if (!cg.ok()) return cg.status();
    sb->cgroup_ = std::move(cg).value();
    // The console goes through a pipe the daemon drains into a capped file:
    // a guest flooding its serial port costs the host a bounded log.
    auto log = microvm::ConsoleLog::Start(sb->dir_ + "/console.log", opts_.console_log_cap, console);
    if (!log.ok()) return log.status();
    sb->console_ = std::move(log).value();
    return Status::Ok();
  }

  // Why a VM's start failed, once its QEMU is gone: a launcher step, the
  // guest's console, or `st` itself.
  Status StartFailure(MicrovmSandbox* sb, const Status& st) {
    bool timed_out = st.code() == Code::kDeadlineExceeded;
    // A launcher step that failed after QEMU's start was checked (the jail's
    // mounts, the exec) says which.
    siginfo_t info{};
    if (!timed_out && waitid(P_PID, static_cast<id_t>(sb->qemu_.pid()), &info, WEXITED | WNOWAIT | WNOHANG) == 0 &&
        info.si_pid != 0 && info.si_code == CLD_EXITED && info.si_status >= 110 && info.si_status <= 122)
      return Error(Code::kInternal, "QEMU's launcher failed at step {} (see docs/microvm.md)", info.si_status);
    sb->qemu_.KillAndReap();
    sb->console_->Stop();
    std::string log = sb->console_->Text();
    // Kept for a user to read whole (the error quotes only the cause).
    Status kept = WriteSmallFile(env_.state_dir + "/microvm/last-boot-failure.log", log);
    (void)kept;
    if (st.message().find("setup failed inside the sandbox") != std::string::npos) return st;
    return DiagnoseFromConsole(
        log,
        timed_out ? fmt::format("the guest did not answer within its boot deadline of {} ms ({})",
                                opts_.boot_timeout_ms, st.message())
                  : fmt::format("QEMU exited before the guest answered ({})", st.message()),
        timed_out ? Code::kDeadlineExceeded : Code::kInternal);
  }

  static int MillisLeft(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<int64_t>(1, left.count()));
  }

  Result<std::unique_ptr<Sandbox>> Build(const std::string& id, const Recipe& r) {
    PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets assets, Assets());
    Shape shape = ShapeOf(r, assets);
    if (opts_.templates) {
      std::string key = TemplateKey(shape);
      auto t = TemplateFor(key, shape);
      if (t.ok()) {
        auto vm = BuildVm(id, r, shape, t->get());
        if (vm.ok()) {
          ++counters_.clones;
          CloneRestored(key);
          return vm;
        }
        // Never a failed create only because templating failed: this VM
        // boots cold, and the template is made anew for the next one.
        ++counters_.clone_failures;
        spdlog::warn("microvm {}: restoring a clone of template {} failed, booting cold instead: {}", id,
                     (*t)->hash, vm.status().ToString());
        DropTemplate(key, *t, vm.status());
      }
    }
    auto vm = BuildVm(id, r, shape, nullptr);
    if (vm.ok()) ++counters_.cold_boots;
    return vm;
  }

  // A VM booted cold (`t` null) or restored from template `t`; either way
  // its setup carries a fresh identity (sandbox/init/protocol.h, SetupConfig).
  Result<std::unique_ptr<Sandbox>> BuildVm(const std::string& id, const Recipe& r, const Shape& shape,
                                           const Template* t) {
    PADDOCK_ASSIGN_OR_RETURN(std::string bpf, DefaultSeccompBpf());
    auto sb = std::make_unique<MicrovmSandbox>(id, fmt::format("{}/vms/{}", env_.state_dir, id));  // cleans up on any early return
    // A pooled VM is built on the pool's nice-19 filler thread; QEMU's vCPU threads
    // and the init client's reader thread would keep that priority for the VM's
    // whole life, so they start at normal priority.
    NormalPriorityScope normal;
    UniqueFd console;
    PADDOCK_RETURN_IF_ERROR(PrepareHost(sb.get(), id, shape, &console));
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);
    UniqueFd qmp_ours, qmp_theirs, state;
    std::vector<int> extra;
    if (t) {
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
      qmp_ours.reset(sv[0]);
      qmp_theirs.reset(sv[1]);
      // An open of its own (its own offset) of the template's state.
      std::string self = fmt::format("/proc/self/fd/{}", t->state.get());
      state.reset(open(self.c_str(), O_RDONLY | O_CLOEXEC));
      if (!state.valid()) return ErrnoError("opening template " + t->hash + "'s device state");
      extra = {t->ram.get(), qmp_theirs.get(), state.get()};
    }
    PADDOCK_ASSIGN_OR_RETURN(Jail jail, MakeJail(sb->dir_ + "/root", shape.files, t != nullptr));
    auto child = SpawnQemu(Argv(id, shape, t ? Start::kClone : Start::kCold), jail, console.get(), theirs.get(),
                           extra, sb->cgroup_, shape.kvm, *sb->uid_);
    if (!child.ok()) return child.status().Prefix("starting QEMU");
    sb->qemu_ = std::move(child).value();
    theirs.reset();
    console.reset();
    qmp_theirs.reset();
    state.reset();

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.boot_timeout_ms);
    Status ready = t ? Restore(std::move(qmp_ours), deadline) : AwaitGuestReady(ours.get(), deadline);
    if (!ready.ok()) return StartFailure(sb.get(), ready);

    init::SetupConfig setup;
    setup.mode = init::Mode::kContainer;
    setup.rootfs = "/rootfs";  // inside the guest's switched root
    setup.hostname = "sandbox-" + id;
    setup.workdir = r.workdir;
    setup.tmp_bytes = shape.disk;
    setup.limits = r.limits;
    setup.seccomp_bpf = bpf;
    PADDOCK_RETURN_IF_ERROR(FreshIdentity(&setup));
    // The guest's kernel may be the sandbox's: every frame from it is bounded
    // and every call to it has a deadline (sandbox/init/init_client.h).
    InitClientOptions channel_opts;
    channel_opts.hostile_peer = true;
    auto client = InitClient::Start(std::move(ours), setup, MillisLeft(deadline), channel_opts);
    if (!client.ok()) return StartFailure(sb.get(), client.status());
    sb->client_ = std::move(client).value();
    sb->lease_ = r.lease;
    return std::unique_ptr<Sandbox>(std::move(sb));
  }

  // 32 bytes of the host's randomness for the guest's pool, a machine-id,
  // the host's clock.
  static Status FreshIdentity(init::SetupConfig* setup) {
    unsigned char bytes[48];
    size_t got = 0;
    while (got < sizeof bytes) {
      ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("getrandom");
      got += static_cast<size_t>(n);
    }
    setup->entropy.assign(reinterpret_cast<char*>(bytes), 32);
    static constexpr char kHex[] = "0123456789abcdef";
    setup->machine_id.clear();
    for (size_t i = 32; i < 48; ++i) {
      setup->machine_id += kHex[bytes[i] >> 4];
      setup->machine_id += kHex[bytes[i] & 15];
    }
    struct timespec now {};
    clock_gettime(CLOCK_REALTIME, &now);
    setup->realtime_ns = static_cast<uint64_t>(now.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(now.tv_nsec);
    return Status::Ok();
  }

  // A clone: its device state in (migrate-incoming with x-ignore-shared, as
  // the template was saved: the RAM is the memfd already mapped), then
  // running. A QEMU that cannot load the state exits; its monitor closes.
  static Status Restore(UniqueFd qmp_fd, std::chrono::steady_clock::time_point deadline) {
    using microvm::QmpClient;
    PADDOCK_ASSIGN_OR_RETURN(QmpClient qmp, QmpClient::Open(std::move(qmp_fd), deadline));
    PADDOCK_RETURN_IF_ERROR(qmp.Execute(kIgnoreShared, deadline).status());
    PADDOCK_RETURN_IF_ERROR(
        qmp.Execute(R"({"execute": "migrate-incoming", "arguments": {"uri": "fd:6"}})", deadline).status());
    // The template was stopped before it was saved, so its clone comes up paused.
    auto st = qmp.WaitFor(R"({"execute": "query-status"})",
                          {R"("status":"paused")", R"("status":"postmigrate")", R"("status":"running")"},
                          {R"("status":"internal-error")", R"("status":"guest-panicked")", R"("status":"shutdown")"},
                          deadline, std::chrono::milliseconds(2));
    if (!st.ok()) return st.status().Prefix("restoring the template's device state");
    PADDOCK_RETURN_IF_ERROR(qmp.Execute(R"({"execute": "cont"})", deadline).status());
    return Status::Ok();  // the monitor closes here: nothing more is asked of this QEMU
  }
  static constexpr const char* kIgnoreShared =
      R"({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x-ignore-shared", "state": true}]}})";

  // The template for `key`, built on first use (concurrent first uses wait
  // on one build). A build that failed is tried again after a minute; until
  // then its VMs boot cold.
  Result<std::shared_ptr<Template>> TemplateFor(const std::string& key, const Shape& shape) {
    std::shared_future<std::shared_ptr<const TemplateBuild>> f;
    std::optional<std::promise<std::shared_ptr<const TemplateBuild>>> mine;
    {
      std::lock_guard lock(templates_mu_);
      auto it = templates_.find(key);
      if (it != templates_.end() && it->second.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
        auto b = it->second.get();
        if (!b->t && std::chrono::steady_clock::now() - b->at > std::chrono::minutes(1)) {
          templates_.erase(it);
          it = templates_.end();
        }
      }
      if (it == templates_.end()) {
        mine.emplace();
        f = mine->get_future().share();
        templates_[key] = f;
      } else {
        f = it->second;
      }
    }
    if (mine) {
      auto b = std::make_shared<TemplateBuild>();
      auto t = BuildTemplate(shape);
      if (t.ok()) {
        b->t = std::move(t).value();
        ++counters_.template_builds;
      } else {
        b->error = t.status();
        spdlog::warn("microvm: a template could not be made; its VMs boot cold: {}", b->error.ToString());
      }
      b->at = std::chrono::steady_clock::now();
      mine->set_value(b);
    }
    auto b = f.get();
    if (!b->t) return b->error;
    return b->t;
  }

  // A clone of `t` could not be restored: the next create makes a new
  // template; if clones of that one fail too (a QEMU that cannot restore
  // what it saved), the shape boots cold for a minute before trying again.
  void DropTemplate(const std::string& key, const std::shared_ptr<Template>& t, const Status& why) {
    std::lock_guard lock(templates_mu_);
    auto it = templates_.find(key);
    if (it == templates_.end() || it->second.wait_for(std::chrono::seconds(0)) != std::future_status::ready ||
        it->second.get()->t != t)
      return;
    if (++restore_failures_[key] < 2) {
      templates_.erase(it);
      return;
    }
    restore_failures_.erase(key);
    auto failed = std::make_shared<TemplateBuild>();
    failed->error = why.Prefix("clones of this shape failed to restore twice in a row");
    failed->at = std::chrono::steady_clock::now();
    std::promise<std::shared_ptr<const TemplateBuild>> p;
    p.set_value(failed);
    it->second = p.get_future().share();
  }
  void CloneRestored(const std::string& key) {
    std::lock_guard lock(templates_mu_);
    restore_failures_.erase(key);
  }

  // Boots a VM whose RAM is a fresh memfd (shared), waits until its
  // paddock-init waits for its setup, stops it and saves its device state
  // (x-ignore-shared: the RAM stays in the memfd, only devices go to the
  // file), kills it and seals the memfd against writes.
  Result<std::shared_ptr<Template>> BuildTemplate(const Shape& shape) {
    auto t = std::make_shared<Template>();
    t->hash = fmt::format("{:016x}", std::hash<std::string>{}(TemplateKey(shape)));
    const std::string id = fmt::format("tpl-{}-{}", t->hash.substr(0, 8), ++template_seq_);
    const std::string root = env_.state_dir + "/microvm/templates";
    const std::string tdir = root + "/" + t->hash;
    // Root's only: a template's device state is the start of every clone.
    PADDOCK_RETURN_IF_ERROR(MkdirAll(tdir, 0700));
    chmod(root.c_str(), 0700);
    chmod(tdir.c_str(), 0700);
    const std::string tmp = fmt::format("{}/state.{}.tmp", tdir, id);
    UniqueFd out(open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out.valid()) return ErrnoError("creating " + tmp);
    struct RemoveTmp {
      std::string path;
      ~RemoveTmp() { unlink(path.c_str()); }
    } remove_tmp{tmp};

    t->ram.reset(static_cast<int>(syscall(SYS_memfd_create, ("paddock-template-" + t->hash).c_str(),
                                          MFD_CLOEXEC | MFD_ALLOW_SEALING)));
    if (!t->ram.valid()) return ErrnoError("memfd_create for a template's RAM");
    if (ftruncate(t->ram.get(), static_cast<off_t>(shape.guest_mib << 20)) != 0)
      return ErrnoError("sizing a template's RAM");

    auto sb = std::make_unique<MicrovmSandbox>(id, fmt::format("{}/vms/{}", env_.state_dir, id));
    NormalPriorityScope normal;
    UniqueFd console;
    PADDOCK_RETURN_IF_ERROR(PrepareHost(sb.get(), id, shape, &console));
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
    UniqueFd qmp_ours(sv[0]), qmp_theirs(sv[1]);
    PADDOCK_ASSIGN_OR_RETURN(Jail jail, MakeJail(sb->dir_ + "/root", shape.files, true));
    auto child = SpawnQemu(Argv(id, shape, Start::kTemplate), jail, console.get(), theirs.get(),
                           {t->ram.get(), qmp_theirs.get()}, sb->cgroup_, shape.kvm, *sb->uid_);
    if (!child.ok()) return child.status().Prefix("starting a template's QEMU");
    sb->qemu_ = std::move(child).value();
    theirs.reset();
    console.reset();
    qmp_theirs.reset();

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.boot_timeout_ms);
    Status st = AwaitGuestReady(ours.get(), deadline);
    if (!st.ok()) return StartFailure(sb.get(), st).Prefix("booting a template");
    {
      using microvm::QmpClient;
      const auto save_by = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      auto qmp = QmpClient::Open(std::move(qmp_ours), save_by);
      if (!qmp.ok()) return qmp.status().Prefix("a template's monitor");
      for (const char* cmd : {R"({"execute": "stop"})", kIgnoreShared}) {
        auto r = qmp->Execute(cmd, save_by);
        if (!r.ok()) return r.status().Prefix("saving a template");
      }
      auto r = qmp->Execute(R"({"execute": "getfd", "arguments": {"fdname": "state"}})", save_by, {out.get()});
      if (r.ok()) r = qmp->Execute(R"({"execute": "migrate", "arguments": {"uri": "fd:state"}})", save_by);
      if (r.ok())
        r = qmp->WaitFor(R"({"execute": "query-migrate"})", {R"("status":"completed")"},
                         {R"("status":"failed")", R"("status":"cancelled")"}, save_by, std::chrono::milliseconds(5));
      if (!r.ok()) return r.status().Prefix("saving a template's device state");
    }
    // QEMU gone (reaped), nothing maps the memfd writable: it can be sealed.
    PADDOCK_RETURN_IF_ERROR(sb->Destroy());
    if (fcntl(t->ram.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0)
      return ErrnoError("sealing a template's RAM");
    struct stat sst {};
    if (fstat(out.get(), &sst) != 0 || sst.st_size == 0)
      return Error(Code::kInternal, "a template's saved device state is empty");
    const std::string final_path = tdir + "/state";
    if (rename(tmp.c_str(), final_path.c_str()) != 0) return ErrnoError("renaming " + tmp);
    remove_tmp.path.clear();
    std::string self = fmt::format("/proc/self/fd/{}", out.get());
    t->state.reset(open(self.c_str(), O_RDONLY | O_CLOEXEC));
    if (!t->state.valid()) return ErrnoError("reopening a template's device state");
    spdlog::info("microvm: template {} saved ({} MiB of guest RAM, {} bytes of device state)", t->hash,
                 shape.guest_mib, sst.st_size);
    return t;
  }

  // QEMU's root: an empty directory with, bind-mounted read-only at their
  // host paths, only what QEMU reads: /usr (its binary, libraries and
  // firmware; /lib, /lib64, /bin as the host's links into it), ld.so.cache,
  // the kernel, the initramfs and the VM's layer disks; and a /dev of its own
  // (null, urandom, kvm). No /etc, /proc, /sys, /home, no other VM's files.
  // The directory and its mount points are made here; the mounts are made in
  // QEMU's mount namespace only (SpawnQemu), so the host never sees them.
  struct Jail {
    std::string root;
    std::vector<std::pair<std::string, std::string>> binds;  // host path, path under root
    std::string dev;                                          // root + "/dev"
    std::string null_node, urandom_node, kvm_node;
    // A template or clone only: a procfs of QEMU's own pid namespace with
    // nothing but its process (subset=pid), so that QEMU can open its RAM
    // memfd as /proc/self/fd/4 (QEMU 7.2's memory-backend-file takes a path
    // only). Empty: none.
    std::string proc;
  };
  Result<Jail> MakeJail(const std::string& root, const std::vector<std::string>& files, bool with_proc) {
    Jail j;
    j.root = root;
    PADDOCK_RETURN_IF_ERROR(MkdirAll(root, 0755));
    chmod(root.c_str(), 0755);
    for (const char* top : {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"}) {
      struct stat st {};
      if (lstat(top, &st) != 0) continue;
      std::string at = root + top;
      if (S_ISLNK(st.st_mode)) {
        std::error_code ec;
        fs::path target = fs::read_symlink(top, ec);
        if (ec) return Error(Code::kInternal, "reading the link {}: {}", top, ec.message());
        if (!fs::is_symlink(at, ec) && symlink(target.c_str(), at.c_str()) != 0)
          return ErrnoError("linking " + at);
      } else if (S_ISDIR(st.st_mode)) {
        PADDOCK_RETURN_IF_ERROR(MkdirAll(at, 0755));
        j.binds.emplace_back(top, at);
      }
    }
    std::vector<std::string> all = files;
    if (access("/etc/ld.so.cache", R_OK) == 0) all.push_back("/etc/ld.so.cache");
    for (const auto& f : all) {
      std::string at = root + f;
      PADDOCK_RETURN_IF_ERROR(MkdirAll(fs::path(at).parent_path().string(), 0755));
      int fd = open(at.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
      if (fd < 0) return ErrnoError("creating the mount point " + at);
      close(fd);
      j.binds.emplace_back(f, at);
    }
    j.dev = root + "/dev";
    PADDOCK_RETURN_IF_ERROR(MkdirAll(j.dev, 0755));
    j.null_node = j.dev + "/null";
    j.urandom_node = j.dev + "/urandom";
    j.kvm_node = j.dev + "/kvm";
    if (with_proc) {
      j.proc = root + "/proc";
      PADDOCK_RETURN_IF_ERROR(MkdirAll(j.proc, 0555));
    }
    return j;
  }

  // clone into new mount, pid, net, ipc and uts namespaces; the child waits
  // until it is in the VM's cgroup, makes the jail's mounts, a /dev holding
  // null, urandom and (KVM) a kvm node owned by its uid, pivots into the
  // jail and detaches the host's tree, drops to the VM's own uid and execs
  // QEMU with the console on stdout/stderr and the channel on fd 3. Only raw
  // system calls after the clone (the daemon is multithreaded): every
  // string is made before it.
  // `extra_fds` become fds 4, 5, ... in QEMU (a template's RAM, its monitor,
  // a clone's device state).
  Result<ChildProcess> SpawnQemu(const std::vector<std::string>& argv, const Jail& jail, int console_fd,
                                 int channel_fd, const std::vector<int>& extra_fds, const Cgroup& cgroup, bool kvm,
                                 uint32_t uid) {
    constexpr size_t kMaxExtra = 4;
    if (extra_fds.size() > kMaxExtra) return Error(Code::kInternal, "too many fds for QEMU");
    int extra_src[kMaxExtra] = {-1, -1, -1, -1};
    const size_t nextra = extra_fds.size();
    for (size_t i = 0; i < nextra; ++i) extra_src[i] = extra_fds[i];
    const char* proc_dir = jail.proc.empty() ? nullptr : jail.proc.c_str();
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const char* envp[] = {"PATH=/usr/bin:/bin", nullptr};
    struct stat kst {}, nst {}, ust {};
    if (kvm && stat(opts_.kvm_device.c_str(), &kst) != 0) return ErrnoError("KVM device " + opts_.kvm_device);
    if (stat("/dev/null", &nst) != 0 || stat("/dev/urandom", &ust) != 0) return ErrnoError("/dev/null");
    std::vector<const char*> bind_src, bind_dst;
    for (const auto& [src, dst] : jail.binds) {
      bind_src.push_back(src.c_str());
      bind_dst.push_back(dst.c_str());
    }
    const size_t nbinds = bind_src.size();
    const char* root = jail.root.c_str();
    const char* dev = jail.dev.c_str();
    const char* null_node = jail.null_node.c_str();
    const char* urandom_node = jail.urandom_node.c_str();
    const char* kvm_node = jail.kvm_node.c_str();
    int sync[2];
    if (pipe2(sync, O_CLOEXEC) != 0) return ErrnoError("pipe");
    int pidfd = -1;
    const uint32_t gid = uid;
    long pid = syscall(SYS_clone,
                       CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                           CLONE_PIDFD | SIGCHLD,
                       nullptr, &pidfd, nullptr, nullptr);
    if (pid == 0) {
      char go;
      if (read(sync[0], &go, 1) != 1) _exit(110);
      if (setsid() < 0) _exit(110);  // no controlling terminal of the daemon's
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(111);
      // The jail's root must be a mount point to pivot into.
      if (mount(root, root, nullptr, MS_BIND, nullptr) != 0) _exit(112);
      for (size_t i = 0; i < nbinds; ++i) {
        if (mount(bind_src[i], bind_dst[i], nullptr, MS_BIND | MS_REC, nullptr) != 0 ||
            mount(nullptr, bind_dst[i], nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
                  nullptr) != 0)
          _exit(113);
      }
      if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=16k") != 0) _exit(114);
      // Only QEMU's own process (this pid namespace's) and no kernel-wide files.
      if (proc_dir && mount("proc", proc_dir, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid") != 0) _exit(122);
      // chmod: mknod's mode went through the daemon's umask.
      if (mknod(null_node, S_IFCHR | 0666, nst.st_rdev) != 0 || mknod(urandom_node, S_IFCHR | 0666, ust.st_rdev) != 0 ||
          chmod(null_node, 0666) != 0 || chmod(urandom_node, 0666) != 0)
        _exit(115);
      if (kvm) {
        if (mknod(kvm_node, S_IFCHR | 0600, kst.st_rdev) != 0) _exit(116);
        if (chown(kvm_node, uid, gid) != 0) _exit(116);
      }
      // The jail's root becomes "/"; the host's tree, stacked under it, is detached.
      if (chdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0) _exit(117);
      if (umount2(".", MNT_DETACH) != 0 || chdir("/") != 0) _exit(118);
      if (syscall(SYS_setgroups, 0, nullptr) != 0 || syscall(SYS_setresgid, gid, gid, gid) != 0 ||
          syscall(SYS_setresuid, uid, uid, uid) != 0)
        _exit(119);
      prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
      // Every fd QEMU gets is first moved above the numbers it gets them
      // at, so that no dup2 below overwrites one still to be moved.
      int con = fcntl(console_fd, F_DUPFD_CLOEXEC, 16), chan = fcntl(channel_fd, F_DUPFD_CLOEXEC, 16);
      int moved[kMaxExtra];
      for (size_t i = 0; i < nextra; ++i)
        if ((moved[i] = fcntl(extra_src[i], F_DUPFD_CLOEXEC, 16)) < 0) _exit(120);
      int devnull = open("/dev/null", O_RDWR);
      if (con < 0 || chan < 0 || devnull < 0 || dup2(devnull, 0) < 0 || dup2(con, 1) < 0 || dup2(con, 2) < 0 ||
          dup2(chan, 3) < 0)
        _exit(120);
      for (size_t i = 0; i < nextra; ++i)
        if (dup2(moved[i], static_cast<int>(4 + i)) < 0) _exit(120);
      syscall(SYS_close_range, static_cast<unsigned>(4 + nextra), ~0U, 0);
      execve(args[0], args.data(), const_cast<char**>(envp));
      _exit(121);
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
        info.si_code == CLD_EXITED && info.si_status >= 110 && info.si_status <= 122) {
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
  std::shared_ptr<UidPool> uids_;
  std::mutex templates_mu_;
  std::map<std::string, std::shared_future<std::shared_ptr<const TemplateBuild>>> templates_;
  std::map<std::string, int> restore_failures_;  // consecutive, per key
  std::atomic<uint64_t> template_seq_{0};
 public:
  MicrovmCounters counters_;
 private:
  WarmPool pool_;  // last: stopped before the rest goes
};

}  // namespace

MicrovmOptions MicrovmOptionsFromEnvironment() {
  MicrovmOptions o;
  if (const char* a = std::getenv("PADDOCK_MICROVM_ACCEL"); a && *a) o.accel = a;
  if (const char* k = std::getenv("PADDOCK_MICROVM_KERNEL"); k && *k) o.boot.kernel = k;
  if (const char* f = std::getenv("PADDOCK_MICROVM_FS"); f && *f) o.boot.fs_type = f;
  if (const char* t = std::getenv("PADDOCK_MICROVM_ALLOW_TCG"); t && std::string_view(t) == "1") o.allow_tcg = true;
  if (const char* t = std::getenv("PADDOCK_MICROVM_TEMPLATES"); t && *t)
    o.templates = !(std::string_view(t) == "off" || std::string_view(t) == "0");
  return o;
}

Status CheckAccelerator(const MicrovmOptions& o) {
  if (o.accel != "kvm" && o.accel != "tcg")
    return Error(Code::kInvalidArgument, "unknown microvm accelerator '{}' (kvm or tcg)", o.accel);
  if (access(o.qemu.c_str(), X_OK) != 0)
    return Error(Code::kFailedPrecondition,
                 "QEMU is not installed: {} is missing (install qemu-system-x86: scripts/install-deps.sh)",
                 o.qemu);
  if (o.accel == "tcg") {
    if (!o.allow_tcg)
      return Error(Code::kFailedPrecondition,
                   "microVMs under TCG (QEMU's emulator) are refused: TCG is not a security boundary "
                   "(QEMU's security policy covers only KVM guests); start paddockd with "
                   "--allow-tcg-microvms to accept them anyway (docs/security.md)");
    return Status::Ok();
  }
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
                 "run on a host with VT-x/AMD-V, or use TCG (--microvm-accel tcg --allow-tcg-microvms: "
                 "emulation, slow, and not a security boundary)",
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
    // Not an ifstream: a process that exits while it is read fails the read
    // with ESRCH, which libstdc++'s filebuf throws (and aborted a starting daemon).
    auto read = ReadSmallFile((e.path() / "cmdline").string());
    if (!read.ok()) continue;
    const std::string& cmd = *read;
    if (cmd.find("qemu-system") == std::string::npos) continue;
    if (cmd.find(needle) == std::string::npos) continue;
    out.push_back(std::stoi(name));
  }
  return out;
}

const MicrovmCounters* MicrovmCountersOf(const Substrate* substrate) {
  auto* m = dynamic_cast<const MicrovmSubstrate*>(substrate);
  return m ? &m->counters_ : nullptr;
}

std::unique_ptr<Substrate> MakeMicrovmSubstrate(const SubstrateEnv& env, MicrovmOptions options) {
  return std::make_unique<MicrovmSubstrate>(env, std::move(options));
}

}  // namespace paddock
