#include "sandbox/container/container_substrate.h"

#include <sched.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>

#include <spdlog/spdlog.h>

#include "sandbox/image_view.h"
#include "sandbox/init/init_client.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/mounts.h"
#include "sandbox/linux/process.h"
#include "sandbox/linux/spawner.h"
#include "sandbox/linux/seccomp_profile.h"
#include "sandbox/linux/userns.h"
#include "sandbox/manager.h"
#include "sandbox/warm_pool.h"

namespace paddock {

namespace {

constexpr int kSetupTimeoutMs = 10'000;
constexpr const char* kDefaultWorkdir = "/work";

// Everything one container owns, released in reverse order by Destroy.
class ContainerSandbox final : public Sandbox {
 public:
  ContainerSandbox(std::string id, std::string dir) : id_(std::move(id)), dir_(std::move(dir)) {}
  ~ContainerSandbox() override {
    Status ignored = Destroy();
    (void)ignored;
  }

  const std::string& id() const override { return id_; }

  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override {
    if (!client_) return Error(Code::kUnavailable, "sandbox {} is destroyed", id_);
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
  Status WriteFile(const std::string& path, std::string_view content, uint32_t mode,
                   bool make_parents) override {
    if (!client_) return Error(Code::kUnavailable, "sandbox {} is destroyed", id_);
    return client_->WriteFile(path, content, mode, make_parents);
  }
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override {
    if (!client_) return Error(Code::kUnavailable, "sandbox {} is destroyed", id_);
    return client_->ReadFile(path, max_bytes);
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override {
    if (!client_) return Error(Code::kUnavailable, "sandbox {} is destroyed", id_);
    return client_->ListDir(path);
  }
  Result<FileInfo> Stat(const std::string& path) override {
    if (!client_) return Error(Code::kUnavailable, "sandbox {} is destroyed", id_);
    return client_->Stat(path);
  }
  Result<Usage> GetUsage() override { return cgroup_.ReadUsage(); }
  bool Alive() const override { return client_ && client_->alive(); }

  Status Destroy() override {
    std::lock_guard lock(destroy_mu_);
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
    cgroup_.DestroyInBackground();
    for (std::string* m : {&rootfs_, &changes_}) {
      if (m->empty()) continue;
      note(Unmount(*m));
      m->clear();
    }
    if (!dir_.empty() && first.ok()) {
      note(RemoveTree(dir_));
      if (first.ok()) dir_.clear();
    }
    return first;
  }

  std::string id_;
  std::map<std::string, std::string> env_;
  std::string dir_;
  std::string rootfs_;   // overlay mount point while mounted
  std::string changes_;  // tmpfs holding the overlay's upper and work dirs
  Cgroup cgroup_;
  ChildProcess init_;
  std::unique_ptr<InitClient> client_;
  std::mutex destroy_mu_;
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
    PADDOCK_ASSIGN_OR_RETURN(std::string image_dir, ResolveImageDir(spec.image));
    SandboxSpec recipe;  // what a pooled container is built from: no id, no env
    recipe.image = image_dir;
    recipe.limits = spec.limits;
    recipe.workdir = spec.workdir.empty() ? kDefaultWorkdir : spec.workdir;
    std::string key = fmt::format("{}\n{}\n{}\n{}\n{}\n{}", image_dir, recipe.workdir,
                                  spec.limits.cpu_millicores, spec.limits.memory_bytes,
                                  spec.limits.pids, spec.limits.disk_bytes);
    std::unique_ptr<Sandbox> sb = pool_.Take(key);
    if (!sb) {
      PADDOCK_ASSIGN_OR_RETURN(sb, Build(id, recipe));
    }
    pool_.Want(key, [this, recipe] { return Build(NewSandboxId(), recipe, /*background=*/true); });
    static_cast<ContainerSandbox*>(sb.get())->env_ = spec.env;
    return sb;
  }

  void Shutdown() override {
    pool_.Stop();
    FlushCgroupRemovals();
    views_.ReleaseAll();
  }

 private:
  // Builds a container from a resolved recipe (image dir, limits, workdir).
  // `background`: built ahead for the warm pool, at the lowest CPU priority
  // until it is ready.
  Result<std::unique_ptr<Sandbox>> Build(const std::string& id, const SandboxSpec& spec,
                                         bool background = false) {
    const std::string& image_dir = spec.image;
    PADDOCK_ASSIGN_OR_RETURN(std::string bpf, DefaultSeccompBpf());
    PADDOCK_ASSIGN_OR_RETURN(std::string lower, views_.Acquire(image_dir));

    std::string dir = fmt::format("{}/containers/{}", env_.state_dir, id);
    auto sb = std::make_unique<ContainerSandbox>(id, dir);  // cleans up on any early return
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
    PADDOCK_RETURN_IF_ERROR(MountOverlay({lower}, upper, work, rootfs));
    sb->rootfs_ = rootfs;

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
    auto client = InitClient::Start(std::move(ours), setup, kSetupTimeoutMs);
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
