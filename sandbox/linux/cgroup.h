// One cgroup per sandbox (or per function zygote) under the daemon's subtree,
// with memory, pids and cpu limits, on cgroup v1 (memory, pids, cpu, cpuacct
// hierarchies) or v2 (the unified hierarchy, when it has those controllers).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/types.h"

namespace paddock {

enum class CgroupVersion { kV1, kV2 };

// Which hierarchy this machine gives us; detected once.
CgroupVersion DetectCgroupVersion();

class Cgroup {
 public:
  // Creates <root_name>/<name> in every hierarchy we use and applies `limits`.
  static Result<Cgroup> Create(const std::string& root_name, const std::string& name,
                               const Limits& limits);
  Cgroup() = default;
  Cgroup(Cgroup&&) noexcept = default;
  Cgroup& operator=(Cgroup&&) noexcept = default;

  Status AddProcess(pid_t pid) const;
  // Its cgroup.procs files, opened for writing (one per hierarchy): whoever
  // holds them can move a process it sees into this cgroup, with the
  // opener's permission (the kernel checks the credentials of the open).
  Result<std::vector<UniqueFd>> OpenProcsFiles() const;
  Usage ReadUsage() const;
  // Number of OOM kills the kernel has made in this cgroup so far.
  uint64_t OomKills() const;
  // Kills every process in it and removes it. Idempotent.
  Status Destroy();
  // For a cgroup whose processes are already gone (its pid namespace died):
  // hands the directories to a background remover, because on cgroup v1 an
  // rmdir waits out an RCU grace period (~10 ms) that need not be on the
  // caller's path. FlushCgroupRemovals() waits for them.
  void DestroyInBackground();
  const std::vector<std::string>& dirs() const { return dirs_; }

 private:
  std::vector<std::string> dirs_;  // one per hierarchy
  CgroupVersion version_ = CgroupVersion::kV1;
  std::string memory_dir_, pids_dir_, cpu_dir_, cpuacct_dir_;
};

// Waits until every cgroup handed to DestroyInBackground is removed.
void FlushCgroupRemovals();

// Removes the daemon's subtree root in every hierarchy when it is empty (at
// shutdown, once the sandboxes' cgroups are gone); a root still in use stays.
void RemoveCgroupRootIfEmpty(const std::string& root_name);

// Every cgroup directory under the daemon's subtree (for the start-up reaper).
std::vector<std::string> CgroupDirsUnder(const std::string& root_name);
// Kills the processes of one cgroup dir, waits for it to empty, removes it.
Status KillAndRemoveCgroupDir(const std::string& dir);

}  // namespace paddock
