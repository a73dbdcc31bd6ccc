// Start-up reaper: finds what a crashed earlier daemon left behind under its
// state directory and cgroup subtree (processes, mounts, cgroups, directories),
// removes it, and logs what it removed.
#pragma once

#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace paddock {

struct ReapReport {
  int processes_killed = 0;
  int mounts_removed = 0;
  int cgroups_removed = 0;
  int dirs_removed = 0;
  std::vector<std::string> errors;
};

ReapReport ReapLeftovers(const SubstrateEnv& env);

}  // namespace paddock
