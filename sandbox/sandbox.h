// The uniform sandbox interface. Every substrate (function, container, later
// microvm) implements Sandbox and Substrate; everything above this layer (the
// manager, the gRPC service, the rollout engine) sees only these.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/image_source.h"
#include "sandbox/types.h"

namespace paddock {

// The image of a microVM's memory snapshot (Sandbox::Snapshot), by name.
inline constexpr char kMemorySnapshotPrefix[] = "microvm-snapshot:";

class Sandbox {
 public:
  virtual ~Sandbox() = default;

  // Chosen by the substrate (a sandbox handed over from a warm pool was
  // named when it was built).
  virtual const std::string& id() const = 0;

  // Runs one command. `on_output`, when given, receives output as it is produced
  // (the result then still carries the capped output). Thread-safe: many execs
  // may run at once in one sandbox.
  virtual Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) = 0;

  // Paths are resolved inside the sandbox root (absolute, or relative to the
  // workdir); paths containing ".." components are refused before this is called.
  virtual Status WriteFile(const std::string& path, std::string_view content, uint32_t mode,
                           bool make_parents) = 0;
  virtual Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) = 0;
  virtual Result<std::vector<FileInfo>> ListDir(const std::string& path) = 0;
  virtual Result<FileInfo> Stat(const std::string& path) = 0;

  virtual Result<Usage> GetUsage() = 0;
  // False once the sandbox's init process has died.
  virtual bool Alive() const = 0;
  // Kills every process and removes every mount, cgroup and directory the
  // sandbox owns. Idempotent.
  virtual Status Destroy() = 0;

  // Tells `on_gone` when the sandbox is gone for good without a call having
  // found out: a front's node was declared lost (rollout/fleet), after its
  // lease fenced the sandbox, so nothing of it runs anywhere and a caller may
  // rebuild it elsewhere at once. Called at most once, from another thread
  // (keep it short: post the work elsewhere); at once, on this thread, when the
  // sandbox is gone already. One watcher: each call replaces the last, and
  // after WatchGone(nullptr) returns the previous one is not running and never
  // runs again. A local sandbox never calls it (its death shows in its next
  // call and in Alive()).
  virtual void WatchGone(std::function<void()> on_gone) { (void)on_gone; }

  // Where the sandbox runs when that is not this host: a front's node
  // ("host:port", rollout/fleet); empty for a local sandbox.
  virtual std::string placement() const { return {}; }

  // Turns the sandbox's filesystem changes into a new image on top of the one
  // it was created from, named `name` (may be empty). Substrates without
  // persistent state say why not (FAILED_PRECONDITION). A microVM's snapshot
  // keeps its memory too: its image is kMemorySnapshotPrefix + name, which a
  // microVM create names to restore it (on the daemon that took it).
  virtual Result<SnapshotResult> Snapshot(const std::string& name) {
    (void)name;
    return Error(Code::kUnimplemented, "this substrate cannot snapshot sandboxes");
  }

  // Pause with memory (microVMs): the sandbox's whole state (memory,
  // processes, files) is saved under the daemon's state dir with `record`
  // (the manager's description of it, returned by Substrate::Recover) and its
  // host resources are released; Resume brings it back as it was. A paused
  // sandbox survives a daemon restart. Calls on it fail (FAILED_PRECONDITION)
  // until it is resumed.
  virtual Result<PauseResult> Pause(const std::string& record) {
    (void)record;
    return Error(Code::kUnimplemented, "only microVM sandboxes can be paused with their memory");
  }
  virtual Status Resume() { return Error(Code::kUnimplemented, "only microVM sandboxes can be resumed"); }
  virtual bool Paused() const { return false; }
  // `ids.size()` independent running copies of this sandbox (memory,
  // processes and files as they are now), named `ids`; this one runs on.
  virtual Result<std::vector<std::unique_ptr<Sandbox>>> Fork(const std::vector<std::string>& ids) {
    (void)ids;
    return Error(Code::kUnimplemented, "only microVM sandboxes can be forked while running");
  }
  // The daemon stops: releases the sandbox's host resources. A paused
  // sandbox keeps its saved state for the next daemon; others are destroyed.
  virtual Status Release() { return Destroy(); }
};

// A paused sandbox found by a starting daemon: the sandbox (paused) and the
// record its manager gave Pause.
struct RecoveredSandbox {
  std::unique_ptr<Sandbox> sandbox;
  std::string record;
};

// Where a substrate keeps its state and finds its helpers.
struct SubstrateEnv {
  std::string state_dir;   // e.g. /var/lib/paddock
  std::string init_path;   // the paddock-init binary
  // Resolves SandboxSpec::image to materialized layers (sandbox/image_source.h).
  // Null: absolute root filesystem directories only. Owned by the daemon.
  ImageResolver* images = nullptr;
  // Ready sandboxes kept per (image, limits, workdir) once a create has asked
  // for that recipe; 0 disables the warm pool.
  size_t warm_pool_size = 2;
  // The cgroup subtree owned by the daemon of this state dir: "paddock" for
  // /var/lib/paddock, "paddock-<hash>" for any other, so daemons with
  // different state dirs never reap each other's sandboxes.
  std::string cgroup_root() const;
};

class Substrate {
 public:
  virtual ~Substrate() = default;
  virtual std::string name() const = 0;
  // Creates a ready sandbox, named `id` unless it comes from a warm pool; on
  // error leaves nothing behind.
  virtual Result<std::unique_ptr<Sandbox>> Create(const std::string& id,
                                                  const SandboxSpec& spec) = 0;
  // Stops shared helpers (zygotes); called once at daemon shutdown.
  virtual void Shutdown() {}
  // The paused sandboxes a previous daemon of this state dir left (Sandbox::Pause).
  virtual std::vector<RecoveredSandbox> Recover() { return {}; }
  // Deletes memory snapshot `name` (kMemorySnapshotPrefix) of this substrate's;
  // NOT_FOUND when it has none of that name. Returns the bytes freed.
  virtual Result<uint64_t> RemoveMemorySnapshot(const std::string& name) {
    return Error(Code::kNotFound, "no microVM memory snapshot named '{}'", name);
  }
  // This substrate's memory snapshots: name and bytes on disk.
  virtual std::vector<std::pair<std::string, uint64_t>> MemorySnapshots() { return {}; }
};

}  // namespace paddock
