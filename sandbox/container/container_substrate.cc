#include "sandbox/container/container_substrate.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>

#include <spdlog/spdlog.h>

#include "sandbox/container/freezer.h"
#include "sandbox/image_source.h"
#include "sandbox/network/egress_proxy.h"
#include "sandbox/image_view.h"
#include "sandbox/init/init_client.h"
#include "sandbox/init/init_served_sandbox.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/mounts.h"
#include "sandbox/linux/process.h"
#include "sandbox/linux/spawner.h"
#include "sandbox/linux/seccomp_profile.h"
#include "sandbox/linux/userns.h"
#include "sandbox/manager.h"
#include "sandbox/warm_pool.h"
#include "sandbox/container/overlay_diff.h"

namespace paddock {

namespace {

constexpr int kSetupTimeoutMs = 10'000;
constexpr const char* kDefaultWorkdir = "/work";

// Everything one container owns, released in reverse order by Destroy.
class ContainerSandbox final : public InitServedSandbox {
 public:
  ContainerSandbox(std::string id, std::string dir, std::string cgroup_root)
      : InitServedSandbox(std::move(id)), dir_(std::move(dir)), freezer_(&cgroup_, std::move(cgroup_root), "ct-" + id_) {}
  ~ContainerSandbox() override {
    Status ignored = Destroy();
    (void)ignored;
  }

  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override {
    if (!client_) return Destroyed();
    uint64_t ooms_before = cgroup_.OomKills();
    // The spec's env is applied per exec, so a pooled container built
    // before the spec was known serves it too; the request's env wins.
    const ExecRequest* send = &req;
    ExecRequest merged;
    if (!env_.empty()) {
      merged = req;
      for (const auto& [k, v] : env_) merged.env.emplace(k, v);
      send = &merged;
    }
    PADDOCK_ASSIGN_OR_RETURN(ExecResult r, client_->Exec(*send, on_output));
    if (r.signal == SIGKILL && !r.timed_out && cgroup_.OomKills() > ooms_before) r.oom_killed = true;
    return r;
  }
  Result<Usage> GetUsage() override { return cgroup_.ReadUsage(); }

  // The upper dir is read through the fd kept from before the daemon dropped
  // its copy of the mounts, with every process of the container frozen.
  Result<SnapshotResult> Snapshot(const std::string& name) override {
    std::lock_guard lock(snapshot_mu_);
    if (!client_ || !upper_fd_.valid()) return Destroyed();
    if (!resolver_) return Error(Code::kUnimplemented, "this daemon has no image store to snapshot into");
    PADDOCK_RETURN_IF_ERROR(freezer_.Freeze().Prefix("snapshot of " + id_));
    int upper = upper_fd_.get();
    SandboxFreezer* freezer = &freezer_;
    auto produce = [upper, freezer](const TarSink& sink) -> Status {
      OverlayDiffOptions opts{kContainerIds.host_base, kContainerIds.count};
      Status st = WriteOverlayDiffTar(upper, opts, sink);
      freezer->Thaw();  // the changes are read; compressing and committing need no freeze
      return st;
    };
    auto r = resolver_->CommitLayer(image_, produce, name);
    freezer_.Thaw();
    if (!r.ok()) return r.status().Prefix("snapshot of " + id_);
    return r;
  }

  Status Destroy() override {
    std::lock_guard lock(destroy_mu_);
    egress_.reset();  // its connections first: they serve this sandbox's processes
    // Killing PID 1 of the pid namespace kills every process in it.
    init_.KillAndReap();
    if (client_) client_.reset();  // joins the reader thread (it sees EOF)
    Status first;
    auto note = [&first](Status st) {
      if (!st.ok() && first.ok()) first = st;
    };
    // Every process of the container died with its PID 1, so the cgroup is
    // empty; its removal waits out an RCU grace period on cgroup v1 and need
    // not hold up the caller.
    freezer_.Thaw();
    cgroup_.DestroyInBackground();
    freezer_.Remove();
    upper_fd_.reset();
    for (std::string* m : {&rootfs_, &changes_}) {
      if (m->empty()) continue;
      note(Unmount(*m));
      m->clear();
    }
    if (!dir_.empty() && first.ok()) {
      note(RemoveTree(dir_));
      if (first.ok()) dir_.clear();
    }
    if (views_) {
      for (const auto& d : image_.layer_dirs) views_->Release(d);
      views_ = nullptr;
    }
    image_.lease.reset();  // the layers may be evicted from the cache now
    return first;
  }

  using InitServedSandbox::client_;  // started by the substrate's Create
  std::map<std::string, std::string> env_;
  std::unique_ptr<EgressProxy> egress_;  // with a network allow list only
  std::string dir_;
  std::string rootfs_;   // overlay mount point while mounted
  std::string changes_;  // tmpfs holding the overlay's upper and work dirs
  Cgroup cgroup_;
  ChildProcess init_;
  std::mutex destroy_mu_;
  std::mutex snapshot_mu_;
  ResolvedImage image_;              // what it was built from; holds the layers' lease
  ImageViews* views_ = nullptr;      // holding a view of each of image_.layer_dirs
  ImageResolver* resolver_ = nullptr;
  UniqueFd upper_fd_;                // the overlay's upper dir (its changes)
  SandboxFreezer freezer_;
};

class ContainerSubstrate final : public Substrate {
 public:
  explicit ContainerSubstrate(const SubstrateEnv& env)
      : env_(env),
        views_(env.state_dir + "/views/container", kContainerIds),
        spawner_(env.init_path),
        pool_(env.warm_pool_size) {}
  ~ContainerSubstrate() override {
    pool_.Stop();
    FlushCgroupRemovals();
  }

  std::string name() const override { return "container"; }

  Result<std::unique_ptr<Sandbox>> Create(const std::string& id, const SandboxSpec& spec) override {
    PADDOCK_RETURN_IF_ERROR(CheckSearchableByOthers(env_.state_dir));
    PADDOCK_ASSIGN_OR_RETURN(std::vector<EgressRule> egress, ParseEgressRules(spec.network_allow));
    PADDOCK_ASSIGN_OR_RETURN(ResolvedImage image, ResolverOrDefault(env_.images).Resolve(spec.image, {spec.host_dir_image_ok, spec.local_client}));
    SandboxSpec recipe;  // what a pooled container is built from: no id, no env
    recipe.image = image.id;
    recipe.limits = spec.limits;
    recipe.workdir = spec.workdir;
    std::map<std::string, std::string> env = spec.env;
    ApplyImageDefaults(image, &env, &recipe.workdir);  // the spec's values win
    if (recipe.workdir.empty()) recipe.workdir = kDefaultWorkdir;
    // Keyed by the resolved image id: two names of one image share a pool.
    std::string key = fmt::format("{}\n{}\n{}\n{}\n{}\n{}", image.id, recipe.workdir,
                                  spec.limits.cpu_millicores, spec.limits.memory_bytes,
                                  spec.limits.pids, spec.limits.disk_bytes);
    std::unique_ptr<Sandbox> sb = pool_.Take(key);
    if (!sb) {
      PADDOCK_ASSIGN_OR_RETURN(sb, Build(id, recipe, image));
    }
    // The pool's factory keeps the image (and its layers' lease) while the key lives.
    pool_.Want(key, [this, recipe, image] {
      return Build(NewSandboxId(), recipe, image, /*background=*/true);
    });
    auto* ct = static_cast<ContainerSandbox*>(sb.get());
    if (!spec.network_allow.empty()) {
      // Egress through the daemon's proxy, listening inside this container's
      // own network namespace; the container gains no route of its own.
      auto proxy = EgressProxy::Start(ct->init_.pid(), std::move(egress));
      if (!proxy.ok()) return proxy.status().Prefix("starting the sandbox's egress proxy");
      ct->egress_ = std::move(proxy).value();
      for (const auto& [k, v] : EgressProxy::ProxyEnv()) env.emplace(k, v);
    }
    ct->env_ = std::move(env);
    return sb;
  }

  void Shutdown() override {
    pool_.Stop();
    FlushCgroupRemovals();
    views_.ReleaseAll();
    RemoveCgroupRootIfEmpty(env_.cgroup_root());
  }

 private:
  // Builds a container from a resolved recipe (image dir, limits, workdir).
  // `background`: built ahead for the warm pool, at the lowest CPU priority
  // until it is ready.
  Result<std::unique_ptr<Sandbox>> Build(const std::string& id, const SandboxSpec& spec,
                                         const ResolvedImage& image, bool background = false) {
    PADDOCK_ASSIGN_OR_RETURN(std::string bpf, DefaultSeccompBpf());

    std::string dir = fmt::format("{}/containers/{}", env_.state_dir, id);
    // cleans up on any early return
    auto sb = std::make_unique<ContainerSandbox>(id, dir, env_.cgroup_root());
    sb->image_ = image;
    sb->resolver_ = env_.images;
    // One idmapped read-only view per layer, stacked top first.
    PADDOCK_ASSIGN_OR_RETURN(std::vector<std::string> views, views_.AcquireAll(image.layer_dirs));
    sb->views_ = &views_;
    std::vector<std::string> lowers(views.rbegin(), views.rend());
    // The container's changes live on a tmpfs sized by the disk limit: a
    // full sandbox disk is ENOSPC inside the sandbox, never a full host disk.
    const std::string changes = dir + "/changes", rootfs = dir + "/rootfs";
    const std::string upper = changes + "/upper", work = changes + "/work";
    for (const auto& d : {changes, rootfs}) PADDOCK_RETURN_IF_ERROR(MkdirAll(d));
    uint64_t disk = spec.limits.disk_bytes ? spec.limits.disk_bytes : kDefaultDiskBytes;
    PADDOCK_RETURN_IF_ERROR(MountTmpfs(changes, disk));
    sb->changes_ = changes;
    for (const auto& d : {upper, work}) PADDOCK_RETURN_IF_ERROR(MkdirAll(d));
    // The upper dir's root becomes the container's "/": owned by container root.
    if (chown(upper.c_str(), kContainerIds.host_base, kContainerIds.host_base) != 0)
      return ErrnoError("chown " + upper);
    PADDOCK_RETURN_IF_ERROR(MountOverlay(lowers, upper, work, rootfs));
    sb->rootfs_ = rootfs;
    // Kept for snapshots: after the mounts are dropped below, the changes are
    // reachable only through this fd.
    sb->upper_fd_ = UniqueFd(open(upper.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!sb->upper_fd_.valid()) return ErrnoError("opening " + upper);

    auto cg = Cgroup::Create(env_.cgroup_root(), "ct-" + id, spec.limits);
    if (!cg.ok()) return cg.status();
    sb->cgroup_ = std::move(cg).value();

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);

    // Cloned from the spawner: already paddock-init, so no exec. It waits
    // for its setup frame while we write its id maps and cgroup.
    const unsigned long flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
                                CLONE_NEWUTS | CLONE_NEWIPC;
    auto child = spawner_.Spawn(flags, theirs.get());
    if (!child.ok()) return child.status().Prefix("starting container");
    sb->init_ = std::move(child).value();
    theirs.reset();
    if (background) setpriority(PRIO_PROCESS, static_cast<id_t>(sb->init_.pid()), 19);
    PADDOCK_RETURN_IF_ERROR(WriteIdMaps(sb->init_.pid(), kContainerIds));
    PADDOCK_RETURN_IF_ERROR(sb->cgroup_.AddProcess(sb->init_.pid()).Prefix("joining cgroup"));

    init::SetupConfig setup;
    setup.mode = init::Mode::kContainer;
    setup.rootfs = rootfs;
    setup.hostname = "sandbox-" + id;
    setup.workdir = spec.workdir;
    setup.tmp_bytes = spec.limits.disk_bytes ? spec.limits.disk_bytes : kDefaultDiskBytes;
    setup.limits = spec.limits;
    setup.seccomp_bpf = bpf;
    Result<std::unique_ptr<InitClient>> client = Error(Code::kInternal, "not started");
    {
      NormalPriorityScope normal;  // its reader thread serves the sandbox's whole life
      client = InitClient::Start(std::move(ours), setup, kSetupTimeoutMs);
    }
    if (!client.ok()) return client.status().Prefix("starting container");
    sb->client_ = std::move(client).value();
    if (background) setpriority(PRIO_PROCESS, static_cast<id_t>(sb->init_.pid()), 0);
    // The container has pivoted into its own private copy of these mounts;
    // the daemon drops its copies so that its mount table (which every new
    // mount namespace copies) does not grow with the number of containers.
    // The container's mounts die with its mount namespace.
    for (std::string* m : {&sb->rootfs_, &sb->changes_}) {
      PADDOCK_RETURN_IF_ERROR(Unmount(*m));
      m->clear();
    }
    return std::unique_ptr<Sandbox>(std::move(sb));
  }

  SubstrateEnv env_;
  ImageViews views_;
  Spawner spawner_;
  WarmPool pool_;  // last: stopped (its sandboxes destroyed) before the views go
};

}  // namespace

std::unique_ptr<Substrate> MakeContainerSubstrate(const SubstrateEnv& env) {
  return std::make_unique<ContainerSubstrate>(env);
}

}  // namespace paddock
