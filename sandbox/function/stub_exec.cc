#include "sandbox/function/stub_exec.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>

#include "sandbox/init/protocol.h"

namespace paddock {

namespace {

using Clock = std::chrono::steady_clock;
using init::StubFd;

// How long past its own timeout a stub may take to report before the daemon
// kills it, and how long a killed stub may take to close its status pipe.
constexpr auto kBackstop = std::chrono::seconds(2);
constexpr auto kAfterKill = std::chrono::seconds(5);
// A request that does not fit the stub's pipe within this long: the stub is gone.
constexpr auto kRequestWrite = std::chrono::seconds(5);

void Kill(const UniqueFd& pidfd) {
  if (pidfd.valid()) syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
}

// Writes to the stub's pipes may find their reader gone (a command that exits
// without reading its stdin): that must be EPIPE, not a SIGPIPE that kills a
// process which has not ignored it. SIGPIPE from a write goes to the writing
// thread, so blocking it here and discarding any pending one is enough.
class SigpipeBlocked {
 public:
  SigpipeBlocked() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old_);
  }
  ~SigpipeBlocked() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    if (!sigismember(&old_, SIGPIPE)) {
      struct timespec zero {};
      while (sigtimedwait(&pipe, nullptr, &zero) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlocked(const SigpipeBlocked&) = delete;
  SigpipeBlocked& operator=(const SigpipeBlocked&) = delete;

 private:
  sigset_t old_;
};

int MsUntil(Clock::time_point t) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 20));  // 20 ms: cancellation polling
}

// A pipe for one of the command's stdio streams: the daemon's end
// nonblocking, the command's end as it is (it goes to the stub).
bool MakePipe(UniqueFd* daemon_end, UniqueFd* command_end, bool daemon_writes) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return false;
  daemon_end->reset(daemon_writes ? p[1] : p[0]);
  command_end->reset(daemon_writes ? p[0] : p[1]);
  int flags = fcntl(daemon_end->get(), F_GETFL);
  fcntl(daemon_end->get(), F_SETFL, flags | O_NONBLOCK);
  return true;
}

}  // namespace

void DiscardStub(std::vector<UniqueFd>& stub) {
  if (stub.size() == init::kStubFds) Kill(stub[init::kStubPidfd]);
  stub.clear();
}

Result<ExecResult> RunOnStub(std::vector<UniqueFd>& stub, const ExecRequest& req_in, const OutputCallback& on_output,
                             uint32_t sandbox_root, bool* reusable) {
  *reusable = false;
  if (stub.size() != init::kStubFds) return Error(Code::kInternal, "an exec stub has {} fds", stub.size());
  // A socket, nonblocking: InitClient::TakeStub checked it once, when the stub was taken.
  const int ctl = stub[init::kStubControl].get();
  ExecRequest req = req_in;
  if (req.timeout_ms == 0) req.timeout_ms = kDefaultExecTimeoutMs;
  std::string stdin_data = std::move(req.stdin_data);
  req.stdin_data.clear();
  // A function exec is sealed by construction: a read-only root and nothing
  // left of any earlier exec, so the image's own tools are the trusted ones.
  req.trusted_program.clear();
  req.stream = false;
  std::string encoded = init::EncodeExec(req);
  if (encoded.size() > init::kMaxFrame)
    return Error(Code::kInvalidArgument, "exec request of {} bytes (at most {})", encoded.size(), init::kMaxFrame);
  UniqueFd in_w, in_r, out_r, out_w, err_r, err_w;
  if (!MakePipe(&in_w, &in_r, true) || !MakePipe(&out_r, &out_w, false) || !MakePipe(&err_r, &err_w, false))
    return Error(Code::kResourceExhausted, "pipes for a function exec: {}", std::strerror(errno));
  for (const UniqueFd* p : {&in_r, &out_w, &err_w})
    if (fchown(p->get(), sandbox_root, sandbox_root) != 0)
      return Error(Code::kInternal, "giving a function exec its pipes: {}", std::strerror(errno));

  const SigpipeBlocked no_sigpipe;
  const auto start = Clock::now();
  ExecResult result;
  if (!init::WriteFrameBy(ctl, init::FrameType::kExec, 0, encoded, {in_r.get(), out_w.get(), err_w.get()},
                          start + kRequestWrite)) {
    DiscardStub(stub);
    return Error(Code::kUnavailable, "the exec's stub did not take its request; create the sandbox again");
  }
  // Only the command holds these ends now: EOF on stdout and stderr once it
  // and everything it started are gone.
  in_r.reset();
  out_w.reset();
  err_w.reset();
  if (stdin_data.empty()) in_w.reset();

  const uint64_t cap = req.output_cap ? req.output_cap : kDefaultOutputCap;
  uint64_t kept_bytes[3] = {0, 0, 0};  // per stream, whether kept or streamed
  auto read_output = [&](UniqueFd& fd, int stream) {
    char buf[65536];
    std::string& dst = stream == 1 ? result.stdout_data : result.stderr_data;
    bool& truncated = stream == 1 ? result.stdout_truncated : result.stderr_truncated;
    uint64_t& kept = kept_bytes[stream];
    for (;;) {
      ssize_t r = read(fd.get(), buf, sizeof buf);
      if (r > 0) {
        size_t room = kept < cap ? static_cast<size_t>(cap - kept) : 0;
        size_t keep = std::min(room, static_cast<size_t>(r));
        if (keep < static_cast<size_t>(r)) truncated = true;
        if (keep == 0) continue;  // past the cap: drain and discard so the command never blocks
        kept += keep;
        if (on_output) on_output(stream, std::string_view(buf, keep));
        else dst.append(buf, keep);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EAGAIN) return;
      fd.reset();  // EOF or error
      return;
    }
  };

  size_t stdin_off = 0;
  int64_t report[init::kStubReportWords] = {};
  size_t report_got = 0;  // bytes of the report read so far
  bool reported = false, killed = false, cancelled = false;
  auto deadline = start + std::chrono::milliseconds(req.timeout_ms) + kBackstop;
  for (;;) {
    if (req.cancelled && !killed && req.cancelled()) {
      Kill(stub[init::kStubPidfd]);
      killed = cancelled = true;
      deadline = Clock::now() + kAfterKill;
    }
    struct pollfd pfds[4];
    int n = 0, out_i = -1, err_i = -1, in_i = -1;
    const int ctl_i = n;
    pfds[n++] = {ctl, POLLIN, 0};
    if (out_r.valid()) { out_i = n; pfds[n++] = {out_r.get(), POLLIN, 0}; }
    if (err_r.valid()) { err_i = n; pfds[n++] = {err_r.get(), POLLIN, 0}; }
    if (in_w.valid()) { in_i = n; pfds[n++] = {in_w.get(), POLLOUT, 0}; }
    int ready = poll(pfds, n, MsUntil(deadline));
    if (ready < 0 && errno != EINTR) break;
    if (out_i >= 0 && pfds[out_i].revents) read_output(out_r, 1);
    if (err_i >= 0 && pfds[err_i].revents) read_output(err_r, 2);
    if (in_i >= 0 && pfds[in_i].revents) {
      bool more = true;  // false: all written, or the command closed its stdin (EPIPE)
      while (more && stdin_off < stdin_data.size()) {
        ssize_t w = write(in_w.get(), stdin_data.data() + stdin_off, stdin_data.size() - stdin_off);
        if (w > 0) { stdin_off += static_cast<size_t>(w); continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        more = false;
      }
      if (!more || stdin_off == stdin_data.size()) in_w.reset();  // EOF for the command
    }
    if (pfds[ctl_i].revents) {
      ssize_t r;
      do r = read(ctl, reinterpret_cast<char*>(report) + report_got, sizeof report - report_got);
      while (r < 0 && errno == EINTR);
      if (r < 0 && errno == EAGAIN) continue;
      if (r > 0) report_got += static_cast<size_t>(r);
      reported = report_got == sizeof report;
      if (r > 0 && !reported) continue;
      break;  // the report, or EOF: the stub died without one
    }
    if (Clock::now() >= deadline) {
      if (killed) break;  // killed and still silent: give up on it
      Kill(stub[init::kStubPidfd]);
      killed = true;
      result.timed_out = true;
      deadline = Clock::now() + kAfterKill;
    }
  }
  // Whatever the command wrote is in the pipes now: the stub reports only
  // once every process of the exec is reaped, and a killed stub takes them
  // all with its pid namespace.
  if (out_r.valid()) read_output(out_r, 1);
  if (err_r.valid()) read_output(err_r, 2);
  result.wall_time_us = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
  if (reported) {
    int status = static_cast<int>(report[0]);
    if (report[4]) result.timed_out = true;
    result.cpu_time_us = static_cast<uint64_t>(report[1] + report[2]);
    result.peak_memory_bytes = static_cast<uint64_t>(report[3]) * 1024;
    if (WIFEXITED(status)) {
      result.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      result.exit_code = -1;
      result.signal = WTERMSIG(status);
    }
    *reusable = !killed;
  } else {
    // The stub died before reporting: killed (the backstop, a cancel, the
    // sandbox destroyed) or by the OOM killer, which the caller checks.
    result.exit_code = -1;
    result.signal = SIGKILL;
  }
  if (cancelled && !result.timed_out)
    return Error(Code::kCancelled, "the exec was cancelled and its command killed");
  return result;
}

}  // namespace paddock
