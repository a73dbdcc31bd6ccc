// The daemon's end of paddock-init's spawner mode (see sandbox/init/spawner.h):
// new sandboxes are cloned from one long-lived, already exec'd paddock-init
// instead of being exec'd one by one. Restarted on demand if it dies.
#pragma once

#include <mutex>
#include <string>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/linux/process.h"

namespace paddock {

class Spawner {
 public:
  explicit Spawner(std::string init_path) : init_path_(std::move(init_path)) {}

  // A new process in fresh namespaces (`clone_flags`) whose fd 3 is a
  // duplicate of `channel_fd`. It waits for its setup frame on the channel:
  // write its id maps and join it to its cgroup first. Thread-safe.
  Result<ChildProcess> Spawn(unsigned long clone_flags, int channel_fd);

 private:
  Status StartLocked();
  Result<pid_t> RequestLocked(unsigned long clone_flags, int channel_fd);

  std::string init_path_;
  std::mutex mu_;
  UniqueFd control_;
  ChildProcess process_;
};

}  // namespace paddock
