// Freezes every process of one sandbox while its filesystem is read (snapshot),
// through the cgroup freezer: cgroup v2's cgroup.freeze on the sandbox's own
// cgroup, or on v1 a freezer-hierarchy cgroup of the same name that the
// sandbox's processes are moved into on first use (children stay in it).
#pragma once

#include <string>

#include "sandbox/base/status.h"
#include "sandbox/linux/cgroup.h"

namespace paddock {

class SandboxFreezer {
 public:
  // `cgroup` is the sandbox's cgroup; `root_name`/`name` as given to Cgroup::Create.
  SandboxFreezer(const Cgroup* cgroup, std::string root_name, std::string name)
      : cgroup_(cgroup), root_name_(std::move(root_name)), name_(std::move(name)) {}
  ~SandboxFreezer() { Thaw(); }

  // Returns once every process of the sandbox is frozen (or an error, thawed).
  Status Freeze();
  void Thaw();
  // Removes the v1 freezer cgroup (after the sandbox's processes are gone).
  void Remove();

 private:
  Status FreezeV1();
  const Cgroup* cgroup_;
  std::string root_name_, name_;
  std::string state_file_;  // where THAWED / 0 is written back
  bool frozen_ = false;
  bool made_v1_dir_ = false;
};

}  // namespace paddock
