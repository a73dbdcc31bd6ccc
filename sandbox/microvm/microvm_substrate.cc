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

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "sandbox/image_source.h"
#include "sandbox/init/init_client.h"
#include "sandbox/init/init_served_sandbox.h"
#include "sandbox/limits_json.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/process.h"
#include "sandbox/linux/seccomp_profile.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/console_log.h"
#include "sandbox/microvm/guest_control.h"
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

struct Recipe {
  std::vector<std::string> disks;  // layer disk images, bottom first
  std::shared_ptr<void> lease;
  Limits limits;
  std::string workdir;
  // What the sandbox was made from (ResolvedImage::id and how it was asked
  // for): a paused VM resumed by a later daemon resolves it again.
  std::string image;
  bool host_dir_image_ok = false, local_client = false;
};

// A paused VM's recipe and exec environment (<paused dir>/vm.json): what a
// later daemon rebuilds it from (the image is resolved again).
std::string EncodeVm(const Recipe& r, const std::map<std::string, std::string>& env) {
  nlohmann::json j = {
      {"image", r.image},
      {"host_dir_image_ok", r.host_dir_image_ok},
      {"local_client", r.local_client},
      {"limits", r.limits},
      {"workdir", r.workdir},
      {"env", env},
  };
  return j.dump();
}

Result<std::pair<Recipe, std::map<std::string, std::string>>> DecodeVm(const std::string& text) {
  try {
    auto j = nlohmann::json::parse(text);
    Recipe r;
    r.image = j.at("image").get<std::string>();
    r.host_dir_image_ok = j.at("host_dir_image_ok").get<bool>();
    r.local_client = j.at("local_client").get<bool>();
    r.limits = j.at("limits").get<Limits>();
    r.workdir = j.at("workdir").get<std::string>();
    return std::pair{std::move(r), j.at("env").get<std::map<std::string, std::string>>()};
  } catch (const std::exception& e) {
    return Error(Code::kInternal, "unreadable vm.json: {}", e.what());
  }
}

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  return true;
}

// Removes a directory tree when it goes out of scope, unless `path` was cleared.
struct TreeRemover {
  std::string path;
  ~TreeRemover() {
    if (path.empty()) return;
    Status ignored = RemoveTree(path);
    (void)ignored;
  }
};

// A memory snapshot's name: a directory name under <state>/microvm/snapshots.
bool ValidSnapshotName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

// The longest a VM's save (stop, its memory and devices to a file) may take.
constexpr std::chrono::seconds kSaveBudget{120};

class MicrovmSubstrate;

class MicrovmSandbox final : public InitServedSandbox {
 public:
  MicrovmSandbox(std::string id, std::string dir) : InitServedSandbox(std::move(id)), dir_(std::move(dir)) {}
  ~MicrovmSandbox() override {
    Status ignored = Destroy();
    (void)ignored;
  }
  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override {
    std::shared_lock calls(calls_mu_);
    PADDOCK_RETURN_IF_ERROR(Usable());
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
    std::shared_lock calls(calls_mu_);
    PADDOCK_RETURN_IF_ERROR(Usable());
    Status st = InitServedSandbox::WriteFile(path, content, mode, make_parents);
    return st.ok() ? st : WhyGone(st);
  }
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override {
    std::shared_lock calls(calls_mu_);
    PADDOCK_RETURN_IF_ERROR(Usable());
    auto r = InitServedSandbox::ReadFile(path, max_bytes);
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override {
    std::shared_lock calls(calls_mu_);
    PADDOCK_RETURN_IF_ERROR(Usable());
    auto r = InitServedSandbox::ListDir(path);
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  Result<FileInfo> Stat(const std::string& path) override {
    std::shared_lock calls(calls_mu_);
    PADDOCK_RETURN_IF_ERROR(Usable());
    auto r = InitServedSandbox::Stat(path);
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  bool Alive() const override { return paused_ || InitServedSandbox::Alive(); }
  bool Paused() const override { return paused_; }

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
    std::shared_lock calls(calls_mu_);
    PADDOCK_RETURN_IF_ERROR(Usable());
    auto r = client_->GuestUsage();
    if (!r.ok()) return WhyGone(r.status());
    return r;
  }
  // A memory snapshot (memory, processes and files as they are now; the VM
  // runs on), named `name`: `microvm-snapshot:NAME` creates copies of it.
  Result<SnapshotResult> Snapshot(const std::string& name) override;
  Result<PauseResult> Pause(const std::string& record) override;
  Status Resume() override;
  Result<std::vector<std::unique_ptr<Sandbox>>> Fork(const std::vector<std::string>& ids) override;

  Status Destroy() override {
    std::lock_guard lock(destroy_mu_);
    Status first = StopVm();
    if (!paused_dir_.empty()) {
      Status st = RemoveTree(paused_dir_);
      if (st.ok()) paused_dir_.clear();
      else if (first.ok()) first = st;
    }
    paused_ = false;
    dir_.clear();
    return first;
  }
  Status Release() override {
    {
      std::lock_guard lock(destroy_mu_);
      if (paused_) {
        paused_dir_.clear();  // kept on disk for the next daemon
        dir_.clear();
        return Status::Ok();
      }
    }
    return Destroy();
  }

  // Stops what runs on the host for this VM (QEMU, its channel, monitor,
  // console, egress, cgroup, uid, VM directory); a paused VM's saved state
  // stays. Under destroy_mu_ (or before the VM is shared).
  Status StopVm() {
    if (client_) client_->Close();
    qemu_.KillAndReap();  // the guest and everything in it die with QEMU
    client_.reset();      // its egress tunnel too: every connection closes
    qmp_.reset();
    ctl_.reset();
    if (console_) console_->Stop();
    egress_.reset();
    Status first = cgroup_.Destroy();
    if (uids_ && uid_) {
      uids_->Give(*uid_);
      uid_.reset();
    }
    if (!dir_.empty()) {
      Status st = RemoveTree(dir_);
      if (!st.ok() && first.ok()) first = st;
    }
    return first;
  }

  // Why a call cannot go to the guest now; Ok when it can.
  Status Usable() const {
    if (paused_)
      return Error(Code::kFailedPrecondition, "sandbox {} is paused; resume it first (paddock sandbox resume {})",
                   id_, id_);
    if (!client_) return Destroyed();
    return Status::Ok();
  }
  // Why this VM cannot be saved (paused or forked) now; Ok when it can.
  Status Saveable() const {
    if (!client_ || !client_->alive() || !qmp_ || !owner_ || !recipe_)
      return Error(Code::kUnavailable, "sandbox {}'s VM is not running", id_);
    if (egress_)
      return Error(Code::kFailedPrecondition,
                   "sandbox {} has a network allow list: its connections travel over the VM's channel and "
                   "would not survive, so it cannot be paused or forked",
                   id_);
    return Status::Ok();
  }
  // What a save (pause, fork, snapshot) holds while it runs: the sandbox's
  // calls exclusively (waiting kQuiesceWait for those in flight; `what`
  // names the save in the refusal), then destroy_mu_. Refused for a paused
  // VM ("sandbox ID " + `when_paused`) and for one that cannot be saved.
  struct SaveLocks {
    std::unique_lock<std::shared_timed_mutex> calls;
    std::unique_lock<std::mutex> destroy;
  };
  Result<SaveLocks> LockForSave(const char* what, const char* when_paused);

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
  // QEMU's monitor (saving the VM: pause, fork) and the guest's control
  // port (reseeding a restored VM), both held for the VM's life.
  std::optional<microvm::QmpClient> qmp_;
  UniqueFd ctl_;
  std::shared_ptr<const Recipe> recipe_;  // what a resume or a fork rebuilds from
  MicrovmSubstrate* owner_ = nullptr;     // outlives its sandboxes (the manager's shutdown)
  std::atomic<bool> paused_{false};
  std::string paused_dir_;  // <state>/microvm/paused/<id> while paused
  // Calls hold it shared; a pause, resume or fork exclusively (the guest is
  // saved between calls, never with one in flight).
  std::shared_timed_mutex calls_mu_;
  std::mutex destroy_mu_;
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
    if (spec.image.rfind(kMemorySnapshotPrefix, 0) == 0) return CreateFromSnapshot(id, spec);
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
    recipe->image = image.id;
    recipe->host_dir_image_ok = spec.host_dir_image_ok;
    recipe->local_client = spec.local_client;
    std::string key = fmt::format("{}\n{}\n{}\n{}\n{}\n{}", image.id, recipe->workdir,
                                  spec.limits.cpu_millicores, spec.limits.memory_bytes,
                                  spec.limits.pids, spec.limits.disk_bytes);
    std::unique_ptr<Sandbox> sb = pool_.Take(key);
    if (!sb) {
      PADDOCK_ASSIGN_OR_RETURN(sb, Build(id, recipe));
    }
    pool_.Want(key, [this, recipe] { return Build(NewSandboxId(), recipe); });
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

  // The paused VMs an earlier daemon of this state dir left: each
  // <state>/microvm/paused/<id> holding its stream, its recipe (vm.json) and
  // its manager's record. A directory missing one of them is a pause that
  // did not finish (its VM ran on and died with that daemon): removed.
  std::vector<RecoveredSandbox> Recover() override {
    std::vector<RecoveredSandbox> out;
    // A memory snapshot an earlier daemon was writing or replacing when it
    // stopped (SnapshotVm's temporary names): never a whole snapshot.
    std::error_code snap_ec;
    for (const auto& e : fs::directory_iterator(SnapshotsDir(), snap_ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind(".new-", 0) != 0 && n.rfind(".old-", 0) != 0) continue;
      Status ignored = RemoveTree(e.path().string());
      (void)ignored;
    }
    const std::string root = env_.state_dir + "/microvm/paused";
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec)) {
      const std::string dir = e.path().string(), id = e.path().filename().string();
      auto meta = ReadSmallFile(dir + "/vm.json");
      auto record = ReadSmallFile(dir + "/record");
      auto recipe = meta.ok() ? DecodeVm(*meta) : Result<std::pair<Recipe, std::map<std::string, std::string>>>(
                                                      meta.status());
      if (!ValidId(id) || !record.ok() || !recipe.ok() || access((dir + "/stream").c_str(), R_OK) != 0) {
        spdlog::warn("microvm: {} is not a whole paused VM ({}); removing it", dir,
                     !recipe.ok() ? recipe.status().ToString() : "stream or record missing");
        Status ignored = RemoveTree(dir);
        (void)ignored;
        continue;
      }
      auto sb = std::make_unique<MicrovmSandbox>(id, fmt::format("{}/vms/{}", env_.state_dir, id));
      sb->owner_ = this;
      sb->recipe_ = std::make_shared<const Recipe>(std::move(recipe->first));
      sb->env_ = std::move(recipe->second);
      sb->paused_ = true;
      sb->paused_dir_ = dir;
      out.push_back({std::move(sb), std::move(record).value()});
    }
    return out;
  }

  // The halves of Pause, Resume and Fork that need the substrate; each is
  // called with the sandbox's calls_mu_ (exclusive) and destroy_mu_ held.
  Result<PauseResult> PauseVm(MicrovmSandbox* sb, const std::string& record) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string root = env_.state_dir + "/microvm/paused", dir = root + "/" + sb->id();
    // Root's only: a paused VM's memory is the sandbox's.
    PADDOCK_RETURN_IF_ERROR(MkdirAll(dir, 0700));
    chmod(root.c_str(), 0700);
    chmod(dir.c_str(), 0700);
    TreeRemover remove_dir{dir};  // on failure, where the VM runs on as it was
    const std::string tmp = dir + "/stream.tmp";
    PADDOCK_ASSIGN_OR_RETURN(uint64_t bytes, SaveTo(sb, tmp, "pausing", false, false));
    Status w = WriteSmallFile(dir + "/vm.json", EncodeVm(*sb->recipe_, sb->env_));
    if (w.ok()) w = WriteSmallFile(dir + "/record", record);
    // The stream's name is the commit: a directory without it is not a paused VM.
    if (w.ok() && rename(tmp.c_str(), (dir + "/stream").c_str()) != 0) w = ErrnoError("renaming " + tmp);
    if (!w.ok()) {
      Continue(sb, "a failed pause");
      return w;
    }
    remove_dir.path.clear();
    const auto t_saved = std::chrono::steady_clock::now();
    Status released = sb->StopVm();
    if (!released.ok())
      spdlog::warn("microvm {}: releasing the paused VM's host resources: {}", sb->id(), released.ToString());
    sb->paused_ = true;
    sb->paused_dir_ = dir;
    ++counters_.pauses;
    auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
    spdlog::info("microvm {}: paused ({} bytes of memory and device state) in {} ms ({} ms saving, {} ms releasing)",
                 sb->id(), bytes, ms(std::chrono::steady_clock::now() - t0), ms(t_saved - t0),
                 ms(std::chrono::steady_clock::now() - t_saved));
    return PauseResult{bytes, dir};
  }

  // A recipe read back from a vm.json: its image resolved again and its
  // layers held (their disks), as at its create.
  Status Rehold(Recipe* r) {
    auto image = ResolverOrDefault(env_.images).Resolve(r->image, {r->host_dir_image_ok, r->local_client});
    if (!image.ok()) return image.status();
    r->disks.clear();
    for (const auto& layer : image->layer_dirs) {
      PADDOCK_ASSIGN_OR_RETURN(std::string disk, disks_.Get(layer));
      r->disks.push_back(disk);
    }
    r->lease = image->lease;
    return Status::Ok();
  }

  Status ResumeVm(MicrovmSandbox* sb) {
    // A VM paused by an earlier daemon: its image resolved again (and its
    // layers held) first.
    if (!sb->recipe_->lease) {
      Recipe r = *sb->recipe_;
      PADDOCK_RETURN_IF_ERROR(Rehold(&r).Prefix("the paused sandbox's image"));
      sb->recipe_ = std::make_shared<const Recipe>(std::move(r));
    }
    PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets assets, Assets());
    Shape shape = ShapeOf(*sb->recipe_, assets);
    const std::string stream = sb->paused_dir_ + "/stream";
    UniqueFd in(open(stream.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) return ErrnoError("opening " + stream);
    sb->paused_ = false;
    Status st = StartVm(sb, *sb->recipe_, shape, From{nullptr, in.get()});
    if (!st.ok()) {
      Status ignored = sb->StopVm();
      (void)ignored;
      sb->paused_ = true;
      return st.Prefix("resuming");
    }
    Status removed = RemoveTree(sb->paused_dir_);
    if (!removed.ok()) spdlog::warn("microvm {}: removing its paused state: {}", sb->id(), removed.ToString());
    sb->paused_dir_.clear();
    ++counters_.resumes;
    return Status::Ok();
  }

  // A running VM's memory and device state saved into a new file `path`
  // (0600; fsynced when `durable`). The VM runs on from there when
  // `run_on` (a fork, a snapshot) and after any failure; a pause's stays
  // stopped. The file's size; errors prefixed with `what`.
  Result<uint64_t> SaveTo(MicrovmSandbox* sb, const std::string& path, const char* what, bool durable, bool run_on) {
    UniqueFd out(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out.valid()) return ErrnoError("creating " + path);
    auto saved = [&]() -> Result<uint64_t> {
      PADDOCK_RETURN_IF_ERROR(SaveStream(*sb->qmp_, out.get(), std::chrono::steady_clock::now() + kSaveBudget));
      struct stat st {};
      if (fstat(out.get(), &st) != 0 || st.st_size == 0)
        return Error(Code::kInternal, "the VM's saved state is empty");
      if (durable && fsync(out.get()) != 0) return ErrnoError("syncing the saved state");
      return static_cast<uint64_t>(st.st_size);
    }();
    if (run_on || !saved.ok()) Continue(sb, what);
    if (!saved.ok()) return saved.status().Prefix(what);
    return saved;
  }
  // A VM stopped by a save runs on (if its QEMU is gone, its next call says so).
  static void Continue(MicrovmSandbox* sb, const char* after) {
    auto cont = sb->qmp_->Execute(R"({"execute": "cont"})", std::chrono::steady_clock::now() + kSaveBudget);
    if (!cont.ok()) spdlog::warn("microvm {}: continuing after {}: {}", sb->id(), after, cont.status().ToString());
  }

  Result<std::vector<std::unique_ptr<Sandbox>>> ForkVm(MicrovmSandbox* parent, const std::vector<std::string>& ids) {
    const std::string root = env_.state_dir + "/microvm/forks";
    const std::string dir = root + "/" + parent->id() + "-" + NewSandboxId();
    PADDOCK_RETURN_IF_ERROR(MkdirAll(dir, 0700));
    chmod(root.c_str(), 0700);
    TreeRemover remove_dir{dir};
    PADDOCK_RETURN_IF_ERROR(SaveTo(parent, dir + "/stream", "forking", false, true).status());
    UniqueFd stream(open((dir + "/stream").c_str(), O_RDONLY | O_CLOEXEC));
    if (!stream.valid()) return ErrnoError("opening " + dir + "/stream");
    PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets assets, Assets());
    Shape shape = ShapeOf(*parent->recipe_, assets);
    // Every copy restores at once (each reads the stream through its own
    // open and loads its own copy of the pages: docs/microvm.md says why the
    // copies do not share them).
    std::vector<std::optional<Result<std::unique_ptr<MicrovmSandbox>>>> built(ids.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < ids.size(); ++i)
      threads.emplace_back([&, i] { built[i] = BuildVm(ids[i], parent->recipe_, shape, From{nullptr, stream.get()}); });
    for (auto& t : threads) t.join();
    std::vector<std::unique_ptr<Sandbox>> out;
    for (auto& b : built) {
      if (!b->ok()) return b->status().Prefix("forking");  // the copies made so far are destroyed
      (**b)->env_ = parent->env_;
      out.push_back(std::move(*b).value());
    }
    counters_.forks += out.size();
    return out;
  }

  // Where memory snapshots live: <state>/microvm/snapshots/NAME.
  std::string SnapshotsDir() const { return env_.state_dir + "/microvm/snapshots"; }

  std::vector<std::pair<std::string, uint64_t>> MemorySnapshots() override {
    std::vector<std::pair<std::string, uint64_t>> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(SnapshotsDir(), ec)) {
      const std::string name = e.path().filename().string();
      struct stat st {};
      if (!ValidSnapshotName(name) || stat((e.path().string() + "/stream").c_str(), &st) != 0) continue;
      out.emplace_back(name, static_cast<uint64_t>(st.st_size));
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  Result<uint64_t> RemoveMemorySnapshot(const std::string& name) override {
    if (!ValidSnapshotName(name))
      return Error(Code::kInvalidArgument, "'{}' does not name a microVM memory snapshot", name.substr(0, 200));
    const std::string dir = SnapshotsDir() + "/" + name;
    struct stat st {};
    if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      return Error(Code::kNotFound, "no microVM memory snapshot named '{}' on this daemon", name);
    uint64_t bytes = 0;
    if (stat((dir + "/stream").c_str(), &st) == 0) bytes = static_cast<uint64_t>(st.st_size);
    // Renamed away first: a create that opens it from now on finds nothing;
    // one that has it open keeps reading it.
    const std::string gone = SnapshotsDir() + "/.old-" + NewSandboxId();
    if (rename(dir.c_str(), gone.c_str()) != 0) return ErrnoError("removing memory snapshot " + name);
    PADDOCK_RETURN_IF_ERROR(RemoveTree(gone));
    spdlog::info("microvm: removed memory snapshot {} ({} bytes)", name, bytes);
    return bytes;
  }

  // <state>/microvm/snapshots/NAME: the stream (memory and device state) and
  // vm.json (recipe and env), root's only. A snapshot of a name taken again
  // replaces the earlier one (as a tag moves); VMs restoring from the earlier
  // one meanwhile read it through their open of it.
  Result<SnapshotResult> SnapshotVm(MicrovmSandbox* sb, std::string name) {
    if (name.empty()) name = "vm-" + sb->id() + "-" + NewSandboxId();
    if (!ValidSnapshotName(name))
      return Error(Code::kInvalidArgument,
                   "a microVM snapshot's name is 1 to 128 letters, digits, '-', '_' or '.', not starting with "
                   "'.' or '-' (got '{}')",
                   name.substr(0, 200));
    const auto t0 = std::chrono::steady_clock::now();
    const std::string root = SnapshotsDir(), dir = root + "/" + name;
    const std::string tmp = root + "/.new-" + NewSandboxId();
    PADDOCK_RETURN_IF_ERROR(MkdirAll(tmp, 0700));
    chmod(root.c_str(), 0700);
    TreeRemover remove_tmp{tmp};
    PADDOCK_ASSIGN_OR_RETURN(uint64_t bytes, SaveTo(sb, tmp + "/stream", "taking a memory snapshot", true, true));
    PADDOCK_RETURN_IF_ERROR(WriteSmallFile(tmp + "/vm.json", EncodeVm(*sb->recipe_, sb->env_)));
    // In place of an earlier snapshot of the name: moved aside, then removed.
    const std::string old = root + "/.old-" + NewSandboxId();
    bool replaced = rename(dir.c_str(), old.c_str()) == 0;
    if (rename(tmp.c_str(), dir.c_str()) != 0) {
      Status err = ErrnoError("keeping the memory snapshot as " + dir);
      if (replaced) rename(old.c_str(), dir.c_str());
      return err;
    }
    remove_tmp.path.clear();
    if (replaced) (void)TreeRemover{old};  // removed at once
    ++counters_.snapshots;
    spdlog::info("microvm {}: memory snapshot {} ({} bytes) in {} ms", sb->id(), name, bytes,
                 std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
    return SnapshotResult{kMemorySnapshotPrefix + name, name, "", bytes};
  }

  // A VM restored from memory snapshot NAME: the snapshot's image, limits,
  // workdir and env, its processes and files as they were when it was taken,
  // a fresh identity (entropy, clock: the reseed of every restore).
  Result<std::unique_ptr<Sandbox>> CreateFromSnapshot(const std::string& id, const SandboxSpec& spec) {
    const std::string name = spec.image.substr(std::strlen(kMemorySnapshotPrefix));
    if (!ValidSnapshotName(name))
      return Error(Code::kInvalidArgument, "'{}' does not name a microVM memory snapshot", spec.image.substr(0, 200));
    if (!spec.network_allow.empty())
      return Error(Code::kInvalidArgument,
                   "a VM created from a memory snapshot cannot have a network allow list (its processes and "
                   "connections are the snapshot's)");
    if (!spec.env.empty() || !spec.workdir.empty())
      return Error(Code::kInvalidArgument,
                   "a VM created from a memory snapshot runs with the snapshot's env and workdir; leave them unset");
    const std::string dir = SnapshotsDir() + "/" + name;
    auto meta = ReadSmallFile(dir + "/vm.json");
    if (!meta.ok()) {
      if (meta.status().code() == Code::kNotFound || access(dir.c_str(), F_OK) != 0)
        return Error(Code::kNotFound, "no microVM memory snapshot named '{}' on this daemon", name);
      return meta.status().Prefix("reading memory snapshot " + name);
    }
    PADDOCK_ASSIGN_OR_RETURN(auto decoded, DecodeVm(*meta));
    Recipe r = std::move(decoded.first);
    if (!(spec.limits == Limits{}) && !(spec.limits == r.limits))
      return Error(Code::kInvalidArgument,
                   "a VM created from memory snapshot {} has the snapshot's limits; leave them unset or give the "
                   "same ones",
                   name);
    PADDOCK_RETURN_IF_ERROR(Rehold(&r).Prefix("memory snapshot " + name + "'s image"));
    UniqueFd in(open((dir + "/stream").c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) return ErrnoError("opening memory snapshot " + name);
    PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets assets, Assets());
    auto recipe = std::make_shared<const Recipe>(std::move(r));
    Shape shape = ShapeOf(*recipe, assets);
    auto vm = BuildVm(id, recipe, shape, From{nullptr, in.get()});
    if (!vm.ok()) return vm.status().Prefix("restoring memory snapshot " + name);
    (*vm)->env_ = std::move(decoded.second);
    ++counters_.snapshot_creates;
    return std::unique_ptr<Sandbox>(std::move(vm).value());
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
  enum class Start { kCold, kTemplate, kClone, kStream };

  // A template: a VM booted once, its sandbox set up (the setup a cold
  // boot gets, with a placeholder identity) and one command run (so that its
  // shell and libraries are in the guest's page cache), then saved. Its RAM
  // is a memfd sealed against writes (every clone maps it private, copy on
  // write); its device state a file under <state>/microvm/templates/<hash>/
  // state, held open. A clone is reseeded and its channel taken as it is, as
  // a VM restored from a stream, and gets its own hostname and machine-id.
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
        // The channel: a virtio-serial port on our end of a socketpair; the
        // guest's control port (its PID 1's: reseeding a restored VM) on
        // another. Port 0 is reserved for a console: 3 ports.
        "-chardev", "socket,id=ch,fd=3",
        "-chardev", "socket,id=ctl,fd=4",
        "-device", "virtio-serial-device,max_ports=3",
        "-device", "virtserialport,chardev=ch,name=paddock",
        "-device", "virtserialport,chardev=ctl,name=paddock-ctl",
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

  // The full command line. Every VM's RAM is the memory backend "mem" (so
  // that a VM saved from any start can be restored into any other) and its
  // monitor (QMP) is held by the daemon for the VM's life. fds: 3 the
  // channel, 4 the control port, then:
  // - cold and restored from a stream: 5 the monitor; a restored VM waits
  //   for its saved state (-incoming defer), which arrives on 6;
  // - template and clone: RAM in a file-backed memory backend on 5 (the
  //   template's memfd, reached as /proc/self/fd/5 in QEMU's jail): shared
  //   while the template runs (its writes land in the memfd), private in a
  //   clone (copy on write, the memfd's pages shared by every clone until
  //   written); 6 the monitor; a clone's device state arrives on 7.
  std::vector<std::string> Argv(const std::string& id, const Shape& s, Start start) {
    std::vector<std::string> argv = s.argv;
    // microvm: no PCI, no firmware option ROMs. ACPI stays on: it is how
    // Debian's kernel (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) finds the
    // virtio-mmio devices. The RTC stays on: without it the kernel spends
    // seconds polling a missing CMOS clock (docs/microvm.md).
    std::string machine = "microvm,x-option-roms=off,memory-backend=mem";
    std::vector<std::string> extra = {"-name", "paddock-vm-" + id, "-object"};
    const bool from_memfd = start == Start::kTemplate || start == Start::kClone;
    if (from_memfd)
      extra.push_back(fmt::format("memory-backend-file,id=mem,size={}M,mem-path=/proc/self/fd/5,share={}",
                                  s.guest_mib, start == Start::kTemplate ? "on" : "off"));
    else
      extra.push_back(fmt::format("memory-backend-ram,id=mem,size={}M", s.guest_mib));
    extra.insert(extra.end(), {"-chardev", fmt::format("socket,id=qmp,fd={}", from_memfd ? 6 : 5), "-mon",
                               "chardev=qmp,mode=control"});
    if (start == Start::kClone || start == Start::kStream) extra.insert(extra.end(), {"-incoming", "defer"});
    argv.insert(argv.begin() + 1, {"-M", machine});
    argv.insert(argv.begin() + 1, extra.begin(), extra.end());
    return argv;
  }

  // What a template is made of: its QEMU and command line, and what its
  // sandbox's setup (done before it is saved) takes from the spec beyond the
  // shape.
  std::string TemplateKey(const Shape& s, const Recipe& r) {
    struct stat st {};
    stat(opts_.qemu.c_str(), &st);
    std::string key = fmt::format("qemu {} {} {}\n", opts_.qemu, st.st_size, st.st_mtim.tv_sec);
    for (const auto& a : s.argv) key += a + "\n";
    // Every field of the limits, in the form vm.json keeps them.
    key += fmt::format("workdir {}\nlimits {}\n", r.workdir, nlohmann::json(r.limits).dump());
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

  Result<std::unique_ptr<Sandbox>> Build(const std::string& id, const std::shared_ptr<const Recipe>& r) {
    PADDOCK_ASSIGN_OR_RETURN(microvm::BootAssets assets, Assets());
    Shape shape = ShapeOf(*r, assets);
    if (opts_.templates) {
      std::string key = TemplateKey(shape, *r);
      auto t = TemplateFor(key, shape, *r);
      if (t.ok()) {
        auto vm = BuildVm(id, r, shape, From{t->get(), -1});
        if (vm.ok()) {
          ++counters_.clones;
          CloneRestored(key);
          return std::unique_ptr<Sandbox>(std::move(vm).value());
        }
        // Never a failed create only because templating failed: this VM
        // boots cold, and the template is made anew for the next one.
        ++counters_.clone_failures;
        spdlog::warn("microvm {}: restoring a clone of template {} failed, booting cold instead: {}", id,
                     (*t)->hash, vm.status().ToString());
        DropTemplate(key, *t, vm.status());
      }
    }
    auto vm = BuildVm(id, r, shape, From{});
    if (!vm.ok()) return vm.status();
    ++counters_.cold_boots;
    return std::unique_ptr<Sandbox>(std::move(vm).value());
  }

  // Where a VM starts from: a cold boot (neither), template `t`'s clone, or
  // a saved stream on fd `stream` (a paused VM's, or a fork's parent's).
  struct From {
    const Template* t = nullptr;
    int stream = -1;
  };

  Result<std::unique_ptr<MicrovmSandbox>> BuildVm(const std::string& id, const std::shared_ptr<const Recipe>& r,
                                                  const Shape& shape, From from) {
    // Cleans up on any early return.
    auto sb = std::make_unique<MicrovmSandbox>(id, fmt::format("{}/vms/{}", env_.state_dir, id));
    sb->owner_ = this;
    sb->recipe_ = r;
    PADDOCK_RETURN_IF_ERROR(StartVm(sb.get(), *r, shape, from));
    return sb;
  }

  // Starts `sb`'s VM: booted cold, or restored from a template or a stream.
  // A booted VM gets its setup with a fresh identity (sandbox/init/protocol.h,
  // SetupConfig). A template's clone or a VM restored from a stream is past
  // its setup: its guest gets fresh entropy and the clock through its control
  // port (a booted template's clone its own hostname and machine-id too), and
  // the channel is taken as it is. On error the caller stops what was started
  // (sb->StopVm(), or sb's destructor).
  Status StartVm(MicrovmSandbox* sb, const Recipe& r, const Shape& shape, From from) {
    const std::string& id = sb->id();
    // A pooled VM is built on the pool's nice-19 filler thread; QEMU's vCPU threads
    // and the init client's reader thread would keep that priority for the VM's
    // whole life, so they start at normal priority.
    NormalPriorityScope normal;
    UniqueFd console;
    PADDOCK_RETURN_IF_ERROR(PrepareHost(sb, id, shape, &console));
    UniqueFd ours, theirs, ctl_ours, ctl_theirs, qmp_ours, qmp_theirs;
    for (auto [a, b] : {std::pair{&ours, &theirs}, std::pair{&ctl_ours, &ctl_theirs},
                        std::pair{&qmp_ours, &qmp_theirs}}) {
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
      a->reset(sv[0]);
      b->reset(sv[1]);
    }
    // The saved state: an open of its own (its own offset).
    UniqueFd state;
    std::vector<int> extra = {ctl_theirs.get()};
    Start start = Start::kCold;
    if (from.t || from.stream >= 0) {
      int src = from.t ? from.t->state.get() : from.stream;
      state.reset(open(fmt::format("/proc/self/fd/{}", src).c_str(), O_RDONLY | O_CLOEXEC));
      if (!state.valid()) return ErrnoError("opening the saved state to restore " + id + " from");
    }
    if (from.t) {
      start = Start::kClone;
      extra.insert(extra.end(), {from.t->ram.get(), qmp_theirs.get(), state.get()});
    } else if (from.stream >= 0) {
      start = Start::kStream;
      extra.insert(extra.end(), {qmp_theirs.get(), state.get()});
    } else {
      extra.push_back(qmp_theirs.get());
    }
    PADDOCK_ASSIGN_OR_RETURN(Jail jail, MakeJail(sb->dir_ + "/root", shape.files, from.t != nullptr));
    auto child = SpawnQemu(Argv(id, shape, start), jail, console.get(), theirs.get(), extra, sb->cgroup_, shape.kvm,
                           *sb->uid_);
    if (!child.ok()) return child.status().Prefix("starting QEMU");
    sb->qemu_ = std::move(child).value();
    theirs.reset();
    ctl_theirs.reset();
    console.reset();
    qmp_theirs.reset();
    state.reset();

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.boot_timeout_ms);
    if (start == Start::kCold) {
      Status ready = AwaitGuestReady(ours.get(), deadline);
      if (!ready.ok()) return StartFailure(sb, ready);
      auto qmp = microvm::QmpClient::Open(std::move(qmp_ours), deadline);
      if (!qmp.ok()) return StartFailure(sb, qmp.status().Prefix("QEMU's monitor"));
      sb->qmp_.emplace(std::move(qmp).value());
    } else {
      auto qmp = Restore(std::move(qmp_ours), deadline, start == Start::kClone);
      if (!qmp.ok()) return StartFailure(sb, qmp.status());
      sb->qmp_.emplace(std::move(qmp).value());
    }
    sb->ctl_ = std::move(ctl_ours);
    // The guest's kernel may be the sandbox's: every frame from it is bounded
    // and every call to it has a deadline (sandbox/init/init_client.h).
    InitClientOptions channel_opts;
    channel_opts.hostile_peer = true;
    if (start != Start::kCold) {
      // A clone gets its hostname and machine-id with its entropy and clock.
      Status st = Reseed(sb->ctl_.get(), deadline, from.t ? "sandbox-" + id : std::string());
      if (!st.ok()) return StartFailure(sb, st.Prefix("reseeding the restored guest"));
      sb->client_ = InitClient::Attach(std::move(ours), channel_opts);
    } else {
      PADDOCK_ASSIGN_OR_RETURN(init::SetupConfig setup, SetupFor("sandbox-" + id, r, shape));
      auto client = InitClient::Start(std::move(ours), setup, MillisLeft(deadline), channel_opts);
      if (!client.ok()) return StartFailure(sb, client.status());
      sb->client_ = std::move(client).value();
    }
    sb->lease_ = r.lease;
    return Status::Ok();
  }

  // The setup of a booted VM's sandbox (a cold boot's or a template's), with
  // a fresh identity.
  static Result<init::SetupConfig> SetupFor(const std::string& hostname, const Recipe& r, const Shape& shape) {
    PADDOCK_ASSIGN_OR_RETURN(std::string bpf, DefaultSeccompBpf());
    init::SetupConfig setup;
    setup.mode = init::Mode::kContainer;
    setup.rootfs = "/rootfs";  // inside the guest's switched root
    setup.hostname = hostname;
    setup.workdir = r.workdir;
    setup.tmp_bytes = shape.disk;
    setup.limits = r.limits;
    setup.seccomp_bpf = bpf;
    PADDOCK_RETURN_IF_ERROR(FreshIdentity(&setup));
    return setup;
  }

  // Fresh entropy and the host's clock for a restored guest, and with a
  // `hostname` (a template's clone) a fresh machine-id and that hostname too
  // (guest_control.h).
  static Status Reseed(int ctl, std::chrono::steady_clock::time_point deadline, const std::string& hostname) {
    init::SetupConfig fresh;
    PADDOCK_RETURN_IF_ERROR(FreshIdentity(&fresh));
    if (hostname.empty()) return microvm::ReseedGuest(ctl, fresh.entropy, fresh.realtime_ns, deadline);
    return microvm::ReseedGuestAs(ctl, fresh.entropy, fresh.realtime_ns, hostname, fresh.machine_id, deadline);
  }

  // Stops a running VM and writes its RAM and device state to `out` as a
  // migration stream (every page, zero pages as flags; a clone's RAM is
  // private, so nothing of its template's memfd is left out). The VM stays
  // stopped (postmigrate): the caller continues it (a fork's parent) or
  // kills it (a pause).
  static Status SaveStream(microvm::QmpClient& qmp, int out, std::chrono::steady_clock::time_point deadline) {
    for (const char* cmd : {R"({"execute": "stop"})", kKeepShared, kNoBandwidthLimit}) {
      auto r = qmp.Execute(cmd, deadline);
      if (!r.ok()) return r.status().Prefix("stopping the VM");
    }
    auto r = qmp.Execute(R"({"execute": "getfd", "arguments": {"fdname": "state"}})", deadline, {out});
    if (r.ok()) r = qmp.Execute(R"({"execute": "migrate", "arguments": {"uri": "fd:state"}})", deadline);
    if (r.ok())
      r = qmp.WaitFor(R"({"execute": "query-migrate"})", {R"("status":"completed")"},
                      {R"("status":"failed")", R"("status":"cancelled")"}, deadline, std::chrono::milliseconds(2));
    if (!r.ok()) return r.status().Prefix("saving the VM's memory and device state");
    return Status::Ok();
  }
  // QEMU paces a migration at 32 MiB/s by default (a live migration's link);
  // a save to a local file of a stopped VM is not paced.
  static constexpr const char* kNoBandwidthLimit =
      R"({"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 1099511627776}})";
  static constexpr const char* kKeepShared =
      R"({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x-ignore-shared", "state": false}]}})";

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

  // A clone (its device state in, migrate-incoming with x-ignore-shared as
  // the template was saved: the RAM is the memfd already mapped) or a VM
  // restored from a stream (RAM and devices in), then running. A QEMU that
  // cannot load the state exits; its monitor closes. Returns the monitor.
  static Result<microvm::QmpClient> Restore(UniqueFd qmp_fd, std::chrono::steady_clock::time_point deadline,
                                            bool clone) {
    using microvm::QmpClient;
    PADDOCK_ASSIGN_OR_RETURN(QmpClient qmp, QmpClient::Open(std::move(qmp_fd), deadline));
    if (clone) PADDOCK_RETURN_IF_ERROR(qmp.Execute(kIgnoreShared, deadline).status());
    PADDOCK_RETURN_IF_ERROR(qmp.Execute(clone ? R"({"execute": "migrate-incoming", "arguments": {"uri": "fd:7"}})"
                                              : R"({"execute": "migrate-incoming", "arguments": {"uri": "fd:6"}})",
                                        deadline)
                                .status());
    // Every saved VM was stopped first, so the restored one comes up paused.
    auto st = qmp.WaitFor(R"({"execute": "query-status"})",
                          {R"("status":"paused")", R"("status":"postmigrate")", R"("status":"running")"},
                          {R"("status":"internal-error")", R"("status":"guest-panicked")", R"("status":"shutdown")"},
                          deadline, std::chrono::milliseconds(2));
    if (!st.ok()) return st.status().Prefix(clone ? "restoring the template's device state" : "restoring the saved VM");
    PADDOCK_RETURN_IF_ERROR(qmp.Execute(R"({"execute": "cont"})", deadline).status());
    return qmp;
  }
  static constexpr const char* kIgnoreShared =
      R"({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x-ignore-shared", "state": true}]}})";

  // The template for `key`, built on first use (concurrent first uses wait
  // on one build). A build that failed is tried again after a minute; until
  // then its VMs boot cold.
  Result<std::shared_ptr<Template>> TemplateFor(const std::string& key, const Shape& shape, const Recipe& r) {
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
      template_used_[key] = std::chrono::steady_clock::now();
      if (mine) EvictTemplatesBeyondCap(key);
    }
    if (mine) {
      auto b = std::make_shared<TemplateBuild>();
      auto t = BuildTemplate(shape, r);
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

  // Past opts_.max_templates, the ready templates used longest ago (never
  // `keep`, nor one still being built) are forgotten: their memfd goes with
  // the last clone that maps it, their state file now. Under templates_mu_.
  void EvictTemplatesBeyondCap(const std::string& keep) {
    while (templates_.size() > std::max<size_t>(opts_.max_templates, 1)) {
      auto oldest = templates_.end();
      for (auto it = templates_.begin(); it != templates_.end(); ++it) {
        if (it->first == keep || it->second.wait_for(std::chrono::seconds(0)) != std::future_status::ready) continue;
        if (oldest == templates_.end() || template_used_[it->first] < template_used_[oldest->first]) oldest = it;
      }
      if (oldest == templates_.end()) return;  // all being built: over the cap until they are done
      if (auto t = oldest->second.get()->t) {
        const std::string tdir = env_.state_dir + "/microvm/templates/" + t->hash;
        unlink((tdir + "/state").c_str());
        rmdir(tdir.c_str());
        spdlog::info("microvm: template {} evicted (more than {} templates)", t->hash, opts_.max_templates);
        ++counters_.template_evictions;
      }
      template_used_.erase(oldest->first);
      restore_failures_.erase(oldest->first);
      templates_.erase(oldest);
    }
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
  // paddock-init waits for its setup, sets its sandbox up as `r`'s (a
  // placeholder hostname and machine-id: each clone gets its own), runs one
  // command in it, then stops it and saves its device state (x-ignore-shared:
  // the RAM stays in the memfd, only devices go to the file), kills it and
  // seals the memfd against writes. The state is kept as
  // <state>/microvm/templates/<hash>/state.
  Result<std::shared_ptr<Template>> BuildTemplate(const Shape& shape, const Recipe& r) {
    const auto t0 = std::chrono::steady_clock::now();
    auto t = std::make_shared<Template>();
    t->hash = fmt::format("{:016x}", std::hash<std::string>{}(TemplateKey(shape, r)));
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
    // Its control port: nothing is asked of it; each clone gets its own.
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
    UniqueFd ctl_ours(sv[0]), ctl_theirs(sv[1]);
    PADDOCK_ASSIGN_OR_RETURN(Jail jail, MakeJail(sb->dir_ + "/root", shape.files, true));
    auto child = SpawnQemu(Argv(id, shape, Start::kTemplate), jail, console.get(), theirs.get(),
                           {ctl_theirs.get(), t->ram.get(), qmp_theirs.get()}, sb->cgroup_, shape.kvm, *sb->uid_);
    if (!child.ok()) return child.status().Prefix("starting a template's QEMU");
    sb->qemu_ = std::move(child).value();
    theirs.reset();
    console.reset();
    qmp_theirs.reset();
    ctl_theirs.reset();

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.boot_timeout_ms);
    Status st = AwaitGuestReady(ours.get(), deadline);
    if (!st.ok()) return StartFailure(sb.get(), st).Prefix("booting a template");
    // Set up as every clone's sandbox will be, so that a clone skips the
    // mounts, pivot and seccomp; one command run, so that the shell and its
    // libraries come from the guest's page cache, not its disks.
    PADDOCK_ASSIGN_OR_RETURN(init::SetupConfig setup, SetupFor("sandbox-template", r, shape));
    InitClientOptions channel_opts;
    channel_opts.hostile_peer = true;
    auto client = InitClient::Start(std::move(ours), setup, MillisLeft(deadline), channel_opts);
    if (!client.ok()) return StartFailure(sb.get(), client.status()).Prefix("setting a template up");
    sb->client_ = std::move(client).value();
    ExecRequest warm;
    warm.shell = "/bin/true";
    warm.timeout_ms = static_cast<uint32_t>(std::max(1000, MillisLeft(deadline)));
    auto ran = sb->client_->Exec(warm, nullptr);
    if (!ran.ok()) return StartFailure(sb.get(), ran.status()).Prefix("a template's first command");
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
    struct stat rst {};
    fstat(t->ram.get(), &rst);
    spdlog::info("microvm: template {} set up and saved in {} ms ({} MiB of guest RAM, {} MiB of it resident, {} "
                 "bytes of device state)",
                 t->hash,
                 std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count(),
                 shape.guest_mib, (static_cast<uint64_t>(rst.st_blocks) * 512) >> 20, sst.st_size);
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
    // memfd as /proc/self/fd/5 (QEMU 7.2's memory-backend-file takes a path
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
  // `extra_fds` become fds 4, 5, ... in QEMU (the control port, then as
  // Argv says: a template's RAM, the monitor, a saved state).
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
      // No transparent huge pages for the guest's RAM (QEMU madvises it
      // MADV_HUGEPAGE): a restore from a saved stream touches scattered
      // pages, and each first touch of a 2 MiB region allocated and zeroed a
      // huge page, which made 8 forks' restores 4x slower in kernel time and
      // charged 2 MiB for a page the guest wrote (docs/microvm.md).
      prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
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
  std::map<std::string, std::chrono::steady_clock::time_point> template_used_;  // last TemplateFor, per key
  std::atomic<uint64_t> template_seq_{0};
 public:
  MicrovmCounters counters_;
 private:
  WarmPool pool_;  // last: stopped before the rest goes
};

// A pause, resume, fork or snapshot waits this long for the sandbox's calls in flight
// to end.
constexpr std::chrono::seconds kQuiesceWait{10};

Result<MicrovmSandbox::SaveLocks> MicrovmSandbox::LockForSave(const char* what, const char* when_paused) {
  SaveLocks held{std::unique_lock(calls_mu_, std::defer_lock), std::unique_lock(destroy_mu_, std::defer_lock)};
  if (!held.calls.try_lock_for(kQuiesceWait))
    return Error(Code::kFailedPrecondition, "calls were still running in sandbox {} after {} s; {} it between calls",
                 id_, kQuiesceWait.count(), what);
  held.destroy.lock();
  if (paused_) return Error(Code::kFailedPrecondition, "sandbox {} {}", id_, when_paused);
  PADDOCK_RETURN_IF_ERROR(Saveable());
  return held;
}

Result<PauseResult> MicrovmSandbox::Pause(const std::string& record) {
  PADDOCK_ASSIGN_OR_RETURN(SaveLocks held, LockForSave("pause", "is already paused"));
  return owner_->PauseVm(this, record);
}

Status MicrovmSandbox::Resume() {
  std::unique_lock calls(calls_mu_, std::defer_lock);
  if (!calls.try_lock_for(kQuiesceWait))
    return Error(Code::kFailedPrecondition, "sandbox {} is busy (a pause, fork or snapshot in progress)", id_);
  std::lock_guard lock(destroy_mu_);
  if (!paused_) return Error(Code::kFailedPrecondition, "sandbox {} is not paused", id_);
  if (!owner_) return Error(Code::kInternal, "sandbox {} has no substrate to resume it", id_);
  return owner_->ResumeVm(this);
}

Result<std::vector<std::unique_ptr<Sandbox>>> MicrovmSandbox::Fork(const std::vector<std::string>& ids) {
  PADDOCK_ASSIGN_OR_RETURN(SaveLocks held, LockForSave("fork", "is paused; resume it before forking it"));
  return owner_->ForkVm(this, ids);
}

Result<SnapshotResult> MicrovmSandbox::Snapshot(const std::string& name) {
  PADDOCK_ASSIGN_OR_RETURN(SaveLocks held, LockForSave("snapshot", "is paused; resume it before a snapshot"));
  return owner_->SnapshotVm(this, name);
}

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
