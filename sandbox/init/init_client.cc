#include "sandbox/init/init_client.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

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

std::chrono::milliseconds InitClient::ExecBudget(const ExecRequest& req, std::chrono::milliseconds grace) {
  uint32_t timeout = req.timeout_ms ? req.timeout_ms : kDefaultExecTimeoutMs;
  return std::chrono::milliseconds(timeout) + grace;
}

InitClient::InitClient(UniqueFd channel, InitClientOptions options)
    : options_(options), channel_(std::move(channel)) {}

InitClient::~InitClient() {
  Close();
  if (reader_.joinable()) reader_.join();
  // After the reader (which feeds it); the closed channel fails any frame it
  // is still sending, so its thread ends.
  if (egress_) egress_->Stop();
}

Result<std::unique_ptr<InitClient>> InitClient::Start(UniqueFd channel, const init::SetupConfig& setup,
                                                      int timeout_ms, InitClientOptions options) {
  // One deadline for the whole exchange: a peer that stops reading the setup,
  // or sends part of its hello and stops, is given up on in time.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  if (!init::WriteFrameBy(channel.get(), FrameType::kSetup, 0, init::EncodeSetup(setup), {}, deadline)) {
    if (errno == ETIMEDOUT)
      return Error(Code::kDeadlineExceeded, "paddock-init did not read its setup within {} ms", timeout_ms);
    return ErrnoError("sending setup to paddock-init");
  }
  init::Frame f;
  if (!init::ReadFrameBy(channel.get(), &f, kSmallReply, deadline)) {
    if (errno == ETIMEDOUT)
      return Error(Code::kDeadlineExceeded, "paddock-init did not report ready within {} ms", timeout_ms);
    if (errno == EMSGSIZE)
      return Error(Code::kInternal, "paddock-init's first frame is larger than {} bytes (a broken or hostile peer)",
                   kSmallReply);
    return Error(Code::kInternal,
                 "paddock-init exited during setup (is the paddock-init binary valid? "
                 "run paddockd with --log-level debug)");
  }
  int32_t err;
  std::string msg, payload;
  if (f.type != FrameType::kHello || !init::DecodeReply(f.payload, &err, &msg, &payload))
    return Error(Code::kInternal, "paddock-init sent an unexpected first frame");
  if (err != 0) return Error(Code::kInternal, "sandbox setup failed inside the sandbox: {}", msg);
  return Attach(std::move(channel), options);
}

std::unique_ptr<InitClient> InitClient::Attach(UniqueFd channel, InitClientOptions options) {
  auto client = std::unique_ptr<InitClient>(new InitClient(std::move(channel), options));
  client->reader_ = std::thread([c = client.get()] { c->ReaderLoop(); });
  return client;
}

Status AwaitGuestReady(int channel, std::chrono::steady_clock::time_point deadline) {
  init::Frame f;
  errno = 0;
  if (!init::ReadFrameBy(channel, &f, 0, deadline)) {
    if (errno == ETIMEDOUT) return Error(Code::kDeadlineExceeded, "the guest did not report ready in time");
    if (errno == EMSGSIZE) return Error(Code::kInternal, "the guest's first frame is not an empty kReady");
    return Error(Code::kInternal, "QEMU exited before the guest reported ready");
  }
  if (f.type != FrameType::kReady) return Error(Code::kInternal, "the guest's first frame is not kReady");
  return Status::Ok();
}

uint64_t InitClient::FrameLimit(FrameType type, uint32_t id) {
  switch (type) {
    case FrameType::kStdout:
    case FrameType::kStderr: return init::kMaxOutputChunk;
    // Egress frames over their own bounds close only their connection (the
    // tunnel's rule); these caps bound what is read to find that out.
    case FrameType::kEgressData: return 2 * init::kEgressMaxData;
    case FrameType::kEgressOpen:
    case FrameType::kEgressCredit:
    case FrameType::kEgressClose: return 4096;
    case FrameType::kExecDone:
    case FrameType::kReply:
    case FrameType::kStub: {
      std::lock_guard lock(mu_);
      auto it = pending_.find(id);
      // A late answer to a call that gave up: read and dropped, bounded only
      // by the frame cap (and by what the peer really sends).
      return it == pending_.end() ? init::kMaxFrame : it->second->max_reply;
    }
    default: return 0;  // a frame only the daemon sends: ignored if empty
  }
}

void InitClient::Break(const std::string& reason) {
  {
    std::lock_guard lock(mu_);
    if (broken_.empty()) broken_ = reason;
  }
  spdlog::warn("sandbox channel broken: {}", reason);
  Close();
}

std::string InitClient::broken_reason() const {
  std::lock_guard lock(mu_);
  return broken_;
}

Status InitClient::BrokenStatus() const {
  std::string why = broken_reason();
  if (why.empty())
    return Error(Code::kUnavailable, "the sandbox's init process exited during the call; destroy the sandbox and create a new one");
  return Error(Code::kUnavailable, "the sandbox's channel was closed: {}; destroy the sandbox and create a new one", why);
}

void InitClient::ReaderLoop() {
  init::Frame f;
  std::vector<int> raw_fds;
  uint32_t claimed = 0;
  auto limit = [this](FrameType t, uint32_t id) { return FrameLimit(t, id); };
  for (;;) {
    init::FrameRead got = init::ReadFrameLimited(channel_.get(), &f, &raw_fds, limit, &claimed);
    if (got == init::FrameRead::kClosed) break;
    if (got == init::FrameRead::kTooLarge) {
      uint64_t max = FrameLimit(f.type, f.id);
      Break(max == 0 ? fmt::format("paddock-init sent a frame of {} bytes of type {}, a type only the daemon sends",
                                   claimed, static_cast<uint32_t>(f.type))
                     : fmt::format("paddock-init sent a frame of {} bytes (type {}) where at most {} are allowed",
                                   claimed, static_cast<uint32_t>(f.type), std::min<uint64_t>(max, init::kMaxFrame)));
      break;
    }
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
  // A broken channel is dead from the moment it is broken; its reader notices
  // the shutdown a little later.
  std::lock_guard lock(mu_);
  return !dead_ && broken_.empty();
}

void InitClient::Close() {
  // The reader sees EOF and marks the client dead itself, so no output
  // callback can still be running once a waiting call returns.
  if (channel_.valid()) ::shutdown(channel_.get(), SHUT_RDWR);
}

Result<std::string> InitClient::Call(FrameType type, const std::string& payload,
                                     const OutputCallback* on_output, FrameType* reply_type,
                                     std::chrono::milliseconds budget, uint64_t max_reply,
                                     const std::function<bool()>* cancelled,
                                     const std::vector<int>& fds, std::vector<UniqueFd>* received) {
  if (payload.size() > init::kMaxFrame)
    return Error(Code::kInvalidArgument, "a request of {} bytes for the sandbox (at most {})", payload.size(),
                 init::kMaxFrame);
  const auto deadline = std::chrono::steady_clock::now() + budget;
  auto p = std::make_shared<Pending>();
  p->on_output = on_output;
  p->max_reply = std::min<uint64_t>(max_reply, init::kMaxFrame);
  uint32_t id;
  {
    std::lock_guard lock(mu_);
    if (dead_) {
      if (!broken_.empty())
        return Error(Code::kUnavailable, "the sandbox's channel was closed: {}; destroy the sandbox and create a new one", broken_);
      return Error(Code::kUnavailable, "the sandbox's init process has exited; destroy the sandbox and create a new one");
    }
    id = next_id_++;
    pending_[id] = p;
  }
  bool sent;
  int send_errno = 0;
  {
    std::lock_guard lock(write_mu_);
    sent = init::WriteFrameBy(channel_.get(), type, id, payload, fds, deadline);
    if (!sent) send_errno = errno;
  }
  if (!sent && send_errno == ETIMEDOUT) {
    // Part of the frame may be out: the stream cannot be used again.
    Break(fmt::format("paddock-init stopped reading its channel (a request could not be sent within {} ms)",
                      budget.count()));
    std::lock_guard lock(mu_);
    pending_.erase(id);
    return Error(Code::kDeadlineExceeded,
                 "the sandbox stopped reading its channel: a request could not be sent within {} ms; the "
                 "sandbox's channel is closed (destroy it and create a new one)",
                 budget.count());
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
      init::WriteFrameBy(channel_.get(), FrameType::kCancel, cancel_id, w.Take(), {},
                         std::chrono::steady_clock::now() + std::chrono::seconds(5));
    }
    cancel_sent = true;
    lock.lock();
  };
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
      if (options_.hostile_peer) {
        // A guest that does not answer in time is not trusted with later calls.
        lock.unlock();
        Break(fmt::format("paddock-init did not answer within {} ms", budget.count()));
        lock.lock();
        cv_.wait(lock, [&] { return dead_; });
      } else if (on_output) {
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
    lock.unlock();
    return BrokenStatus();
  }
  *reply_type = p->type;
  if (received) *received = std::move(p->fds);
  return std::move(p->payload);
}

namespace {
// A reply that does not decode: the peer broke the protocol.
constexpr const char* kMalformed = "a malformed reply from paddock-init";
}  // namespace

namespace {
// An exec's result: both streams at their cap, and the fixed fields.
uint64_t MaxExecReply(const ExecRequest& req) {
  uint64_t cap = req.output_cap ? req.output_cap : kDefaultOutputCap;
  cap = std::min<uint64_t>(cap, init::kMaxFrame);
  return 2 * cap + InitClient::kSmallReply;
}
}  // namespace

Result<ExecResult> InitClient::Exec(const ExecRequest& req, const OutputCallback& on_output) {
  ExecRequest r = req;
  r.stream = static_cast<bool>(on_output);
  FrameType type;
  PADDOCK_ASSIGN_OR_RETURN(std::string payload,
                           Call(FrameType::kExec, init::EncodeExec(r), on_output ? &on_output : nullptr, &type,
                                ExecBudget(req, options_.exec_grace), MaxExecReply(req),
                                req.cancelled ? &req.cancelled : nullptr));
  ExecResult result;
  if (type != FrameType::kExecDone || !init::DecodeResult(payload, &result)) {
    Break(std::string(kMalformed) + " (exec result)");
    return Error(Code::kInternal, "malformed exec result from paddock-init; the sandbox's channel is closed");
  }
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
  PADDOCK_ASSIGN_OR_RETURN(std::string payload, Call(FrameType::kTakeStub, w.Take(), nullptr, &type,
                                                     options_.file_call_budget, kSmallReply, nullptr,
                                                     cgroup_procs, &fds));
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
  // The control socket comes from inside the sandbox's namespaces: it is used
  // only as the socket it must be, nonblocking, with deadlines (stub_exec.cc).
  const int ctl = fds[init::kStubControl].get();
  struct stat st {};
  if (fstat(ctl, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    syscall(SYS_pidfd_send_signal, fds[init::kStubPidfd].get(), SIGKILL, nullptr, 0);
    return Error(Code::kInternal, "the function zygote handed over an exec stub whose control fd is not a socket");
  }
  fcntl(ctl, F_SETFL, fcntl(ctl, F_GETFL) | O_NONBLOCK);
  return fds;
}

Result<std::string> InitClient::FileCall(FrameType type, const std::string& payload, const std::string& path,
                                         uint64_t max_reply) {
  FrameType reply_type;
  PADDOCK_ASSIGN_OR_RETURN(std::string reply,
                           Call(type, payload, nullptr, &reply_type, options_.file_call_budget, max_reply));
  int32_t err;
  std::string msg, body;
  if (reply_type != FrameType::kReply || !init::DecodeReply(reply, &err, &msg, &body)) {
    Break(std::string(kMalformed) + " (file call)");
    return Error(Code::kInternal, "malformed file reply from paddock-init; the sandbox's channel is closed");
  }
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
  return FileCall(FrameType::kReadFile, w.Take(), path,
                  std::min<uint64_t>(max_bytes, init::kMaxFrame) + kSmallReply);
}

Result<std::vector<FileInfo>> InitClient::ListDir(const std::string& path) {
  init::WireWriter w;
  w.Str(path);
  // A listing is as long as the directory is (paddock-init bounds it by the frame cap).
  PADDOCK_ASSIGN_OR_RETURN(std::string body, FileCall(FrameType::kListDir, w.Take(), path, init::kMaxFrame));
  init::WireReader r(body);
  uint32_t n;
  // Each entry takes at least 28 bytes: a count beyond what the body holds
  // is a lie, refused before anything is allocated for it.
  constexpr size_t kMinEntry = 4 + 4 + 8 + 4 + 8;
  if (!r.U32(&n) || n > body.size() / kMinEntry) {
    Break(std::string(kMalformed) + " (listing)");
    return Error(Code::kInternal, "malformed listing from paddock-init; the sandbox's channel is closed");
  }
  std::vector<FileInfo> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    FileInfo f;
    if (!init::DecodeFileInfo(r, &f)) {
      Break(std::string(kMalformed) + " (listing)");
      return Error(Code::kInternal, "malformed listing from paddock-init; the sandbox's channel is closed");
    }
    out.push_back(std::move(f));
  }
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
          bool ok = init::WriteFrameBy(channel_.get(), type, id, payload, {},
                                       std::chrono::steady_clock::now() + options_.file_call_budget);
          if (!ok && errno == ETIMEDOUT) Break("paddock-init stopped reading its channel (egress data)");
          return ok;
        });
  }
  FrameType reply_type;
  PADDOCK_ASSIGN_OR_RETURN(std::string reply,
                           Call(FrameType::kEgressListen, "", nullptr, &reply_type, options_.file_call_budget,
                                kSmallReply));
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
  if (!r.U64(&u.memory_bytes) || !r.U64(&u.cpu_time_us) || !r.U32(&u.pids)) {
    Break(std::string(kMalformed) + " (usage)");
    return Error(Code::kInternal, "malformed usage from paddock-init; the sandbox's channel is closed");
  }
  return u;
}

}  // namespace paddock
