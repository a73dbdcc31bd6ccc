#include "sandbox/init/init_client.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

#include "sandbox/network/egress_tunnel.h"

namespace paddock {

using init::FrameType;

Status FileErrnoStatus(int err, const std::string& path, const std::string& detail) {
  std::string what = detail.empty() || detail == path ? path : detail;
  switch (err) {
    case ENOENT: return Error(Code::kNotFound, "no such file or directory in the sandbox: {}", what);
    case EISDIR: return Error(Code::kInvalidArgument, "{} is a directory", what);
    case ENOTDIR: return Error(Code::kInvalidArgument, "a component of {} is not a directory", what);
    case EACCES:
    case EPERM: return Error(Code::kPermissionDenied, "permission denied in the sandbox: {}", what);
    case EROFS:
      return Error(Code::kFailedPrecondition,
                   "{} is on a read-only filesystem (function sandboxes are read-only and "
                   "stateless; use a container sandbox to keep files)",
                   what);
    case EFBIG: return Error(Code::kResourceExhausted, "{}", what);
    case ENOSPC:
    case EDQUOT: return Error(Code::kResourceExhausted, "sandbox disk is full writing {}", what);
    case EEXIST: return Error(Code::kAlreadyExists, "{} already exists", what);
    // Init's own words: a FIFO, device or socket refused, a magic link refused.
    case EINVAL:
    case ELOOP: return Error(Code::kInvalidArgument, "{}", what);
    case ETIMEDOUT: return Error(Code::kDeadlineExceeded, "{}", what);
    case EAGAIN: return Error(Code::kResourceExhausted, "{}: {}", what, std::strerror(err));
    default: return Error(Code::kInternal, "{}: {}", what, std::strerror(err));
  }
}

std::chrono::milliseconds InitClient::ExecBudget(const ExecRequest& req) {
  uint32_t timeout = req.timeout_ms ? req.timeout_ms : kDefaultExecTimeoutMs;
  return std::chrono::milliseconds(timeout) + kExecGrace;
}

InitClient::InitClient(UniqueFd channel) : channel_(std::move(channel)) {}

InitClient::~InitClient() {
  Close();
  if (reader_.joinable()) reader_.join();
  // After the reader (which feeds it); the closed channel fails any frame it
  // is still sending, so its thread ends.
  if (egress_) egress_->Stop();
}

Result<std::unique_ptr<InitClient>> InitClient::Start(UniqueFd channel, const init::SetupConfig& setup,
                                                      int timeout_ms) {
  if (!init::WriteFrame(channel.get(), FrameType::kSetup, 0, init::EncodeSetup(setup)))
    return ErrnoError("sending setup to paddock-init");
  struct pollfd p {channel.get(), POLLIN, 0};
  int n = poll(&p, 1, timeout_ms);
  if (n == 0)
    return Error(Code::kDeadlineExceeded, "paddock-init did not report ready within {} ms", timeout_ms);
  init::Frame f;
  if (n < 0 || !init::ReadFrame(channel.get(), &f))
    return Error(Code::kInternal,
                 "paddock-init exited during setup (is the paddock-init binary valid? "
                 "run paddockd with --log-level debug)");
  int32_t err;
  std::string msg, payload;
  if (f.type != FrameType::kHello || !init::DecodeReply(f.payload, &err, &msg, &payload))
    return Error(Code::kInternal, "paddock-init sent an unexpected first frame");
  if (err != 0) return Error(Code::kInternal, "sandbox setup failed inside the sandbox: {}", msg);
  auto client = std::unique_ptr<InitClient>(new InitClient(std::move(channel)));
  client->reader_ = std::thread([c = client.get()] { c->ReaderLoop(); });
  return client;
}

void InitClient::ReaderLoop() {
  init::Frame f;
  std::vector<int> raw_fds;
  while (init::ReadFrameWithFds(channel_.get(), &f, &raw_fds)) {
    // Only a stub reply may carry fds; any others are closed here.
    std::vector<UniqueFd> fds;
    for (int fd : raw_fds) fds.emplace_back(fd);
    raw_fds.clear();
    if (f.type != FrameType::kStub) fds.clear();
    if (f.type >= FrameType::kEgressOpen && f.type <= FrameType::kEgressClose) {
      // A guest's connection: queued for the tunnel, never waited on here.
      EgressTunnel* tunnel;
      {
        std::lock_guard lock(mu_);
        tunnel = egress_.get();
        if (!tunnel && dropped_egress_frames_++ == 0)
          spdlog::warn("paddock-init sent egress frames to a sandbox without egress; dropped");
      }
      if (tunnel) tunnel->OnFrame(std::move(f));
      continue;
    }
    std::shared_ptr<Pending> p;
    {
      std::lock_guard lock(mu_);
      auto it = pending_.find(f.id);
      if (it == pending_.end()) continue;
      p = it->second;
    }
    if (f.type == FrameType::kStdout || f.type == FrameType::kStderr) {
      if (p->on_output && *p->on_output) (*p->on_output)(f.type == FrameType::kStdout ? 1 : 2, f.payload);
      continue;
    }
    std::lock_guard lock(mu_);
    p->type = f.type;
    p->payload = std::move(f.payload);
    p->fds = std::move(fds);
    p->done = true;
    pending_.erase(f.id);
    cv_.notify_all();
  }
  std::lock_guard lock(mu_);
  dead_ = true;
  cv_.notify_all();
}

bool InitClient::alive() const {
  std::lock_guard lock(mu_);
  return !dead_;
}

void InitClient::Close() {
  // The reader sees EOF and marks the client dead itself, so no output
  // callback can still be running once a waiting call returns.
  if (channel_.valid()) ::shutdown(channel_.get(), SHUT_RDWR);
}

Result<std::string> InitClient::Call(FrameType type, const std::string& payload,
                                     const OutputCallback* on_output, FrameType* reply_type,
                                     std::chrono::milliseconds budget,
                                     const std::function<bool()>* cancelled,
                                     const std::vector<int>& fds, std::vector<UniqueFd>* received) {
  auto p = std::make_shared<Pending>();
  p->on_output = on_output;
  uint32_t id;
  {
    std::lock_guard lock(mu_);
    if (dead_) return Error(Code::kUnavailable, "the sandbox's init process has exited; destroy the sandbox and create a new one");
    id = next_id_++;
    pending_[id] = p;
  }
  bool sent;
  {
    std::lock_guard lock(write_mu_);
    sent = init::WriteFrameWithFds(channel_.get(), type, id, payload, fds);
  }
  std::unique_lock lock(mu_);
  if (!sent) {
    pending_.erase(id);
    return Error(Code::kUnavailable, "the sandbox's init process is gone; destroy the sandbox and create a new one");
  }
  bool cancel_sent = false;
  // Asks init to kill this call's exec; called with `lock` held, which it
  // releases while writing (the reader needs mu_ to deliver meanwhile).
  auto send_cancel = [&] {
    uint32_t cancel_id = next_id_++;
    lock.unlock();
    init::WireWriter w;
    w.U32(id);
    {
      std::lock_guard wl(write_mu_);
      init::WriteFrame(channel_.get(), FrameType::kCancel, cancel_id, w.Take());
    }
    cancel_sent = true;
    lock.lock();
  };
  const auto deadline = std::chrono::steady_clock::now() + budget;
  while (!p->done && !dead_) {
    // A cancellable call polls its predicate every 20 ms until it fires.
    const bool polling = cancelled && *cancelled && !cancel_sent;
    auto until = polling ? std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(20))
                         : deadline;
    if (cv_.wait_until(lock, until, [&] { return p->done || dead_; })) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      pending_.erase(id);
      // Whatever still runs for this exec is killed, not left behind.
      if (type == FrameType::kExec && !cancel_sent) send_cancel();
      if (on_output) {
        // The reader may be inside this call's output callback: only a dead
        // channel guarantees it never runs again. An init that overran an
        // exec's own timeout this far is wedged anyway.
        lock.unlock();
        Close();
        lock.lock();
        cv_.wait(lock, [&] { return dead_; });
      }
      return Error(Code::kDeadlineExceeded,
                   "paddock-init did not answer within {} ms; the sandbox may be wedged (destroy it and "
                   "create a new one)",
                   budget.count());
    }
    if (!polling) continue;
    lock.unlock();  // the predicate is the caller's: not under mu_
    bool cancel = (*cancelled)();
    lock.lock();
    if (cancel && !p->done && !dead_) send_cancel();
  }
  if (!p->done) {
    pending_.erase(id);
    return Error(Code::kUnavailable, "the sandbox's init process exited during the call; destroy the sandbox and create a new one");
  }
  *reply_type = p->type;
  if (received) *received = std::move(p->fds);
  return std::move(p->payload);
}

Result<ExecResult> InitClient::Exec(const ExecRequest& req, const OutputCallback& on_output) {
  ExecRequest r = req;
  r.stream = static_cast<bool>(on_output);
  FrameType type;
  PADDOCK_ASSIGN_OR_RETURN(std::string payload,
                           Call(FrameType::kExec, init::EncodeExec(r), on_output ? &on_output : nullptr, &type,
                                ExecBudget(req), req.cancelled ? &req.cancelled : nullptr));
  ExecResult result;
  if (type != FrameType::kExecDone || !init::DecodeResult(payload, &result))
    return Error(Code::kInternal, "malformed exec result from paddock-init");
  if (req.cancelled && req.cancelled() && result.signal == SIGKILL && !result.timed_out)
    return Error(Code::kCancelled, "the exec was cancelled and its command killed");
  return result;
}

Result<std::vector<UniqueFd>> InitClient::TakeStub(const std::vector<int>& cgroup_procs) {
  if (cgroup_procs.size() > init::kMaxFrameFds)
    return Error(Code::kInternal, "{} cgroup files for one stub (at most {})", cgroup_procs.size(),
                 init::kMaxFrameFds);
  init::WireWriter w;
  w.U32(static_cast<uint32_t>(cgroup_procs.size()));
  FrameType type;
  std::vector<UniqueFd> fds;
  PADDOCK_ASSIGN_OR_RETURN(std::string payload, Call(FrameType::kTakeStub, w.Take(), nullptr, &type, kFileCallBudget,
                                                     nullptr, cgroup_procs, &fds));
  if (type == FrameType::kReply) {
    int32_t err;
    std::string msg, body;
    if (!init::DecodeReply(payload, &err, &msg, &body)) return Error(Code::kInternal, "malformed stub reply");
    return Error(err == EAGAIN ? Code::kUnavailable : Code::kInternal, "the function zygote could not make an exec stub "
                 "ready: {}: {}", msg, std::strerror(err));
  }
  init::WireReader r(payload);
  uint32_t n = 0;
  if (type != FrameType::kStub || !r.U32(&n) || n != init::kStubFds || fds.size() != init::kStubFds)
    return Error(Code::kInternal, "malformed stub reply from the function zygote");
  return fds;
}

Result<std::string> InitClient::FileCall(FrameType type, const std::string& payload, const std::string& path) {
  FrameType reply_type;
  PADDOCK_ASSIGN_OR_RETURN(std::string reply, Call(type, payload, nullptr, &reply_type, kFileCallBudget));
  int32_t err;
  std::string msg, body;
  if (reply_type != FrameType::kReply || !init::DecodeReply(reply, &err, &msg, &body))
    return Error(Code::kInternal, "malformed file reply from paddock-init");
  if (err != 0) return FileErrnoStatus(err, path, msg);
  return body;
}

Status InitClient::WriteFile(const std::string& path, std::string_view content, uint32_t mode,
                             bool make_parents) {
  init::WireWriter w;
  w.Str(path);
  w.U32(mode);
  w.U32(make_parents ? 1 : 0);
  w.Str(content);
  return FileCall(FrameType::kWriteFile, w.Take(), path).status();
}

Result<std::string> InitClient::ReadFile(const std::string& path, uint64_t max_bytes) {
  init::WireWriter w;
  w.Str(path);
  w.U64(max_bytes);
  return FileCall(FrameType::kReadFile, w.Take(), path);
}

Result<std::vector<FileInfo>> InitClient::ListDir(const std::string& path) {
  init::WireWriter w;
  w.Str(path);
  PADDOCK_ASSIGN_OR_RETURN(std::string body, FileCall(FrameType::kListDir, w.Take(), path));
  init::WireReader r(body);
  uint32_t n;
  if (!r.U32(&n)) return Error(Code::kInternal, "malformed listing from paddock-init");
  std::vector<FileInfo> out(n);
  for (auto& f : out)
    if (!init::DecodeFileInfo(r, &f)) return Error(Code::kInternal, "malformed listing from paddock-init");
  return out;
}

Result<FileInfo> InitClient::Stat(const std::string& path) {
  init::WireWriter w;
  w.Str(path);
  PADDOCK_ASSIGN_OR_RETURN(std::string body, FileCall(FrameType::kStat, w.Take(), path));
  init::WireReader r(body);
  FileInfo f;
  if (!init::DecodeFileInfo(r, &f)) return Error(Code::kInternal, "malformed stat from paddock-init");
  return f;
}

Status InitClient::StartEgress(EgressProxy* proxy) {
  {
    std::lock_guard lock(mu_);
    if (egress_) return Error(Code::kFailedPrecondition, "egress is already started for this sandbox");
    egress_ = std::make_unique<EgressTunnel>(
        proxy, [this](FrameType type, uint32_t id, std::string_view payload) {
          std::lock_guard wl(write_mu_);
          return init::WriteFrame(channel_.get(), type, id, payload);
        });
  }
  FrameType reply_type;
  PADDOCK_ASSIGN_OR_RETURN(std::string reply,
                           Call(FrameType::kEgressListen, "", nullptr, &reply_type, kFileCallBudget));
  int32_t err;
  std::string msg, body;
  if (reply_type != FrameType::kReply || !init::DecodeReply(reply, &err, &msg, &body))
    return Error(Code::kInternal, "malformed egress reply from paddock-init");
  if (err != 0) return Error(Code::kInternal, "starting egress in the guest: {}", msg.empty() ? std::strerror(err) : msg);
  return Status::Ok();
}

Result<Usage> InitClient::GuestUsage() {
  PADDOCK_ASSIGN_OR_RETURN(std::string body, FileCall(FrameType::kUsage, "", "usage"));
  init::WireReader r(body);
  Usage u;
  if (!r.U64(&u.memory_bytes) || !r.U64(&u.cpu_time_us) || !r.U32(&u.pids))
    return Error(Code::kInternal, "malformed usage from paddock-init");
  return u;
}

}  // namespace paddock
