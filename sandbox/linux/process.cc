#include "sandbox/linux/process.h"

#include <fcntl.h>
#include <poll.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

namespace paddock {

void ChildProcess::KillAndReap() {
  if (pid_ <= 0) return;
  if (pidfd_.valid()) syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  else kill(pid_, SIGKILL);
  if (!ours_) {
    // A pidfd becomes readable when its process has exited.
    struct pollfd p {pidfd_.get(), POLLIN, 0};
    while (pidfd_.valid() && poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    pidfd_.reset();
    return;
  }
  siginfo_t info;
  while (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED) != 0 && errno == EINTR) {
  }
  pid_ = -1;
  pidfd_.reset();
}

Result<ChildProcess> SpawnInNamespaces(const SpawnOptions& opts) {
  int sync[2];
  if (pipe2(sync, O_CLOEXEC) != 0) return ErrnoError("pipe");
  UniqueFd sync_r(sync[0]), sync_w(sync[1]);

  // Everything the child touches is prepared here: it must not allocate.
  std::vector<char*> argv;
  for (const auto& a : opts.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {const_cast<char*>("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nullptr};
  // The sandbox's root is an unprivileged host user that may not be able to
  // reach the binary's path (say, a build under /root): exec it through an
  // fd opened here, kept at a high number so that the fd shuffle below
  // cannot clobber it.
  UniqueFd program_file(open(opts.program.c_str(), O_RDONLY | O_CLOEXEC));
  if (!program_file.valid()) return ErrnoError("opening " + opts.program);
  UniqueFd program_fd(fcntl(program_file.get(), F_DUPFD_CLOEXEC, 10));
  if (!program_fd.valid()) return ErrnoError("duplicating program fd");
  program_file.reset();
  const int program = program_fd.get();
  // The sandbox must reach nothing of the daemon: not its log on fd 2, not
  // the operator's terminal. Its stdio is /dev/null (opened here, above the
  // fds the shuffle below writes) and it leaves our session (setsid).
  UniqueFd null_file(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null_file.valid()) return ErrnoError("opening /dev/null");
  UniqueFd null_fd(fcntl(null_file.get(), F_DUPFD_CLOEXEC, 10));
  if (!null_fd.valid()) return ErrnoError("duplicating /dev/null fd");
  null_file.reset();
  const int devnull = null_fd.get();
  const int channel = opts.channel_fd;
  const bool new_user = opts.clone_flags & CLONE_NEWUSER;

  const int sync_w_fd = sync_w.get();
  int pidfd = -1;
  struct clone_args args;
  std::memset(&args, 0, sizeof args);
  args.flags = opts.clone_flags | CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  long pid = syscall(SYS_clone3, &args, sizeof args);
  if (pid < 0) return ErrnoError("clone3 into new namespaces");
  if (pid == 0) {
    // Child. Raw system calls only. Drop our copy of the pipe's write end
    // first, so that a daemon killed before releasing us is an EOF here, not
    // a child that waits forever holding the daemon's descriptors.
    // (PR_SET_PDEATHSIG would follow the spawning thread, not the daemon.)
    close(sync_w_fd);
    char go;
    if (read(sync_r.get(), &go, 1) != 1) _exit(120);
    if (setsid() < 0) _exit(127);
    for (int std_fd = 0; std_fd <= 2; ++std_fd)
      if (dup2(devnull, std_fd) != std_fd) _exit(127);
    if (new_user) {
      if (syscall(SYS_setresgid, 0, 0, 0) != 0) _exit(121);
      if (syscall(SYS_setgroups, 0, nullptr) != 0) _exit(122);
      if (syscall(SYS_setresuid, 0, 0, 0) != 0) _exit(123);
    }
    if (channel >= 0) {
      if (channel == 3) {
        fcntl(3, F_SETFD, 0);
      } else if (dup2(channel, 3) != 3) {
        _exit(124);
      }
    }
    if (dup2(program, 4) != 4) _exit(126);
    syscall(SYS_close_range, 5, ~0U, 0);
    // Our own signal mask and dispositions must not leak into the sandbox.
    sigset_t none;
    sigemptyset(&none);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof(uint64_t));
    syscall(SYS_execveat, 4, "", argv.data(), envp, AT_EMPTY_PATH);
    _exit(125);
  }
  ChildProcess child(static_cast<pid_t>(pid), UniqueFd(pidfd));
  sync_r.reset();
  if (opts.before_exec) {
    Status st = opts.before_exec(child.pid());
    if (!st.ok()) return st;  // ~ChildProcess kills it
  }
  char go = 'g';
  if (write(sync_w.get(), &go, 1) != 1) return ErrnoError("releasing sandbox process");
  return child;
}

}  // namespace paddock
