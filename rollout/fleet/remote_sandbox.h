// A sandbox that lives on a node: the Sandbox interface forwarded over the
// node's Sandboxes API. The rollout engine, keyed calls and the log use it as
// any other sandbox; only Alive() and the errors say where it is.
//
// When its node is lost (node.h) every call fails at once with UNAVAILABLE
// naming the node, and execs in flight are cancelled: the node has destroyed
// the sandbox under its lease by then, so nothing of it runs anywhere. At that
// moment its gone watcher (Sandbox::WatchGone) is told, so that its user (the
// rollout engine) can rebuild it elsewhere before its next call.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "rollout/fleet/node.h"
#include "sandbox/sandbox.h"

namespace paddock::fleet {

class RemoteSandbox final : public Sandbox {
 public:

  RemoteSandbox(std::string id, std::string remote_id, std::shared_ptr<Node> node, uint64_t generation);
  ~RemoteSandbox() override;

  const std::string& id() const override { return id_; }
  const std::string& remote_id() const { return remote_id_; }
  const std::string& node_address() const { return node_->address(); }

  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output) override;
  Status WriteFile(const std::string& path, std::string_view content, uint32_t mode, bool make_parents) override;
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override;
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override;
  Result<FileInfo> Stat(const std::string& path) override;
  Result<Usage> GetUsage() override;
  bool Alive() const override;
  std::string placement() const override { return node_->address(); }
  Status Destroy() override;
  Result<SnapshotResult> Snapshot(const std::string& name) override;
  // Forwarded to the node, which keeps a paused sandbox's saved state (and
  // `record`, the front's description, is not needed there: the node has its
  // own). A paused sandbox on a node lives under this front's lease like any
  // other: the lease's end destroys it there, and a restarted front does not
  // find it again. A fork's copies are new sandboxes on the same node.
  Result<PauseResult> Pause(const std::string& record) override;
  Status Resume() override;
  bool Paused() const override { return paused_.load(); }
  Result<std::vector<std::unique_ptr<Sandbox>>> Fork(const std::vector<std::string>& ids) override;
  // Set once, before the sandbox is handed out.
  void KeepSnapshotsWith(SnapshotKeeper keeper) { keeper_ = std::move(keeper); }
  void WatchGone(std::function<void()> on_gone) override { gone_signal_->Watch(std::move(on_gone)); }

 private:
  Result<std::shared_ptr<NodeConnection>> Client() const;
  // Notes what an error says about the node or the sandbox, and returns it
  // naming the node.
  Status Seen(Status st) const;
  // Whether the node, asked, no longer holds the sandbox (NOT_FOUND: it forgets
  // one before killing it; marks it gone) or was lost. False when it holds it
  // or cannot say. Waits for the node's verdict when it does not answer.
  bool Vanished() const;

  const std::string id_, remote_id_;
  std::shared_ptr<Node> node_;
  const uint64_t generation_;
  mutable std::atomic<bool> gone_{false};  // destroyed, or the node no longer has it
  std::atomic<bool> released_{false};
  std::atomic<bool> paused_{false};
  SnapshotKeeper keeper_;
  const std::shared_ptr<GoneSignal> gone_signal_ = std::make_shared<GoneSignal>();
};

}  // namespace paddock::fleet
