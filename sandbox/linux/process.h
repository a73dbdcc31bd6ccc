// Starting paddock-init inside new namespaces, and owning the result.
#pragma once

#include <sys/types.h>

#include <functional>
#include <utility>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"

namespace paddock {

// A child process owned through a pidfd: the destructor kills and reaps it.
class ChildProcess {
 public:
  ChildProcess() = default;
  // `ours`: the process is our child (reaped with waitid); otherwise another
  // process reaps it and we only wait, through the pidfd, for it to be gone.
  ChildProcess(pid_t pid, UniqueFd pidfd, bool ours = true)
      : pid_(pid), pidfd_(std::move(pidfd)), ours_(ours) {}
  ChildProcess(ChildProcess&& o) noexcept
      : pid_(std::exchange(o.pid_, -1)), pidfd_(std::move(o.pidfd_)), ours_(o.ours_) {}
  ChildProcess& operator=(ChildProcess&& o) noexcept {
    if (this != &o) {
      KillAndReap();
      pid_ = o.pid_;
      o.pid_ = -1;
      pidfd_ = std::move(o.pidfd_);
      ours_ = o.ours_;
    }
    return *this;
  }
  ~ChildProcess() { KillAndReap(); }

  pid_t pid() const { return pid_; }
  bool valid() const { return pid_ > 0; }
  // SIGKILL then wait. Idempotent.
  void KillAndReap();

 private:
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  bool ours_ = true;
};

struct SpawnOptions {
  unsigned long clone_flags = 0;  // CLONE_NEW* flags
  std::string program;            // absolute path
  std::vector<std::string> argv;
  int channel_fd = -1;            // becomes fd 3 in the child
  // Called in the parent after the child exists and before it may exec:
  // writes id maps, joins cgroups. An error kills the child.
  std::function<Status(pid_t)> before_exec;
};

// clone3 into new namespaces; the child waits for `before_exec`, becomes root
// of its user namespace (when it has one), starts a session of its own with
// /dev/null as stdio (nothing of the daemon's fds or terminal), keeps only the
// channel, and execs `program`. Safe to call from a multithreaded process: the child
// makes only raw system calls before exec.
Result<ChildProcess> SpawnInNamespaces(const SpawnOptions& opts);

}  // namespace paddock
