#include "sandbox/reaper.h"

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include <spdlog/spdlog.h>

#include "sandbox/container/freezer.h"
#include "sandbox/linux/cgroup.h"
#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/mounts.h"
#include "sandbox/microvm/microvm_substrate.h"

namespace fs = std::filesystem;

namespace paddock {

std::string SubstrateEnv::cgroup_root() const {
  std::error_code ec;
  std::string canon = fs::weakly_canonical(state_dir, ec).string();
  if (canon == "/var/lib/paddock") return "paddock";
  return fmt::format("paddock-{:08x}", std::hash<std::string>{}(canon) & 0xffffffffu);
}

ReapReport ReapLeftovers(const SubstrateEnv& env) {
  ReapReport report;
  // 0. v1 freezer cgroups of snapshots in progress: thawed first, since a frozen
  // process would not act on the SIGKILLs below; then removed like the others.
  report.cgroups_removed += ReapFreezerCgroups(env.cgroup_root(), &report.errors);
  // 1. Processes: every sandbox process lives in a cgroup of ours.
  for (const auto& dir : CgroupDirsUnder(env.cgroup_root())) {
    auto procs = ReadSmallFile(dir + "/cgroup.procs");
    if (procs.ok())
      for (char c : procs.value()) report.processes_killed += c == '\n';
    Status st = KillAndRemoveCgroupDir(dir);
    if (st.ok()) ++report.cgroups_removed;
    else report.errors.push_back(st.ToString());
  }
  // QEMU processes of microVMs are in cgroups of ours too; any that is not
  // (its cgroup could not be joined) is found by its command line.
  for (pid_t pid : StrayQemuProcesses(env.state_dir)) {
    if (kill(pid, SIGKILL) == 0) ++report.processes_killed;
  }
  // 2. Mounts: overlay roots and image views under the state dir.
  std::string state = fs::weakly_canonical(env.state_dir).string();
  for (const auto& m : MountsUnder(state)) {
    Status st = Unmount(m);
    if (st.ok()) ++report.mounts_removed;
    else report.errors.push_back(st.ToString());
  }
  // 3. Directories of sandboxes, zygotes and views.
  // microvm/templates: each template's saved device state, whose RAM half (a
  // sealed memfd) lived only as long as the daemon that made it;
  // microvm/forks: the saved state of a fork in progress. (microvm/paused is
  // kept: paused VMs outlive their daemon.)
  for (const char* sub : {"containers", "functions", "views/container", "views/function", "vms",
                          "microvm/templates", "microvm/forks"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(state + "/" + sub, ec)) {
      Status st = RemoveTree(e.path().string());
      if (st.ok()) ++report.dirs_removed;
      else report.errors.push_back(st.ToString());
    }
  }
  // The caller logs the counts; each error is logged here.
  for (const auto& e : report.errors) spdlog::error("reaping leftovers: {}", e);
  return report;
}

}  // namespace paddock
