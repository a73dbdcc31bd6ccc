#include "sandbox/function/function_substrate.h"

#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <mutex>

#include <spdlog/spdlog.h>

#include "sandbox/function/stub_exec.h"
#include "sandbox/image_source.h"
#include "sandbox/image_view.h"
#include "sandbox/init/init_client.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/mounts.h"
#include "sandbox/linux/process.h"
#include "sandbox/linux/seccomp_profile.h"
#include "sandbox/linux/spawner.h"
#include "sandbox/linux/userns.h"
#include "sandbox/network/egress_proxy.h"

namespace paddock {

namespace {

constexpr int kSetupTimeoutMs = 10'000;
constexpr const char* kDefaultWorkdir = "/tmp";  // the per-exec scratch directory
// A zygote no sandbox uses is kept this long for the next create.
constexpr auto kZygoteIdle = std::chrono::seconds(60);
// At most this many stubs are held for sandboxes' next execs (each is a
// process with its own namespaces); past it a sandbox's exec takes a stub
// from its zygote each time.
constexpr int kMaxHeldStubs = 128;

// A process that has entered the sandbox's namespaces and root and forks
// one exec at a time on request. Shared by every function sandbox with the
// same image and limits.
class Zygote {
 public:
  ~Zygote() {
    Status st = Destroy();
    if (!st.ok()) spdlog::warn("removing function zygote {}: {}", dir_, st.ToString());
  }
  Status Destroy() {
    std::lock_guard lock(mu_);
    egress_.reset();  // its connections first: they serve this zygote's execs
    init_.KillAndReap();
    client_.reset();
    Status first;
    auto note = [&first](Status st) {
      if (!st.ok() && first.ok()) first = st;
    };
    note(cgroup_.Destroy());
    if (!rootfs_.empty()) {
      note(Unmount(rootfs_));
      rootfs_.clear();
    }
    if (!dir_.empty() && first.ok()) note(RemoveTree(dir_));
    if (views_) {
      for (const auto& d : image_.layer_dirs) views_->Release(d);
      views_ = nullptr;
    }
    image_.lease.reset();
    return first;
  }

  std::mutex mu_;
  std::string dir_;
  std::string rootfs_;
  Cgroup cgroup_;
  ChildProcess init_;
  std::unique_ptr<InitClient> client_;
  std::unique_ptr<EgressProxy> egress_;  // a sandbox's own zygote, with an allow list only
  ResolvedImage image_;          // holds the layers' lease while the zygote lives
  ImageViews* views_ = nullptr;  // holding a view of each of image_.layer_dirs
  std::chrono::steady_clock::time_point last_used_ = std::chrono::steady_clock::now();
  std::shared_ptr<int> layer_ref_;  // the substrate's mount-point layer is in use
};

// A function sandbox's own cgroup: the zygote is shared, the accounting is
// not. Every exec's processes join it before the command runs (the zygote
// writes them into these cgroup.procs files, which the daemon opened), so
// memory, pids and cpu limits and usage are per sandbox.
struct SandboxCgroup {
  Cgroup cgroup;
  std::vector<UniqueFd> procs;
  std::vector<int> procs_fds() const {
    std::vector<int> fds;
    for (const auto& fd : procs) fds.push_back(fd.get());
    return fds;
  }
};

class FunctionSandbox final : public Sandbox {
 public:
  FunctionSandbox(std::string id, std::shared_ptr<Zygote> zygote, std::shared_ptr<SandboxCgroup> cgroup,
                  std::shared_ptr<std::atomic<int>> held_stubs, const SandboxSpec& spec)
      : id_(std::move(id)), zygote_(std::move(zygote)), cgroup_(std::move(cgroup)),
        held_stubs_(std::move(held_stubs)), env_(spec.env),
        workdir_(spec.workdir.empty() ? kDefaultWorkdir : spec.workdir) {}
  ~FunctionSandbox() override {
    Status ignored = Destroy();
    (void)ignored;
  }

  const std::string& id() const override { return id_; }

  // The exec runs on a stub the zygote moved into this sandbox's cgroups and
  // handed over (sandbox/function/stub_exec.h). The sandbox keeps that stub
  // for its next exec: a stub serves one exec after another, leaving nothing
  // of one to the next, so later execs have no zygote round trip and no new
  // process or pid namespace on their path. An exec that finds the held stub
  // busy (execs at once) takes one of its own.
  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override {
    auto [z, cg] = parts();
    if (!z) return Destroyed();
    ExecRequest r = req;
    for (const auto& [k, v] : env_) r.env.emplace(k, v);  // the request's env wins
    if (r.cwd.empty()) r.cwd = workdir_;
    std::vector<UniqueFd> stub;
    {
      std::lock_guard lock(mu_);
      stub = std::move(held_);
      held_.clear();
    }
    const bool held = !stub.empty();
    if (held) {
      held_stubs_->fetch_sub(1);
    } else {
      PADDOCK_ASSIGN_OR_RETURN(stub, z->client_->TakeStub(cg->procs_fds()));
    }
    uint64_t ooms_before = cg->cgroup.OomKills();
    bool reusable = false;
    auto ran = RunOnStub(stub, r, on_output, kFunctionIds.host_base, &reusable);
    if (!ran.ok() && held && ran.status().code() == Code::kUnavailable) {
      // The held stub died while it waited (it never took the request): once
      // more on a fresh one.
      PADDOCK_ASSIGN_OR_RETURN(stub, z->client_->TakeStub(cg->procs_fds()));
      ran = RunOnStub(stub, r, on_output, kFunctionIds.host_base, &reusable);
    }
    Keep(stub, reusable);
    PADDOCK_ASSIGN_OR_RETURN(ExecResult res, std::move(ran));
    if (res.signal == SIGKILL && !res.timed_out && cg->cgroup.OomKills() > ooms_before)
      res.oom_killed = true;
    return res;
  }
  Status WriteFile(const std::string& path, std::string_view, uint32_t, bool) override {
    return Error(Code::kFailedPrecondition,
                 "cannot write {}: function sandboxes are read-only and stateless (each exec gets "
                 "a fresh scratch /tmp); pass data as stdin, or use a container sandbox",
                 path);
  }
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override {
    auto z = zygote();
    if (!z) return Destroyed();
    return z->client_->ReadFile(Absolute(path), max_bytes);
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override {
    auto z = zygote();
    if (!z) return Destroyed();
    return z->client_->ListDir(Absolute(path));
  }
  Result<FileInfo> Stat(const std::string& path) override {
    auto z = zygote();
    if (!z) return Destroyed();
    return z->client_->Stat(Absolute(path));
  }
  Result<Usage> GetUsage() override {
    auto [z, cg] = parts();
    if (!z) return Destroyed();
    return cg->cgroup.ReadUsage();  // this sandbox's execs only
  }
  bool Alive() const override {
    std::lock_guard lock(mu_);
    return zygote_ && zygote_->client_ && zygote_->client_->alive();
  }
  Result<SnapshotResult> Snapshot(const std::string&) override {
    return Error(Code::kFailedPrecondition,
                 "sandbox {} is a function sandbox: it has no state to snapshot (its root is "
                 "read-only and each exec gets a fresh scratch /tmp); snapshot a container sandbox",
                 id_);
  }
  Status Destroy() override {
    std::lock_guard lock(mu_);
    if (zygote_) zygote_->last_used_ = std::chrono::steady_clock::now();
    zygote_.reset();  // the zygote stays warm for the next sandbox of its kind
    if (!held_.empty()) {
      DiscardStub(held_);
      held_stubs_->fetch_sub(1);
    }
    // Whatever an exec still runs is killed with the cgroup (off this path).
    if (cgroup_) cgroup_->cgroup.DestroyInBackground();
    cgroup_.reset();
    return Status::Ok();
  }

 private:
  std::shared_ptr<Zygote> zygote() const {
    std::lock_guard lock(mu_);
    return zygote_;
  }
  std::pair<std::shared_ptr<Zygote>, std::shared_ptr<SandboxCgroup>> parts() const {
    std::lock_guard lock(mu_);
    return {zygote_, cgroup_};
  }
  Status Destroyed() const { return Error(Code::kUnavailable, "sandbox is destroyed"); }
  // Holds a stub that served an exec for the next one, unless one is held
  // already (execs ran at once), the sandbox is gone, or every function
  // sandbox together holds kMaxHeldStubs.
  void Keep(std::vector<UniqueFd>& stub, bool reusable) {
    if (stub.empty()) return;
    if (reusable && held_stubs_->fetch_add(1) < kMaxHeldStubs) {
      std::lock_guard lock(mu_);
      if (held_.empty() && zygote_) {
        held_ = std::move(stub);
        return;
      }
    }
    if (reusable) held_stubs_->fetch_sub(1);
    DiscardStub(stub);
  }
  std::string Absolute(const std::string& path) const {
    if (!path.empty() && path[0] == '/') return path;
    return workdir_ + "/" + path;
  }

  const std::string id_;
  mutable std::mutex mu_;
  std::shared_ptr<Zygote> zygote_;
  std::shared_ptr<SandboxCgroup> cgroup_;
  std::vector<UniqueFd> held_;  // the stub of the last exec, kept for the next
  std::shared_ptr<std::atomic<int>> held_stubs_;  // stubs held by all function sandboxes
  std::map<std::string, std::string> env_;
  std::string workdir_;
};

class FunctionSubstrate final : public Substrate {
 public:
  explicit FunctionSubstrate(const SubstrateEnv& env)
      : env_(env), views_(env.state_dir + "/views/function", kFunctionIds), spawner_(env.init_path) {}
  ~FunctionSubstrate() override { Shutdown(); }

  std::string name() const override { return "function"; }

  Result<std::unique_ptr<Sandbox>> Create(const std::string& id, const SandboxSpec& spec) override {
    if (!spec.workdir.empty() && spec.workdir[0] != '/')
      return Error(Code::kInvalidArgument, "workdir '{}' must be an absolute path", spec.workdir);
    PADDOCK_ASSIGN_OR_RETURN(std::vector<EgressRule> egress, ParseEgressRules(spec.network_allow));
    PADDOCK_ASSIGN_OR_RETURN(ResolvedImage image, ResolverOrDefault(env_.images).Resolve(spec.image, {spec.host_dir_image_ok, spec.local_client}));
    SandboxSpec eff = spec;
    ApplyImageDefaults(image, &eff.env, &eff.workdir);  // the spec's values win
    if (!egress.empty()) {
      // Egress needs a network namespace where the daemon's proxy listens:
      // this sandbox gets a zygote of its own (never shared, never kept warm),
      // whose execs share its namespace instead of one each.
      PADDOCK_ASSIGN_OR_RETURN(std::shared_ptr<SandboxCgroup> cg, MakeSandboxCgroup(id, spec.limits));
      auto z = StartZygote(image, spec.limits, /*network_per_exec=*/false);
      if (z.ok()) {
        auto proxy = EgressProxy::Start((*z)->init_.pid(), std::move(egress));
        if (proxy.ok()) {
          (*z)->egress_ = std::move(proxy).value();
          for (const auto& [k, v] : EgressProxy::ProxyEnv()) eff.env.emplace(k, v);
          return std::unique_ptr<Sandbox>(std::make_unique<FunctionSandbox>(id, std::move(z).value(), std::move(cg), held_stubs_, eff));
        }
        z = proxy.status().Prefix("starting the sandbox's egress proxy");
      }
      cg->cgroup.DestroyInBackground();
      return z.status();
    }
    // The sandbox's own cgroup (mkdirs in every v1 hierarchy): made on
    // another thread when a new zygote starts (mostly waiting for it), else
    // below, outside the zygote's lock.
    std::future<Result<std::shared_ptr<SandboxCgroup>>> cg_meanwhile;
    std::shared_ptr<Zygote> zygote;
    {
      std::unique_lock lock(mu_);
      SweepIdle();
      // Keyed by the resolved image id: two names of one image share a zygote.
      auto key = std::make_pair(image.id, spec.limits);
      auto it = zygotes_.find(key);
      if (it == zygotes_.end() || !it->second->client_ || !it->second->client_->alive()) {
        if (it != zygotes_.end()) zygotes_.erase(it);
        cg_meanwhile = std::async(std::launch::async, [&] { return MakeSandboxCgroup(id, spec.limits); });
        auto z = StartZygote(image, spec.limits);
        if (!z.ok()) {
          auto made = cg_meanwhile.get();
          if (made.ok()) (*made)->cgroup.DestroyInBackground();
          return z.status();
        }
        it = zygotes_.emplace(key, std::move(z).value()).first;  // kept for the next create whatever follows
      }
      it->second->last_used_ = std::chrono::steady_clock::now();
      zygote = it->second;
    }
    PADDOCK_ASSIGN_OR_RETURN(std::shared_ptr<SandboxCgroup> cg,
                             cg_meanwhile.valid() ? cg_meanwhile.get() : MakeSandboxCgroup(id, spec.limits));
    return std::unique_ptr<Sandbox>(std::make_unique<FunctionSandbox>(id, std::move(zygote), std::move(cg), held_stubs_, eff));
  }

  void Shutdown() override {
    std::lock_guard lock(mu_);
    zygotes_.clear();
    {
      std::lock_guard layer(layer_mu_);
      // Only when no zygote (a sandbox's own, with egress, included) still
      // stacks it; else the next daemon reuses it.
      if (!mount_point_layer_.empty() && layer_users_.use_count() == 1) {
        (void)RemoveTree(mount_point_layer_);
        mount_point_layer_.clear();
      }
    }
    views_.ReleaseAll();
    RemoveCgroupRootIfEmpty(env_.cgroup_root());
  }

 private:
  Result<std::shared_ptr<SandboxCgroup>> MakeSandboxCgroup(const std::string& id, const Limits& limits) {
    auto cg = std::make_shared<SandboxCgroup>();
    PADDOCK_ASSIGN_OR_RETURN(cg->cgroup, Cgroup::Create(env_.cgroup_root(), "fs-" + id, limits));
    auto procs = cg->cgroup.OpenProcsFiles();
    if (!procs.ok()) {
      cg->cgroup.DestroyInBackground();
      return procs.status();
    }
    cg->procs = std::move(procs).value();
    return cg;
  }

  // The lowest layer of every zygote's root: empty mount points the sandbox
  // needs even where the image lacks them. Read-only under the overlay, so
  // one directory serves every zygote; made once.
  Result<std::string> MountPointLayer() {
    std::lock_guard lock(layer_mu_);
    if (mount_point_layer_.empty()) {
      const std::string dir = env_.state_dir + "/functions/mount-points";
      for (const char* d : {"proc", "dev", "tmp"}) PADDOCK_RETURN_IF_ERROR(MkdirAll(dir + "/" + d));
      mount_point_layer_ = dir;
    }
    return mount_point_layer_;
  }

  // Drops zygotes that no sandbox has used for a while.
  void SweepIdle() {
    auto now = std::chrono::steady_clock::now();
    for (auto it = zygotes_.begin(); it != zygotes_.end();) {
      if (it->second.use_count() == 1 && now - it->second->last_used_ > kZygoteIdle)
        it = zygotes_.erase(it);
      else
        ++it;
    }
  }

  Result<std::shared_ptr<Zygote>> StartZygote(const ResolvedImage& image, const Limits& limits,
                                              bool network_per_exec = true) {
    PADDOCK_RETURN_IF_ERROR(CheckSearchableByOthers(env_.state_dir));
    PADDOCK_ASSIGN_OR_RETURN(std::string bpf, DefaultSeccompBpf());
    std::string name = fmt::format("fn-{}-{}", getpid(), next_zygote_++);
    auto z = std::make_shared<Zygote>();
    z->image_ = image;
    // The root is a read-only merge of the layers: one idmapped view per
    // layer, stacked top first under the stub.
    PADDOCK_ASSIGN_OR_RETURN(std::vector<std::string> views, views_.AcquireAll(image.layer_dirs));
    z->views_ = &views_;
    std::vector<std::string> lowers;
    lowers.reserve(views.size() + 1);
    z->dir_ = fmt::format("{}/functions/{}", env_.state_dir, name);
    // The zygote's cgroup is made on another thread while the root is
    // mounted and the zygote cloned (joined before the zygote joins it).
    auto cg = std::async(std::launch::async, [&] { return Cgroup::Create(env_.cgroup_root(), name, limits); });
    UniqueFd ours;
    Status started = [&]() -> Status {
      // The mount-point layer under the image; the whole root is read-only.
      PADDOCK_ASSIGN_OR_RETURN(std::string mount_points, MountPointLayer());
      const std::string rootfs = z->dir_ + "/rootfs";
      PADDOCK_RETURN_IF_ERROR(MkdirAll(rootfs));
      lowers.push_back(mount_points);
      z->layer_ref_ = layer_users_;
      lowers.insert(lowers.end(), views.rbegin(), views.rend());
      PADDOCK_RETURN_IF_ERROR(MountOverlay(lowers, "", "", rootfs));
      z->rootfs_ = rootfs;
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
      ours.reset(sv[0]);
      UniqueFd theirs(sv[1]);
      // Cloned from the spawner (already paddock-init: a clone, not a clone
      // plus an exec); it waits for its setup frame while we write its id
      // maps and join it to its cgroup.
      const unsigned long flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS |
                                  CLONE_NEWIPC;
      auto child = spawner_.Spawn(flags, theirs.get());
      if (!child.ok()) return child.status().Prefix("starting function zygote");
      z->init_ = std::move(child).value();
      return Status::Ok();
    }();
    auto made = cg.get();
    if (made.ok()) z->cgroup_ = std::move(made).value();  // removed with z if anything below fails
    PADDOCK_RETURN_IF_ERROR(started);
    if (!made.ok()) return made.status();
    PADDOCK_RETURN_IF_ERROR(WriteIdMaps(z->init_.pid(), kFunctionIds));
    PADDOCK_RETURN_IF_ERROR(z->cgroup_.AddProcess(z->init_.pid()).Prefix("joining cgroup"));

    init::SetupConfig setup;
    setup.mode = init::Mode::kFunction;
    setup.rootfs = z->rootfs_;
    setup.hostname = "function";
    setup.workdir = kDefaultWorkdir;
    setup.tmp_bytes = limits.disk_bytes ? limits.disk_bytes : kDefaultDiskBytes;
    setup.limits = limits;
    setup.seccomp_bpf = bpf;
    setup.network_per_exec = network_per_exec;
    auto client = InitClient::Start(std::move(ours), setup, kSetupTimeoutMs);
    if (!client.ok()) return client.status().Prefix("starting function zygote");
    z->client_ = std::move(client).value();
    // The zygote has pivoted into its own copy of the root; drop ours (see
    // the container substrate for why).
    PADDOCK_RETURN_IF_ERROR(Unmount(z->rootfs_));
    z->rootfs_.clear();
    spdlog::debug("function zygote {} ready for {}", name, image.id);
    return z;
  }

  SubstrateEnv env_;
  ImageViews views_;
  Spawner spawner_;
  std::mutex mu_;
  std::map<std::pair<std::string, Limits>, std::shared_ptr<Zygote>> zygotes_;
  std::atomic<uint64_t> next_zygote_{0};
  std::mutex layer_mu_;
  std::string mount_point_layer_;  // see MountPointLayer
  std::shared_ptr<int> layer_users_ = std::make_shared<int>(0);  // one copy per zygote stacking it
  std::shared_ptr<std::atomic<int>> held_stubs_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace

std::unique_ptr<Substrate> MakeFunctionSubstrate(const SubstrateEnv& env) {
  return std::make_unique<FunctionSubstrate>(env);
}

}  // namespace paddock
