#include "sandbox/init/exec_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/init/egress_listener.h"
#include "sandbox/init/guest.h"
#include "sandbox/init/setup.h"

namespace paddock::init {

namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

uint64_t NowUs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

struct Job {
  uint32_t id = 0;
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1, in_fd = -1;
  std::string stdin_data;
  size_t stdin_off = 0;
  ExecResult result;
  uint64_t cap = kDefaultOutputCap;
  bool stream = false;
  uint64_t start_us = 0;
  uint64_t deadline_us = 0;
  uint64_t oom_kills_at_start = 0;  // microVM guest: the sandbox cgroup's count
  bool exited = false;
  // A file call run by a worker process: its stdout is the encoded reply.
  bool file_call = false;
  int exit_status = 0;
};

// A file call runs in a forked worker, never on the loop that serves every
// other call: whatever the path names (a FIFO, a tty, a slow /proc file) can
// stall only that worker, and the worker is killed at this deadline.
constexpr uint64_t kFileCallTimeoutMs = 20'000;

// The PID 1 of a function sandbox's execs, made ahead of time: already in
// its own pid and mount namespaces with a fresh /proc and scratch /tmp,
// waiting for a request. The daemon takes one per sandbox (kTakeStub) and
// runs that sandbox's execs on it, one after another, through its control
// socket; between two execs the stub leaves nothing of the first (see
// StubMain). The zygote only makes stubs and reaps them.
struct Stub {
  pid_t pid = -1;
  int ctl = -1;  // the zygote's end until handed over: the daemon's end of the stub's control socket
  void CloseAll() {
    if (ctl >= 0) close(ctl);
    ctl = -1;
  }
};
// Stubs kept ready per zygote. One: a sandbox keeps the stub of its first
// exec for all the others, so a ready stub serves a sandbox's first exec (or
// one of execs at once), and a second ready one, measured when each exec took
// a stub, served only bursts of takes while a new zygote spent the CPU of two
// stubs right after its first exec (a cold create→exec→destroy cycle paid).
constexpr size_t kReadyStubs = 1;

class Server {
 public:
  Server(int channel, const SetupConfig& config) : ch_(channel), cfg_(config), egress_(channel) {}
  int Run();

 private:
  void HandleFrame(const Frame& f);
  // recv on the channel that keeps any fds passed with the bytes (in order).
  ssize_t ReceiveWithFds(char* buf, size_t size);
  void StartExec(uint32_t id, ExecRequest req);
  // Function mode: moves a ready stub into the sandbox's cgroups and hands
  // its pipes and a pidfd to the daemon (kStub), which runs the exec itself.
  void TakeStub(uint32_t id, std::vector<int> cgroup_fds);
  [[noreturn]] void ExecChild(const ExecRequest& req, int in_r, int out_w, int err_w);
  bool SpawnStub(Stub* stub, std::string* err);
  [[noreturn]] void StubMain();
  // In a stub: runs one exec whose stdio are `fds`, then kills and reaps
  // whatever it left; fills `report`. False when the stub must not serve
  // another exec (it could not make the next exec's namespaces).
  bool StubExec(const ExecRequest& req, const std::vector<int>& fds, int64_t* report);
  std::string CommandCwd(const ExecRequest& req) const;
  [[noreturn]] void ExecCommand(const ExecRequest& req);
  void ReadOutput(Job& job, int* fd, int stream);
  void WriteStdin(Job& job);
  void ReapChildren();
  void CompleteJob(Job& job, int status, const struct rusage& ru);
  void FinishIfDone(Job& job);
  void KillTree(Job& job);
  void Reply(uint32_t id, int err, const std::string& msg, const std::string& payload = {});
  void StartFileCall(uint32_t id, FrameType type, const std::string& payload);
  // In the worker: the encoded reply of one file call.
  std::string FileCallReply(FrameType type, const std::string& payload) const;
  std::string WriteFileReply(const std::string& payload) const;
  std::string ReadFileReply(const std::string& payload) const;
  std::string ListDirReply(const std::string& payload) const;
  std::string StatReply(const std::string& payload) const;
  std::string Resolve(const std::string& path) const;
  // A memfd holding `bytes`, sealed against any change; -1 and `err` on failure.
  static int SealedProgram(const std::string& bytes, std::string* err);

  int ch_;
  int trusted_fd_ = -1;  // in an exec child: the sealed program to run
  SetupConfig cfg_;
  int sigfd_ = -1;
  std::map<uint32_t, std::unique_ptr<Job>> jobs_;
  std::map<pid_t, uint32_t> by_pid_;
  std::deque<Stub> stubs_;  // function mode: stubs ready for their exec
  bool namespaces_handed_out_ = false;  // function mode: a stub took the zygote's IPC and network namespaces
  std::deque<int> passed_fds_;  // received with the channel's bytes, not yet claimed by a frame
  EgressListener egress_;  // a microVM guest's connections to the daemon's proxy (when asked)
};

std::string Server::Resolve(const std::string& path) const {
  if (!path.empty() && path[0] == '/') return path;
  std::string base = cfg_.workdir.empty() ? "/" : cfg_.workdir;
  if (base.back() != '/') base.push_back('/');
  return base + path;
}

void Server::Reply(uint32_t id, int err, const std::string& msg, const std::string& payload) {
  WriteFrame(ch_, FrameType::kReply, id, EncodeReply(err, msg, payload));
}

int Server::Run() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  sigfd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  signal(SIGPIPE, SIG_IGN);

  std::string inbuf;
  std::vector<struct pollfd> fds;
  std::vector<std::pair<uint32_t, int>> owners;  // (job id, stream) per pollfd after the first two
  // The channel stays blocking for writes (the daemon always drains its end);
  // reads use MSG_DONTWAIT so the loop never stalls on a partial frame.
  for (;;) {
    fds.clear();
    owners.clear();
    fds.push_back({ch_, POLLIN, 0});
    fds.push_back({sigfd_, POLLIN, 0});
    uint64_t now = NowUs();
    int timeout_ms = -1;
    for (auto& [id, job] : jobs_) {
      if (job->out_fd >= 0) { fds.push_back({job->out_fd, POLLIN, 0}); owners.emplace_back(id, 1); }
      if (job->err_fd >= 0) { fds.push_back({job->err_fd, POLLIN, 0}); owners.emplace_back(id, 2); }
      if (job->in_fd >= 0) { fds.push_back({job->in_fd, POLLOUT, 0}); owners.emplace_back(id, 0); }
      if (!job->exited && job->deadline_us) {
        int64_t left = static_cast<int64_t>(job->deadline_us) - static_cast<int64_t>(now);
        int ms = left <= 0 ? 0 : static_cast<int>((left + 999) / 1000);
        if (timeout_ms < 0 || ms < timeout_ms) timeout_ms = ms;
      }
    }
    const size_t egress_at = fds.size();
    egress_.AddPollFds(&fds);
    int n = poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) return 1;

    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      for (;;) {
        ssize_t r = ReceiveWithFds(buf, sizeof buf);
        if (r < 0 && errno == ENOTSOCK) {
          // A microVM guest's virtio-serial port: poll said readable, so
          // one read does not block.
          r = read(ch_, buf, sizeof buf);
          if (r > 0) { inbuf.append(buf, static_cast<size_t>(r)); break; }
        }
        if (r > 0) { inbuf.append(buf, static_cast<size_t>(r)); continue; }
        if (r == 0) {
          // The daemon went away: nothing can be reported any more.
          for (auto& [id, job] : jobs_) KillTree(*job);
          return 0;
        }
        if (errno == EINTR) continue;
        break;
      }
      // Parse complete frames.
      size_t off = 0;
      while (inbuf.size() - off >= 12) {
        uint32_t hdr[3];
        std::memcpy(hdr, inbuf.data() + off, 12);
        if (hdr[0] > kMaxFrame) return 2;
        if (inbuf.size() - off - 12 < hdr[0]) break;
        Frame f{static_cast<FrameType>(hdr[1]), hdr[2], inbuf.substr(off + 12, hdr[0])};
        off += 12 + hdr[0];
        HandleFrame(f);
      }
      inbuf.erase(0, off);
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sigfd_, &si, sizeof si) == sizeof si) {
      }
      ReapChildren();
    }
    for (size_t i = 2; i < egress_at; ++i) {
      if (!fds[i].revents) continue;
      auto it = jobs_.find(owners[i - 2].first);
      if (it == jobs_.end()) continue;
      Job& job = *it->second;
      int stream = owners[i - 2].second;
      if (job.exited) continue;
      if (stream == 0) WriteStdin(job);
      else ReadOutput(job, stream == 1 ? &job.out_fd : &job.err_fd, stream);
    }
    egress_.HandlePoll(fds.data() + egress_at, fds.size() - egress_at);
    now = NowUs();
    std::vector<uint32_t> ids;
    for (auto& [id, job] : jobs_) ids.push_back(id);
    for (uint32_t id : ids) {
      auto it = jobs_.find(id);
      if (it == jobs_.end()) continue;
      Job& job = *it->second;
      if (!job.exited && job.deadline_us && now >= job.deadline_us && !job.result.timed_out) {
        job.result.timed_out = true;
        KillTree(job);
        if (job.file_call) {
          // Answered now; the worker is reaped whenever the kernel lets it go.
          job.exited = true;
          by_pid_.erase(job.pid);
          close(job.out_fd);
          job.out_fd = -1;
        }
      }
      FinishIfDone(job);
    }
  }
}

ssize_t Server::ReceiveWithFds(char* buf, size_t size) {
  std::vector<int> fds;
  bool truncated = false;
  ssize_t r = init::ReceiveWithFds(ch_, buf, size, MSG_DONTWAIT, &fds, &truncated);
  passed_fds_.insert(passed_fds_.end(), fds.begin(), fds.end());
  return r;
}

void Server::HandleFrame(const Frame& f) {
  switch (f.type) {
    case FrameType::kExec: {
      ExecRequest req;
      if (cfg_.mode == Mode::kFunction || !DecodeExec(f.payload, &req)) {
        // A function sandbox's execs run on a stub the daemon takes (kTakeStub).
        ExecResult r;
        r.exit_code = 127;
        r.stderr_data = "paddock-init: malformed exec request\n";
        WriteFrame(ch_, FrameType::kExecDone, f.id, EncodeResult(r));
        return;
      }
      StartExec(f.id, std::move(req));
      return;
    }
    case FrameType::kTakeStub: {
      // The fds came with this frame's header, after any earlier frame's.
      WireReader r(f.payload);
      uint32_t n = 0;
      std::vector<int> cgroup_fds;
      bool ok = r.U32(&n) && r.done() && n <= kMaxFrameFds && n <= passed_fds_.size();
      for (uint32_t i = 0; ok && i < n; ++i) {
        cgroup_fds.push_back(passed_fds_.front());
        passed_fds_.pop_front();
      }
      if (!ok || cfg_.mode != Mode::kFunction) {
        for (int fd : cgroup_fds) close(fd);
        return Reply(f.id, EINVAL, "malformed stub request");
      }
      return TakeStub(f.id, std::move(cgroup_fds));
    }
    case FrameType::kCancel: {
      WireReader r(f.payload);
      uint32_t target = 0;
      if (!r.U32(&target)) return;
      auto it = jobs_.find(target);
      if (it != jobs_.end()) KillTree(*it->second);  // reaped as usual, then reported
      return;
    }
    case FrameType::kWriteFile:
    case FrameType::kReadFile:
    case FrameType::kListDir:
    case FrameType::kStat: return StartFileCall(f.id, f.type, f.payload);
    case FrameType::kEgressListen: {
      // A microVM guest's sandbox (no network device): the daemon's proxy is
      // reached through the channel. Containers and zygotes get a listener
      // the daemon opens in their namespace itself.
      if (GuestCgroupFd() < 0) return Reply(f.id, ENOTSUP, "egress through the channel is for microVM guests");
      int e = egress_.Listen();
      return Reply(f.id, e, e ? std::string("listening on 127.0.0.1:3128 in the guest: ") + std::strerror(e) : "");
    }
    case FrameType::kEgressData:
    case FrameType::kEgressCredit:
    case FrameType::kEgressClose: return egress_.OnFrame(f);
    case FrameType::kUsage: {
      if (GuestCgroupFd() < 0) return Reply(f.id, ENOTSUP, "usage is read on the host for this sandbox");
      Usage u = GuestUsage();
      WireWriter w;
      w.U64(u.memory_bytes);
      w.U64(u.cpu_time_us);
      w.U32(u.pids);
      return Reply(f.id, 0, "", w.Take());
    }
    default: Reply(f.id, EINVAL, "unknown request type");
  }
}

void Server::StartExec(uint32_t id, ExecRequest req) {
  auto job = std::make_unique<Job>();
  job->id = id;
  job->cap = req.output_cap ? req.output_cap : kDefaultOutputCap;
  job->stream = req.stream;
  int in_p[2], out_p[2], err_p[2];
  if (pipe2(in_p, O_CLOEXEC) != 0 || pipe2(out_p, O_CLOEXEC) != 0 || pipe2(err_p, O_CLOEXEC) != 0) {
    job->result.exit_code = 127;
    job->result.stderr_data = std::string("paddock-init: pipe: ") + std::strerror(errno) + "\n";
    WriteFrame(ch_, FrameType::kExecDone, id, EncodeResult(job->result));
    return;
  }
  uint32_t timeout = req.timeout_ms ? req.timeout_ms : kDefaultExecTimeoutMs;
  job->start_us = NowUs();
  job->deadline_us = job->start_us + uint64_t{timeout} * 1000;
  job->oom_kills_at_start = GuestOomKills();
  int trusted = -1;
  if (!req.trusted_program.empty()) {
    // A sealed run: nothing the agent started may outlive this point (PID 1
    // of the namespace: kill(-1) reaches every process but us; their jobs
    // complete as they are reaped), and the program is ours, in memory.
    kill(-1, SIGKILL);
    // ...and are gone, not zombies still holding the pids limit and memory:
    // kill(-1, 0) fails with ESRCH once PID 1 is alone in its namespace.
    for (int i = 0; i < 2000 && kill(-1, 0) == 0; ++i) {
      ReapChildren();
      if (kill(-1, 0) != 0) break;
      struct timespec ms {0, 1'000'000};
      nanosleep(&ms, nullptr);
      kill(-1, SIGKILL);
    }
    std::string err;
    trusted = SealedProgram(req.trusted_program, &err);
    if (trusted < 0) {
      for (int fd : {in_p[0], in_p[1], out_p[0], out_p[1], err_p[0], err_p[1]}) close(fd);
      job->result.exit_code = 127;
      job->result.stderr_data = "paddock-init: " + err + "\n";
      WriteFrame(ch_, FrameType::kExecDone, id, EncodeResult(job->result));
      return;
    }
    req.trusted_program.clear();
  }
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr));
  if (pid == 0) {
    trusted_fd_ = trusted;
    ExecChild(req, in_p[0], out_p[1], err_p[1]);
  }
  if (trusted >= 0) close(trusted);
  close(in_p[0]);
  close(out_p[1]);
  close(err_p[1]);
  if (pid < 0) {
    close(in_p[1]);
    close(out_p[0]);
    close(err_p[0]);
    job->result.exit_code = 127;
    job->result.stderr_data = std::string("paddock-init: cannot start process: ") + std::strerror(errno) + "\n";
    WriteFrame(ch_, FrameType::kExecDone, id, EncodeResult(job->result));
    return;
  }
  job->pid = pid;
  job->out_fd = out_p[0];
  job->err_fd = err_p[0];
  SetNonBlocking(job->out_fd);
  SetNonBlocking(job->err_fd);
  job->stdin_data = std::move(req.stdin_data);
  if (job->stdin_data.empty()) {
    close(in_p[1]);
  } else {
    job->in_fd = in_p[1];
    SetNonBlocking(job->in_fd);
  }
  by_pid_[pid] = id;
  jobs_[id] = std::move(job);
}

// In a container exec's child: wire up stdio and a fresh session (the
// timeout kills the session's process group). Failures print to the exec's
// stderr and exit 127, the way a shell reports a command it cannot run.
void Server::ExecChild(const ExecRequest& req, int in_r, int out_w, int err_w) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  dup2(in_r, 0);
  dup2(out_w, 1);
  dup2(err_w, 2);
  if (GuestCgroupFd() >= 0) {
    // The guest's sandbox init is never the OOM victim; its commands are.
    int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (adj >= 0 && write(adj, "0", 1) < 0) {
    }
    if (adj >= 0) close(adj);
  }
  if (trusted_fd_ >= 0) {
    // Kept on fd 3, close-on-exec: execveat runs it, the command never sees it.
    if (dup3(trusted_fd_, 3, O_CLOEXEC) != 3) _exit(127);
    trusted_fd_ = 3;
    syscall(SYS_close_range, 4, ~0U, 0);
  } else {
    syscall(SYS_close_range, 3, ~0U, 0);
  }
  setsid();
  ExecCommand(req);
}

// Everything a command launch needs, built before the launch so that the
// launch itself makes only system calls (it may run in a vfork child).
struct PreparedCommand {
  std::string cwd, cwd_error_prefix, exec_error_prefix, not_found_message;
  std::vector<std::string> env_strs, args, candidates;
  std::vector<char*> envp, argv;
};

namespace {
void WriteErrTo(int fd, const char* a, const char* b = "", const char* c = "") {
  for (const char* p : {a, b, c}) {
    ssize_t ignored = write(fd, p, std::strlen(p));
    (void)ignored;
  }
}
void WriteErr(const char* a, const char* b = "", const char* c = "") { WriteErrTo(2, a, b, c); }

PreparedCommand PrepareCommand(const ExecRequest& req, const SetupConfig& cfg, const std::string& cwd) {
  PreparedCommand c;
  c.cwd = cwd;
  c.cwd_error_prefix = "paddock-init: cwd " + cwd + ": ";
  std::map<std::string, std::string> env;
  env["PATH"] = kDefaultPath;
  env["HOME"] = "/root";
  for (const auto& [k, v] : cfg.env) env[k] = v;
  for (const auto& [k, v] : req.env) env[k] = v;
  for (const auto& [k, v] : env) c.env_strs.push_back(k + "=" + v);
  for (auto& e : c.env_strs) c.envp.push_back(e.data());
  c.envp.push_back(nullptr);
  c.args = req.argv;
  if (!req.shell.empty()) c.args = {"/bin/sh", "-c", req.shell};
  if (c.args.empty()) c.args = {""};
  for (auto& a : c.args) c.argv.push_back(a.data());
  c.argv.push_back(nullptr);
  const std::string& prog = c.args[0];
  c.exec_error_prefix = "paddock-init: " + prog + ": ";
  c.not_found_message = "paddock-init: " + prog + ": command not found\n";
  if (prog.find('/') != std::string::npos) {
    c.candidates.push_back(prog);
  } else if (!prog.empty()) {
    const std::string& path = env["PATH"];
    size_t start = 0;
    while (start <= path.size()) {
      size_t end = path.find(':', start);
      if (end == std::string::npos) end = path.size();
      std::string dir = path.substr(start, end - start);
      c.candidates.push_back((dir.empty() ? "." : dir) + "/" + prog);
      start = end + 1;
    }
  }
  return c;
}

// System calls only: safe in a vfork child.
[[noreturn]] void LaunchCommand(PreparedCommand& c) {
  if (chdir(c.cwd.c_str()) != 0) {
    WriteErr(c.cwd_error_prefix.c_str(), std::strerror(errno), "\n");
    _exit(127);
  }
  int last_err = ENOENT;
  for (const auto& cand : c.candidates) {
    execve(cand.c_str(), c.argv.data(), c.envp.data());
    if (errno != ENOENT && errno != ENOTDIR) last_err = errno;
  }
  if (last_err == ENOENT) WriteErr(c.not_found_message.c_str());
  else WriteErr(c.exec_error_prefix.c_str(), std::strerror(last_err), "\n");
  _exit(127);
}
}  // namespace

namespace {
[[noreturn]] void Die(const std::string& msg) {
  std::string line = "paddock-init: " + msg + "\n";
  ssize_t ignored = write(2, line.data(), line.size());
  (void)ignored;
  _exit(127);
}
}  // namespace

namespace {
// Capabilities a stub keeps for what it does between execs: new IPC and
// network namespaces (SYS_ADMIN), loopback up (NET_ADMIN), fresh scratch
// mounts (SYS_ADMIN), killing what an exec left (KILL), and dropping them
// all from the bounding set in each command's child (SETPCAP).
constexpr uint64_t kStubCapabilities = (1ull << CAP_SYS_ADMIN) | (1ull << CAP_NET_ADMIN) |
                                       (1ull << CAP_KILL) | (1ull << CAP_SETPCAP);

// In a command's vfork child: system calls only. The command keeps no
// capability (none in its bounding set either, so an exec as the namespace's
// root gains none) and runs under seccomp.
bool ShedStubPrivileges(const struct sock_fprog& seccomp) {
  for (int cap : {CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_KILL, CAP_SETPCAP})
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return false;
  struct __user_cap_header_struct hdr {};
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  struct __user_cap_data_struct none[2] {};
  if (syscall(SYS_capset, &hdr, none) != 0) return false;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return seccomp.len == 0 ||
         syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &seccomp) == 0;
}
}  // namespace

// One exec on a stub (the PID 1 of its sandbox's execs, see StubMain): runs
// the command as its child, enforces the timeout itself (so that it can
// still collect the killed command's usage; the daemon's deadline is only a
// backstop), and once the command is reaped kills and reaps everything else
// in the pid namespace, so nothing outlives the exec.
bool Server::StubExec(const ExecRequest& req, const std::vector<int>& fds, int64_t* report) {
  PreparedCommand command = PrepareCommand(req, cfg_, CommandCwd(req));
  struct rlimit cpu {};
  cpu.rlim_cur = cpu.rlim_max = (uint64_t{req.timeout_ms} + 999) / 1000 + 1;
  struct sock_fprog seccomp {};
  seccomp.len = static_cast<unsigned short>(cfg_.seccomp_bpf.size() / sizeof(struct sock_filter));
  seccomp.filter = reinterpret_cast<struct sock_filter*>(cfg_.seccomp_bpf.data());
  // vfork: the child shares our memory until it execs, so it makes system calls only.
  pid_t cmd = vfork();
  if (cmd == 0) {
    dup2(fds[0], 0);
    dup2(fds[1], 1);
    dup2(fds[2], 2);
    syscall(SYS_close_range, 3, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (setrlimit(RLIMIT_CPU, &cpu) != 0 || !ShedStubPrivileges(seccomp)) {
      WriteErr("paddock-init: dropping privileges for the command: ", std::strerror(errno), "\n");
      _exit(127);
    }
    LaunchCommand(command);
  }
  if (cmd < 0) WriteErrTo(fds[2], "paddock-init: fork: ", std::strerror(errno), "\n");
  for (int fd : fds) close(fd);  // only the command holds the exec's stdio
  // The next exec's IPC and network namespaces, made while this command
  // runs: this exec keeps the ones it started in, the next gets new ones (a
  // sandbox with egress keeps the zygote's network namespace, where the
  // daemon's proxy listens).
  std::string err;
  const bool renewed = RenewExecNamespaces(cfg_.network_per_exec, &err);
  int status = 127 << 8;  // what a shell reports for a command it could not start
  struct rusage usage {};
  bool timed_out = false;
  if (cmd > 0) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += req.timeout_ms / 1000;
    deadline.tv_nsec += static_cast<long>(req.timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000; }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    for (;;) {
      int st = 0;
      struct rusage ru {};
      pid_t pid = wait4(-1, &st, WNOHANG, &ru);
      if (pid == cmd) {
        status = st;
        usage = ru;
        break;
      }
      if (pid > 0) continue;  // an orphan of the command
      if (pid < 0 && errno != EINTR) break;
      if (timed_out) {
        sigwaitinfo(&chld, nullptr);
        continue;
      }
      struct timespec now, left;
      clock_gettime(CLOCK_MONOTONIC, &now);
      left.tv_sec = deadline.tv_sec - now.tv_sec;
      left.tv_nsec = deadline.tv_nsec - now.tv_nsec;
      if (left.tv_nsec < 0) { left.tv_sec--; left.tv_nsec += 1000000000; }
      if (left.tv_sec < 0 || sigtimedwait(&chld, nullptr, &left) < 0) {
        if (left.tv_sec >= 0 && errno == EINTR) continue;
        if (left.tv_sec >= 0 && errno != EAGAIN) continue;
        timed_out = true;
        kill(-1, SIGKILL);  // everything in this pid namespace but us
      }
    }
  }
  // Nothing of this exec reaches the next: every process it left is killed
  // and reaped (orphans are re-parented to us, the namespace's PID 1), again
  // and again until none is left, so that one forked meanwhile dies too.
  for (;;) {
    kill(-1, SIGKILL);
    pid_t pid = waitpid(-1, nullptr, 0);
    if (pid < 0 && errno == ECHILD) break;
    if (pid < 0 && errno != EINTR) break;
  }
  report[0] = status;
  report[1] = usage.ru_utime.tv_sec * 1000000 + usage.ru_utime.tv_usec;
  report[2] = usage.ru_stime.tv_sec * 1000000 + usage.ru_stime.tv_usec;
  report[3] = usage.ru_maxrss;
  report[4] = timed_out ? 1 : 0;
  return renewed;
}

std::string Server::CommandCwd(const ExecRequest& req) const {
  return req.cwd.empty() ? (cfg_.workdir.empty() ? "/" : cfg_.workdir) : Resolve(req.cwd);
}

void Server::ExecCommand(const ExecRequest& req) {
  PreparedCommand c = PrepareCommand(req, cfg_, CommandCwd(req));
  if (trusted_fd_ >= 0) {
    if (chdir(c.cwd.c_str()) != 0) {
      WriteErr(c.cwd_error_prefix.c_str(), std::strerror(errno), "\n");
      _exit(127);
    }
    syscall(SYS_execveat, trusted_fd_, "", c.argv.data(), c.envp.data(), AT_EMPTY_PATH);
    WriteErr("paddock-init: running the trusted program: ", std::strerror(errno), "\n");
    _exit(127);
  }
  LaunchCommand(c);
}

void Server::TakeStub(uint32_t id, std::vector<int> cgroup_fds) {
  struct CloseFds {
    std::vector<int>& fds;
    ~CloseFds() { for (int fd : fds) close(fd); }
  } close_fds{cgroup_fds};
  Stub stub;
  for (int attempt = 0; attempt < 3 && stub.pid < 0; ++attempt) {
    std::string err;
    if (!stubs_.empty()) {
      stub = stubs_.front();
      stubs_.pop_front();
    } else if (!SpawnStub(&stub, &err)) {
      return Reply(id, EAGAIN, "cannot start an exec stub: " + err);
    }
    // Into the sandbox's own cgroups before it reads its request: the
    // command and everything it forks count against this sandbox's limits,
    // not against the zygote that other sandboxes share.
    const std::string pid_text = std::to_string(stub.pid);
    int join_errno = 0;
    for (int fd : cgroup_fds) {
      if (write(fd, pid_text.data(), pid_text.size()) != static_cast<ssize_t>(pid_text.size())) {
        join_errno = errno;
        break;
      }
    }
    if (join_errno == 0) break;
    stub.CloseAll();
    kill(stub.pid, SIGKILL);
    stub.pid = -1;
    if (join_errno != ESRCH)  // ESRCH: that stub died while idle, take another
      return Reply(id, join_errno, "joining the sandbox's cgroup");
  }
  if (stub.pid < 0) return Reply(id, EAGAIN, "no exec stub could be made ready");
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, stub.pid, 0));
  if (pidfd < 0) {
    int e = errno;
    stub.CloseAll();
    kill(stub.pid, SIGKILL);
    return Reply(id, e, "pidfd_open for an exec stub");
  }
  std::vector<int> fds(kStubFds);
  fds[kStubControl] = stub.ctl;
  fds[kStubPidfd] = pidfd;
  WireWriter w;
  w.U32(kStubFds);
  WriteFrameWithFds(ch_, FrameType::kStub, id, w.Take(), fds);
  // The daemon holds the stub now; we stay its parent and reap it when it
  // exits (ReapChildren forgets pids it does not know).
  stub.CloseAll();
  close(pidfd);
  // Make the next stubs while this one runs.
  while (stubs_.size() < kReadyStubs) {
    Stub next;
    std::string err;
    if (!SpawnStub(&next, &err)) break;
    stubs_.push_back(next);
  }
}

bool Server::SpawnStub(Stub* stub, std::string* err) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    *err = std::string("socketpair: ") + std::strerror(errno);
    return false;
  }
  // Its own pid namespace makes the timeout kill the whole tree and lets the
  // stub, its PID 1, kill and reap everything an exec left; its own mount
  // namespace gives it a fresh /proc, /tmp and /dev/shm that no other stub
  // sees. Each exec then has IPC and network namespaces of its own (System V
  // IPC, message queues, abstract unix sockets and loopback ports reach no
  // other exec, of this sandbox or of another sharing the zygote): the stub
  // makes the next exec's while the current one runs (StubExec). (A sandbox
  // with egress has a zygote of its own; its execs share that zygote's
  // network namespace, where the daemon's proxy listens.)
  //
  // The zygote's own IPC and network namespaces are as new as any: made with
  // it, holding nothing (the zygote opens no socket, IPC object or port; its
  // channel was made in the daemon's namespaces). So its first stub takes
  // them for its first exec instead of making two more, which are most of a
  // clone's cost (1.0 and 0.3 ms here). A new zygote's first exec, the one a
  // cold create waits for, is the one this saves.
  unsigned long fresh = CLONE_NEWIPC | (cfg_.network_per_exec ? CLONE_NEWNET : 0);
  if (!namespaces_handed_out_) fresh = 0;
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | fresh | SIGCHLD,
                                         nullptr, nullptr, nullptr, nullptr));
  if (pid == 0) {
    // The control socket on 3, stdio on /dev/null, nothing else.
    int ctl = fcntl(sv[1], F_DUPFD, 100);
    int devnull = open("/dev/null", O_RDWR);
    if (ctl < 0 || devnull < 0) _exit(127);
    for (int fd = 0; fd < 3; ++fd) dup2(devnull, fd);
    dup2(ctl, 3);
    syscall(SYS_close_range, 4, ~0U, 0);
    StubMain();
  }
  close(sv[1]);
  if (pid < 0) {
    *err = std::string("clone: ") + std::strerror(errno);
    close(sv[0]);
    return false;
  }
  namespaces_handed_out_ = true;
  stub->pid = pid;
  stub->ctl = sv[0];
  return true;
}

// A function sandbox's stub: the PID 1 of its execs. It serves one exec
// after another on its control socket (fd 3) until the daemon closes it.
// Between two execs it leaves nothing of the first: every process killed and
// reaped (StubExec), new IPC and network namespaces, and /tmp and /dev/shm
// replaced by fresh ones unless provably untouched. What the execs of one
// stub share is its pid namespace (empty between them; pid numbers go on)
// and its mount namespace, which no command can change (no capability).
void Server::StubMain() {
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_SETMASK, &chld, nullptr);
  signal(SIGPIPE, SIG_DFL);
  setsid();
  std::string err;
  const uint64_t disk = cfg_.limits.disk_bytes ? cfg_.limits.disk_bytes : kDefaultDiskBytes;
  const uint64_t shm = ShmBytes(disk);
  ScratchMark tmp_mark, shm_mark;
  if (!MountFreshProcAndScratch(disk, &err) || !MarkScratch("/tmp", &tmp_mark, &err) ||
      !MarkScratch("/dev/shm", &shm_mark, &err))
    Die(err);
  uint64_t mem = cfg_.limits.memory_bytes ? cfg_.limits.memory_bytes : kDefaultMemoryBytes;
  // No RLIMIT_NPROC: it counts per user of the zygote's user namespace, which
  // every sandbox sharing the zygote shares; the sandbox's own pids cgroup
  // (joined before the first command runs) is the process limit.
  // The memory cgroup is the memory limit (an overrun is an OOM kill, reported
  // as such); RLIMIT_AS only stops address-space bombs, with room for
  // runtimes that reserve far more than they touch. Set here, they hold for
  // every command (children inherit them).
  uint64_t as = std::max<uint64_t>(mem * 4, mem + (4ull << 30));
  struct { int res; uint64_t v; } lims[] = {
      {RLIMIT_AS, as}, {RLIMIT_FSIZE, disk}, {RLIMIT_NOFILE, 1024}, {RLIMIT_CORE, 0}};
  for (auto& l : lims) {
    // A limit above the inherited hard limit cannot be raised to from a user
    // namespace: the hard limit is then the limit (the cgroup still enforces
    // the spec's pids and memory).
    struct rlimit cur {};
    uint64_t v = l.v;
    if (getrlimit(l.res, &cur) == 0 && cur.rlim_max != RLIM_INFINITY && v > cur.rlim_max) v = cur.rlim_max;
    struct rlimit rl{v, v};
    if (setrlimit(l.res, &rl) != 0) Die("setrlimit: " + std::string(std::strerror(errno)));
  }
  // The stub keeps only the capabilities it needs between execs, and none a
  // command could reach: not dumpable, so no command can ptrace it or open
  // its /proc files; each command's child drops the rest (StubExec).
  if (!DropCapabilities(kStubCapabilities, &err)) Die(err);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  for (;;) {
    Frame f;
    std::vector<int> fds;
    if (!ReadFrameWithFds(3, &f, &fds)) _exit(0);  // the daemon let go of this stub
    ExecRequest req;
    if (f.type != FrameType::kExec || fds.size() != kStubExecFds || !DecodeExec(f.payload, &req)) _exit(0);
    int64_t report[kStubReportWords] = {};
    const bool again = StubExec(req, fds, report);
    if (send(3, report, sizeof report, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof report) || !again) _exit(0);
    if ((!ScratchUntouched("/tmp", tmp_mark) && !RenewScratch("/tmp", disk, &tmp_mark, &err)) ||
        (!ScratchUntouched("/dev/shm", shm_mark) && !RenewScratch("/dev/shm", shm, &shm_mark, &err)))
      Die(err);
  }
}

void Server::ReadOutput(Job& job, int* fd, int stream) {
  char buf[65536];
  std::string& dst = stream == 1 ? job.result.stdout_data : job.result.stderr_data;
  bool& truncated = stream == 1 ? job.result.stdout_truncated : job.result.stderr_truncated;
  for (;;) {
    ssize_t r = read(*fd, buf, sizeof buf);
    if (r > 0) {
      size_t room = dst.size() < job.cap ? job.cap - dst.size() : 0;
      size_t keep = std::min(room, static_cast<size_t>(r));
      if (keep < static_cast<size_t>(r)) truncated = true;
      if (keep == 0) continue;  // past the cap: drain and discard so the writer never blocks
      if (job.stream)
        WriteFrame(ch_, stream == 1 ? FrameType::kStdout : FrameType::kStderr, job.id,
                   std::string_view(buf, keep));
      dst.append(buf, keep);
      continue;
    }
    if (r < 0 && (errno == EINTR)) continue;
    if (r < 0 && errno == EAGAIN) return;
    close(*fd);  // EOF or error
    *fd = -1;
    return;
  }
}

void Server::WriteStdin(Job& job) {
  while (job.stdin_off < job.stdin_data.size()) {
    ssize_t w = write(job.in_fd, job.stdin_data.data() + job.stdin_off,
                      job.stdin_data.size() - job.stdin_off);
    if (w > 0) { job.stdin_off += static_cast<size_t>(w); continue; }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) return;
    break;  // EPIPE: the process closed its stdin
  }
  close(job.in_fd);
  job.in_fd = -1;
  job.stdin_data.clear();
}

void Server::ReapChildren() {
  for (;;) {
    int status = 0;
    struct rusage ru {};
    pid_t pid = wait4(-1, &status, WNOHANG, &ru);
    if (pid <= 0) return;
    auto it = by_pid_.find(pid);
    if (it == by_pid_.end()) {
      // An orphan re-parented to us, or an idle stub that died: forget it.
      for (auto st = stubs_.begin(); st != stubs_.end(); ++st) {
        if (st->pid != pid) continue;
        st->CloseAll();
        stubs_.erase(st);
        break;
      }
      continue;
    }
    auto jt = jobs_.find(it->second);
    by_pid_.erase(it);
    if (jt == jobs_.end()) continue;
    Job& job = *jt->second;
    if (!job.exited) CompleteJob(job, status, ru);
  }
}

// Fills in the result of an exec (or a file call's worker) whose process is
// gone, from its wait status and usage.
void Server::CompleteJob(Job& job, int status, const struct rusage& ru) {
  job.exited = true;
  by_pid_.erase(job.pid);
  job.result.cpu_time_us = static_cast<uint64_t>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
                           static_cast<uint64_t>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  job.result.peak_memory_bytes = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  if (WIFEXITED(status)) {
    job.result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    job.result.exit_code = -1;
    job.result.signal = WTERMSIG(status);
    if (job.result.signal == SIGKILL && !job.result.timed_out && GuestCgroupFd() >= 0 &&
        GuestOomKills() > job.oom_kills_at_start)
      job.result.oom_killed = true;
  }
  job.result.wall_time_us = NowUs() - job.start_us;
  // Whatever the process wrote before exiting is in the pipes now; processes
  // it left in the background do not hold the exec open.
  if (job.out_fd >= 0) ReadOutput(job, &job.out_fd, 1);
  if (job.err_fd >= 0) ReadOutput(job, &job.err_fd, 2);
  for (int* fd : {&job.out_fd, &job.err_fd, &job.in_fd}) {
    if (*fd >= 0) { close(*fd); *fd = -1; }
  }
}

void Server::KillTree(Job& job) {
  if (job.pid <= 0 || job.exited) return;
  kill(-job.pid, SIGKILL);  // the exec's process group (it called setsid)
  kill(job.pid, SIGKILL);
}

void Server::FinishIfDone(Job& job) {
  if (!job.exited) return;
  if (job.file_call) {
    std::string reply = std::move(job.result.stdout_data);
    if (job.result.timed_out) {
      reply = EncodeReply(ETIMEDOUT, "the file call did not finish within " +
                                         std::to_string(kFileCallTimeoutMs / 1000) + " s", "");
    } else if (job.result.signal != 0 || job.result.exit_code != 0 || reply.empty() ||
               job.result.stdout_truncated) {
      reply = EncodeReply(EIO, "the file call's worker failed", "");
    }
    WriteFrame(ch_, FrameType::kReply, job.id, reply);
    jobs_.erase(job.id);
    return;
  }
  if (job.stream) {
    job.result.stdout_data.clear();
    job.result.stderr_data.clear();
  }
  WriteFrame(ch_, FrameType::kExecDone, job.id, EncodeResult(job.result));
  jobs_.erase(job.id);
}

void Server::StartFileCall(uint32_t id, FrameType type, const std::string& payload) {
  int out_p[2];
  if (pipe2(out_p, O_CLOEXEC) != 0) return Reply(id, errno, "pipe for a file call");
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr));
  if (pid == 0) {
    // The worker keeps only its pipe (on fd 1): not the channel, nor the
    // pipes of other calls (a copy of an exec's stdin would delay its EOF).
    if (dup2(out_p[1], 1) != 1) _exit(1);
    syscall(SYS_close_range, 2, ~0U, 0);
    // Init's OOM protection (a microVM guest's -1000) is not the worker's.
    if (int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC); adj >= 0) {
      if (write(adj, "0", 1) < 0) {
      }
      close(adj);
    }
    std::string reply = FileCallReply(type, payload);
    size_t off = 0;
    while (off < reply.size()) {
      ssize_t w = write(1, reply.data() + off, reply.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) _exit(1);
      off += static_cast<size_t>(w);
    }
    _exit(0);
  }
  close(out_p[1]);
  if (pid < 0) {
    int e = errno;
    close(out_p[0]);
    return Reply(id, e, "starting a file call (the sandbox may be at its process limit)");
  }
  auto job = std::make_unique<Job>();
  job->id = id;
  job->file_call = true;
  job->pid = pid;
  // The reply carries at most kMaxFrame bytes; a longer one is a failure.
  job->cap = kMaxFrame;
  job->start_us = NowUs();
  job->deadline_us = job->start_us + kFileCallTimeoutMs * 1000;
  job->out_fd = out_p[0];
  SetNonBlocking(job->out_fd);
  by_pid_[pid] = id;
  jobs_[id] = std::move(job);
}

int Server::SealedProgram(const std::string& bytes, std::string* err) {
  int fd = static_cast<int>(syscall(SYS_memfd_create, "paddock-trusted", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (fd < 0) {
    *err = std::string("memfd_create: ") + std::strerror(errno);
    return -1;
  }
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t w = write(fd, bytes.data() + off, bytes.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      *err = std::string("writing the trusted program: ") + std::strerror(errno);
      close(fd);
      return -1;
    }
    off += static_cast<size_t>(w);
  }
  if (fchmod(fd, 0555) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) != 0) {
    *err = std::string("sealing the trusted program: ") + std::strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

std::string Server::FileCallReply(FrameType type, const std::string& payload) const {
  switch (type) {
    case FrameType::kWriteFile: return WriteFileReply(payload);
    case FrameType::kReadFile: return ReadFileReply(payload);
    case FrameType::kListDir: return ListDirReply(payload);
    case FrameType::kStat: return StatReply(payload);
    default: return EncodeReply(EINVAL, "unknown file call", "");
  }
}

namespace {

// Every path of the file API resolves inside the sandbox's root: ".." and
// absolute symlinks stop at the root, and /proc's magic links (/proc/self/fd,
// /proc/1/root, ...) are refused, so no descriptor of init's and nothing
// outside the root is reachable by name. Opens never block (O_NONBLOCK) and
// never take a controlling terminal (O_NOCTTY).
// Set when OpenInRoot refused a path on procfs or sysfs (the worker is
// single-threaded and lives for one call).
bool refused_pseudo_fs = false;

// Nothing on /proc or /sys is the file API's business: a function zygote's
// /proc lists every exec of every sandbox sharing it (their command lines and
// environments), and a container's tools can read its own /proc anyway.
int OpenInRoot(const std::string& path, uint64_t flags, uint64_t mode = 0) {
  static const int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  struct open_how how {};
  // openat2 refuses O_PATH with any flag but O_DIRECTORY and O_NOFOLLOW.
  how.flags = flags | O_CLOEXEC | ((flags & O_PATH) ? 0 : O_NOCTTY);
  how.mode = mode;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  int fd;
  do {
    fd = static_cast<int>(syscall(SYS_openat2, root, path.c_str(), &how, sizeof how));
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return fd;
  struct statfs fs {};
  if (fstatfs(fd, &fs) != 0 || fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC) {
    close(fd);
    refused_pseudo_fs = true;
    errno = EACCES;
    return -1;
  }
  return fd;
}

const char* KindOf(mode_t m) {
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISLNK(m)) return "a symlink";
  return "not a regular file";
}

std::string NotRegular(const std::string& path, mode_t m) {
  int err = S_ISDIR(m) ? EISDIR : EINVAL;
  return EncodeReply(err, path + " is " + KindOf(m) +
                              ": the file API reads and writes regular files only", "");
}

std::string ErrnoReply(int err, const std::string& path) {
  if (refused_pseudo_fs)
    return EncodeReply(EINVAL, path + " is on /proc or /sys, which the file API does not read or write "
                                      "(run a command in the sandbox instead)", "");
  if (err == ENXIO)
    return EncodeReply(EINVAL, path + " is a FIFO, socket or device: the file API reads and writes regular files only", "");
  if (err == ELOOP)
    return EncodeReply(err, path + ": the path goes through a /proc magic link or too many symlinks", "");
  return EncodeReply(err, path, "");
}

// Opens `path` in the root for reading or writing: "" with *fd and *st set
// for a regular file, else the encoded reply refusing it (nothing left open).
std::string OpenRegular(const std::string& path, uint64_t flags, uint64_t mode, int* fd, struct stat* st) {
  *fd = OpenInRoot(path, flags, mode);
  if (*fd < 0) return ErrnoReply(errno, path);
  std::string refused;
  if (fstat(*fd, st) != 0) refused = ErrnoReply(errno, path);
  else if (!S_ISREG(st->st_mode)) refused = NotRegular(path, st->st_mode);
  if (!refused.empty()) close(*fd);
  return refused;
}

// Creates each missing directory above `path` (inside the root).
int MakeParents(const std::string& path) {
  size_t pos = 0;
  while ((pos = path.find('/', pos + 1)) != std::string::npos) {
    std::string dir = path.substr(0, pos);
    int fd = OpenInRoot(dir, O_PATH | O_DIRECTORY);
    if (fd >= 0) { close(fd); continue; }
    if (errno != ENOENT) return errno;
    size_t slash = dir.find_last_of('/');
    std::string parent = slash == 0 ? "/" : dir.substr(0, slash);
    int pfd = OpenInRoot(parent, O_PATH | O_DIRECTORY);
    if (pfd < 0) return errno;
    int rc = mkdirat(pfd, dir.c_str() + slash + 1, 0755);
    int e = errno;
    close(pfd);
    if (rc != 0 && e != EEXIST) return e;
  }
  return 0;
}

}  // namespace

std::string Server::WriteFileReply(const std::string& payload) const {
  WireReader r(payload);
  std::string path, content;
  uint32_t mode, parents;
  if (!r.Str(&path) || !r.U32(&mode) || !r.U32(&parents) || !r.Str(&content))
    return EncodeReply(EINVAL, "malformed write request", "");
  path = Resolve(path);
  if (parents) {
    if (int e = MakeParents(path); e != 0) return ErrnoReply(e, "creating the directories of " + path);
  }
  // No O_TRUNC: a FIFO or device is refused before anything is written.
  int fd;
  struct stat st;
  if (std::string refused = OpenRegular(path, O_WRONLY | O_CREAT | O_NONBLOCK, mode ? mode : 0644, &fd, &st);
      !refused.empty())
    return refused;
  if (ftruncate(fd, 0) != 0) { int e = errno; close(fd); return ErrnoReply(e, path); }
  size_t off = 0;
  while (off < content.size()) {
    ssize_t w = write(fd, content.data() + off, content.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      return ErrnoReply(e, path);
    }
    off += static_cast<size_t>(w);
  }
  if (mode) fchmod(fd, mode);
  close(fd);
  WireWriter w;
  w.U64(content.size());
  return EncodeReply(0, "", w.Take());
}

std::string Server::ReadFileReply(const std::string& payload) const {
  WireReader r(payload);
  std::string path;
  uint64_t max;
  if (!r.Str(&path) || !r.U64(&max)) return EncodeReply(EINVAL, "malformed read request", "");
  path = Resolve(path);
  int fd;
  struct stat st;
  if (std::string refused = OpenRegular(path, O_RDONLY | O_NONBLOCK, 0, &fd, &st); !refused.empty()) return refused;
  if (static_cast<uint64_t>(st.st_size) > max) {
    close(fd);
    return EncodeReply(EFBIG, path + " is " + std::to_string(st.st_size) +
                                  " bytes, more than the limit of " + std::to_string(max), "");
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { int e = errno; close(fd); return ErrnoReply(e, path); }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max) {
      close(fd);
      return EncodeReply(EFBIG, path + " is larger than the limit of " + std::to_string(max), "");
    }
  }
  close(fd);
  return EncodeReply(0, "", out);
}

FileInfo InfoFromStat(const std::string& name, const struct stat& st) {
  FileInfo f;
  f.name = name;
  f.type = S_ISREG(st.st_mode)   ? FileType::kRegular
           : S_ISDIR(st.st_mode) ? FileType::kDirectory
           : S_ISLNK(st.st_mode) ? FileType::kSymlink
                                 : FileType::kOther;
  f.size = static_cast<uint64_t>(st.st_size);
  f.mode = st.st_mode & 07777;
  f.mtime_unix_ms = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
  return f;
}

std::string Server::ListDirReply(const std::string& payload) const {
  WireReader r(payload);
  std::string path;
  if (!r.Str(&path)) return EncodeReply(EINVAL, "malformed list request", "");
  path = Resolve(path);
  int fd = OpenInRoot(path, O_RDONLY | O_DIRECTORY | O_NONBLOCK);
  if (fd < 0) return ErrnoReply(errno, path);
  DIR* d = fdopendir(fd);
  if (!d) { int e = errno; close(fd); return ErrnoReply(e, path); }
  std::vector<FileInfo> entries;
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    entries.push_back(InfoFromStat(name, st));
  }
  closedir(d);
  WireWriter w;
  w.U32(static_cast<uint32_t>(entries.size()));
  std::string out = w.Take();
  for (const auto& f : entries) out += EncodeFileInfo(f);
  return EncodeReply(0, "", out);
}

std::string Server::StatReply(const std::string& payload) const {
  WireReader r(payload);
  std::string path;
  if (!r.Str(&path)) return EncodeReply(EINVAL, "malformed stat request", "");
  path = Resolve(path);
  // O_PATH|O_NOFOLLOW: the entry itself (a symlink is reported as one).
  int fd = OpenInRoot(path, O_PATH | O_NOFOLLOW);
  if (fd < 0) return ErrnoReply(errno, path);
  struct stat st;
  int rc = fstatat(fd, "", &st, AT_EMPTY_PATH);
  int e = errno;
  close(fd);
  if (rc != 0) return ErrnoReply(e, path);
  size_t slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty()) name = "/";
  return EncodeReply(0, "", EncodeFileInfo(InfoFromStat(name, st)));
}

}  // namespace

int ServeChannel(int channel_fd, const SetupConfig& config) {
  Server s(channel_fd, config);
  return s.Run();
}

}  // namespace paddock::init
