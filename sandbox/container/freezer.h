// Freezes every process of one sandbox while its filesystem is read (snapshot),
// through the cgroup freezer: cgroup v2's cgroup.freeze on the sandbox's own
// cgroup, or on v1 a freezer-hierarchy cgroup of the same name that the
// sandbox's processes are moved into on first use (children stay in it).
#pragma once

#include <string>
#include <vector>

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

// The v1 freezer cgroups a daemon with cgroup root `root_name` made
// (/sys/fs/cgroup/freezer/ROOT_NAME/ct-ID, one per sandbox being snapshot);
// empty on cgroup v2 or without a freezer hierarchy.
std::vector<std::string> FreezerCgroupsUnder(const std::string& root_name);

// Start-up reaping after a crash (a SIGKILLed daemon leaves the snapshot's freezer
// cgroup behind, possibly FROZEN): thaws each one (a frozen process does not act on
// SIGKILL), kills what is in it and removes the directory. Returns how many were
// removed; failures are appended to `errors`.
int ReapFreezerCgroups(const std::string& root_name, std::vector<std::string>* errors);

}  // namespace paddock
