#include "sandbox/linux/userns.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/linux/fs_util.h"

namespace paddock {

Status WriteIdMaps(pid_t pid, IdRange range) {
  std::string map = fmt::format("0 {} {}\n", range.host_base, range.count);
  std::string base = fmt::format("/proc/{}/", pid);
  PADDOCK_RETURN_IF_ERROR(WriteSmallFile(base + "uid_map", map).Prefix("writing uid_map"));
  PADDOCK_RETURN_IF_ERROR(WriteSmallFile(base + "gid_map", map).Prefix("writing gid_map"));
  return Status::Ok();
}

Result<UniqueFd> OpenUsernsWithMap(IdRange range) {
  // A throwaway child enters a new user namespace and waits; we map it, keep
  // an fd to its namespace, and kill it. It waits in pause(), not for EOF on
  // a pipe: a child cloned meanwhile by another thread (no exec, so
  // O_CLOEXEC does not apply) would hold the pipe's write end, and two such
  // calls at once then wait on each other forever.
  // It holds none of our fds, and dies with us if we die first.
  const pid_t parent = getpid();
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, nullptr));
  if (pid < 0) return ErrnoError("creating a user namespace");
  if (pid == 0) {
    syscall(SYS_close_range, 0, ~0U, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    for (;;) pause();
  }
  Status st = WriteIdMaps(pid, range);
  UniqueFd fd(open(fmt::format("/proc/{}/ns/user", pid).c_str(), O_RDONLY | O_CLOEXEC));
  int open_err = errno;
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  if (!st.ok()) return st;
  if (!fd.valid()) return ErrnoError("opening user namespace", open_err);
  return fd;
}

}  // namespace paddock
