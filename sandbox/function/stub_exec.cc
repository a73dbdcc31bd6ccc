#include "sandbox/function/stub_exec.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
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

// Writes all of `data` to a nonblocking pipe, or false at `deadline`/error.
bool WriteAllBy(int fd, std::string_view data, Clock::time_point deadline) {
  while (!data.empty()) {
    ssize_t w = write(fd, data.data(), data.size());
    if (w > 0) {
      data.remove_prefix(static_cast<size_t>(w));
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno != EAGAIN) return false;
    if (Clock::now() >= deadline) return false;
    struct pollfd p {fd, POLLOUT, 0};
    poll(&p, 1, 20);
  }
  return true;
}

}  // namespace

void DiscardStub(std::vector<UniqueFd>& stub) {
  if (stub.size() == init::kStubFds) Kill(stub[init::kStubPidfd]);
  stub.clear();
}

Result<ExecResult> RunOnStub(std::vector<UniqueFd> stub, const ExecRequest& req_in, const OutputCallback& on_output,
                             const std::function<void()>& meanwhile) {
  if (stub.size() != init::kStubFds) return Error(Code::kInternal, "an exec stub has {} fds", stub.size());
  // The fds come from inside the sandbox's namespaces: use them only as the
  // pipes they must be (no blocking call on anything else).
  for (int i = 0; i < init::kStubPidfd; ++i) {
    struct stat st {};
    if (fstat(stub[i].get(), &st) != 0 || !S_ISFIFO(st.st_mode)) {
      DiscardStub(stub);
      return Error(Code::kInternal, "the function zygote handed over an exec stub whose fd {} is not a pipe", i);
    }
    int flags = fcntl(stub[i].get(), F_GETFL);
    fcntl(stub[i].get(), F_SETFL, flags | O_NONBLOCK);
  }
  ExecRequest req = req_in;
  if (req.timeout_ms == 0) req.timeout_ms = kDefaultExecTimeoutMs;
  std::string stdin_data = std::move(req.stdin_data);
  req.stdin_data.clear();
  // A function exec is sealed by construction: a read-only root and nothing
  // left of any earlier exec, so the image's own tools are the trusted ones.
  req.trusted_program.clear();
  req.stream = false;
  std::string encoded = init::EncodeExec(req);
  if (encoded.size() > init::kMaxFrame) {
    DiscardStub(stub);
    return Error(Code::kInvalidArgument, "exec request of {} bytes (at most {})", encoded.size(), init::kMaxFrame);
  }
  const uint32_t len = static_cast<uint32_t>(encoded.size());
  std::string framed(sizeof len, '\0');
  std::memcpy(framed.data(), &len, sizeof len);
  framed += encoded;

  const SigpipeBlocked no_sigpipe;
  const auto start = Clock::now();
  ExecResult result;
  if (!WriteAllBy(stub[init::kStubRequest].get(), framed, start + kRequestWrite)) {
    DiscardStub(stub);
    return Error(Code::kUnavailable, "the exec's stub did not take its request; create the sandbox again");
  }
  stub[init::kStubRequest].reset();
  if (stdin_data.empty()) stub[init::kStubStdin].reset();
  if (meanwhile) meanwhile();

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
    const int status_i = n;
    pfds[n++] = {stub[init::kStubStatus].get(), POLLIN, 0};
    if (stub[init::kStubStdout].valid()) { out_i = n; pfds[n++] = {stub[init::kStubStdout].get(), POLLIN, 0}; }
    if (stub[init::kStubStderr].valid()) { err_i = n; pfds[n++] = {stub[init::kStubStderr].get(), POLLIN, 0}; }
    if (stub[init::kStubStdin].valid()) { in_i = n; pfds[n++] = {stub[init::kStubStdin].get(), POLLOUT, 0}; }
    int ready = poll(pfds, n, MsUntil(deadline));
    if (ready < 0 && errno != EINTR) break;
    if (out_i >= 0 && pfds[out_i].revents) read_output(stub[init::kStubStdout], 1);
    if (err_i >= 0 && pfds[err_i].revents) read_output(stub[init::kStubStderr], 2);
    if (in_i >= 0 && pfds[in_i].revents) {
      bool more = true;  // false: all written, or the command closed its stdin (EPIPE)
      while (more && stdin_off < stdin_data.size()) {
        ssize_t w = write(stub[init::kStubStdin].get(), stdin_data.data() + stdin_off, stdin_data.size() - stdin_off);
        if (w > 0) { stdin_off += static_cast<size_t>(w); continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        more = false;
      }
      if (!more || stdin_off == stdin_data.size()) stub[init::kStubStdin].reset();  // EOF for the command
    }
    if (pfds[status_i].revents) {
      ssize_t r;
      do r = read(stub[init::kStubStatus].get(), report, sizeof report);
      while (r < 0 && errno == EINTR);
      if (r < 0 && errno == EAGAIN) continue;
      reported = r == static_cast<ssize_t>(sizeof report);
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
  // Whatever the command wrote before it exited is in the pipes now; processes
  // it left behind die with the stub's namespace and do not hold the exec open.
  for (auto [fd, stream] : {std::pair{init::kStubStdout, 1}, std::pair{init::kStubStderr, 2}})
    if (stub[fd].valid()) read_output(stub[fd], stream);
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
