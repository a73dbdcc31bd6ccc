#include "rollout/fleet/remote_sandbox.h"

#include <csignal>
#include <mutex>
#include <thread>

#include "paddock/client.h"

namespace paddock::fleet {

RemoteSandbox::RemoteSandbox(std::string id, std::string remote_id, std::shared_ptr<Node> node, uint64_t generation)
    : id_(std::move(id)), remote_id_(std::move(remote_id)), node_(std::move(node)), generation_(generation) {
  node_->Watch(generation_, gone_signal_);
}

RemoteSandbox::~RemoteSandbox() {
  node_->Unwatch(gone_signal_);
  if (!released_.exchange(true)) node_->Released();
}

Result<std::shared_ptr<NodeConnection>> RemoteSandbox::Client() const {
  if (gone_.load()) return Error(Code::kUnavailable, "sandbox {} on node {} is gone", id_, node_->address());
  return node_->ClientFor(generation_);
}

Status RemoteSandbox::Seen(Status st) const {
  if (st.ok()) return st;
  if (st.code() == Code::kNotFound && st.message().find(remote_id_) != std::string::npos) gone_ = true;
  // A transport failure says nothing about the sandbox yet: wait for the node's
  // verdict, so that a caller (the rollout engine) can tell a lost sandbox
  // (Alive() false: rebuild it elsewhere) from a blip.
  if ((st.code() == Code::kUnavailable || st.code() == Code::kDeadlineExceeded) && !node_->AwaitVerdict(generation_))
    return Error(Code::kUnavailable, "node {} was lost while the call ran ({}); sandbox {} is gone", node_->address(),
                 st.message(), id_);
  if (st.code() == Code::kCancelled && !node_->Usable(generation_))
    return Error(Code::kUnavailable, "node {} was lost while the call ran; sandbox {} is gone", node_->address(), id_);
  // The node answers, yet the call failed UNAVAILABLE: the node may have
  // destroyed the sandbox under it (the end of a drain's grace, a fence: "the
  // sandbox's init process exited during the call"). Asked, a node that no
  // longer holds it says NOT_FOUND (it forgets a sandbox before killing it), and
  // then the sandbox is gone: Alive() says so, and an engine rebuilds the episode
  // elsewhere instead of taking the error for the call's own outcome.
  if (st.code() == Code::kUnavailable && Vanished())
    return Error(Code::kUnavailable, "sandbox {} is gone from node {} ({})", id_, node_->address(), st.message());
  if (st.message().find(node_->address()) != std::string::npos) return st;
  return st.Prefix(fmt::format("node {}", node_->address()));
}

bool RemoteSandbox::Vanished() const {
  for (int asked = 0; asked < 2 && !gone_.load(); ++asked) {
    auto c = node_->ClientFor(generation_);
    if (!c.ok()) return true;  // lost: its lease took the sandbox with it
    auto probe = (*c)->GetUsage(remote_id_);
    if (probe.ok()) return false;
    if (probe.status().code() == Code::kNotFound) {
      gone_ = true;
      break;
    }
    // No answer (a drained node stops soon after its grace): the node's verdict.
    if (probe.status().code() != Code::kUnavailable && probe.status().code() != Code::kDeadlineExceeded) return false;
    if (!node_->AwaitVerdict(generation_)) return true;
  }
  return gone_.load();
}

Result<ExecResult> RemoteSandbox::Exec(const ExecRequest& req_in, const OutputCallback& on_output) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  // A sealed run goes as a request for the node's own toolset: the API
  // conversion (proto/convert.cc) sets `sealed` for a trusted program and never
  // sends its bytes, nor the local `cancelled` hook (polled below).
  const ExecRequest& req = req_in;
  // Streamed, so that the call can be cancelled (node lost, caller gone); the
  // result carries the capped output as the Sandbox contract says.
  const uint64_t cap = req.output_cap ? req.output_cap : kDefaultOutputCap;
  std::string out[2];
  bool truncated[2] = {false, false};
  std::mutex out_mu;
  auto collect = [&](int stream, std::string_view chunk) {
    if (on_output) on_output(stream, chunk);
    std::lock_guard l(out_mu);
    int i = stream == 2 ? 1 : 0;
    size_t room = out[i].size() < cap ? cap - out[i].size() : 0;
    out[i].append(chunk.substr(0, room));
    if (chunk.size() > room) truncated[i] = true;
  };
  client::ExecCancel cancel;
  node_->Track(&cancel);
  std::atomic<bool> done{false};
  std::thread watcher;
  if (req_in.cancelled)
    watcher = std::thread([&] {
      while (!done.load()) {
        if (req_in.cancelled()) {
          cancel.Cancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  auto r = c->Exec(remote_id_, req, collect, &cancel);
  done = true;
  if (watcher.joinable()) watcher.join();
  node_->Untrack(&cancel);
  if (!r.ok()) return Seen(r.status());
  // Killed by SIGKILL, not for its timeout: the node may have destroyed the
  // sandbox under the call (a drain's grace ended, a fence). Then the result is
  // not the command's own: the sandbox is gone, and the caller must not take it
  // for the call's outcome.
  if (r->signal == SIGKILL && !r->timed_out && Vanished())
    return Error(Code::kUnavailable, "sandbox {} is gone from node {} (the call was killed with it)", id_,
                 node_->address());
  r->stdout_data = std::move(out[0]);
  r->stderr_data = std::move(out[1]);
  r->stdout_truncated = r->stdout_truncated || truncated[0];
  r->stderr_truncated = r->stderr_truncated || truncated[1];
  return r;
}

Status RemoteSandbox::WriteFile(const std::string& path, std::string_view content, uint32_t mode, bool make_parents) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  Status st = c->WriteFile(remote_id_, path, content, mode, make_parents);
  return st.ok() ? st : Seen(st);
}

Result<std::string> RemoteSandbox::ReadFile(const std::string& path, uint64_t max_bytes) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto r = c->ReadFile(remote_id_, path, max_bytes);
  if (!r.ok()) return Seen(r.status());
  return r;
}

Result<std::vector<FileInfo>> RemoteSandbox::ListDir(const std::string& path) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto r = c->ListDir(remote_id_, path);
  if (!r.ok()) return Seen(r.status());
  return r;
}

Result<FileInfo> RemoteSandbox::Stat(const std::string& path) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto r = c->Stat(remote_id_, path);
  if (!r.ok()) return Seen(r.status());
  return r;
}

Result<Usage> RemoteSandbox::GetUsage() {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto r = c->GetUsage(remote_id_);
  if (!r.ok()) return Seen(r.status());
  return r;
}

bool RemoteSandbox::Alive() const { return !gone_.load() && node_->Usable(generation_); }

Status RemoteSandbox::Destroy() {
  node_->Unwatch(gone_signal_);
  if (gone_.exchange(true)) return Status::Ok();
  if (!released_.exchange(true)) node_->Released();
  auto c = node_->ClientFor(generation_);
  if (!c.ok()) return Status::Ok();  // the node is lost: its lease took the sandbox with it
  Status st = (*c)->Destroy(remote_id_);
  if (st.ok() || st.code() == Code::kNotFound) return Status::Ok();
  return st.Prefix(fmt::format("destroying sandbox {} on node {}", id_, node_->address()));
}

Result<SnapshotResult> RemoteSandbox::Snapshot(const std::string& name) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto r = c->Snapshot(remote_id_, name);
  if (!r.ok()) return Seen(r.status());
  SnapshotResult taken{r->image, r->name, r->layer, r->layer_bytes};
  // A microVM's memory snapshot stays on its node (its memory is not an image
  // the front can keep): creates naming it are placed there by preference.
  if (taken.image.rfind(kMemorySnapshotPrefix, 0) == 0) {
    node_->NoteImage(taken.image);
    return taken;
  }
  if (!keeper_) return taken;
  return keeper_(*c, std::move(taken));
}

Result<PauseResult> RemoteSandbox::Pause(const std::string& record) {
  (void)record;
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto r = c->Pause(remote_id_);
  if (!r.ok()) return Seen(r.status());
  paused_ = true;
  r->path = fmt::format("{} on node {}", remote_id_, node_->address());
  return r;
}

Status RemoteSandbox::Resume() {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  Status st = c->Resume(remote_id_);
  if (!st.ok()) return Seen(st);
  paused_ = false;
  return st;
}

Result<std::vector<std::unique_ptr<Sandbox>>> RemoteSandbox::Fork(const std::vector<std::string>& ids) {
  PADDOCK_ASSIGN_OR_RETURN(auto c, Client());
  auto made = c->Fork(remote_id_, static_cast<uint32_t>(ids.size()));
  if (!made.ok()) return Seen(made.status());
  std::vector<std::unique_ptr<Sandbox>> copies;
  if (made->size() != ids.size()) {
    // Not what was asked: the copies the node made are destroyed there, not leaked.
    for (const auto& info : *made) (void)c->Destroy(info.id);
    return Error(Code::kInternal, "node {} made {} copies of sandbox {} where {} were asked", node_->address(),
                 made->size(), id_, ids.size());
  }
  node_->Adopted(made->size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto copy = std::make_unique<RemoteSandbox>(ids[i], (*made)[i].id, node_, generation_);
    copy->keeper_ = keeper_;
    copies.push_back(std::move(copy));
  }
  return copies;
}

}  // namespace paddock::fleet
