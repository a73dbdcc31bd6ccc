#include "sandbox/container/freezer.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "sandbox/linux/fs_util.h"

namespace paddock {

namespace {

constexpr auto kFreezeTimeout = std::chrono::seconds(5);
constexpr const char* kFreezerHierarchy = "/sys/fs/cgroup/freezer";

std::string FreezerDir(const std::string& root_name, const std::string& name) {
  return fmt::format("{}/{}/{}", kFreezerHierarchy, root_name, name);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  if (!out) return ErrnoError("opening " + path);
  out << text;
  out.flush();
  if (!out) return ErrnoError("writing " + path);
  return Status::Ok();
}

std::set<std::string> Pids(const std::string& procs_file) {
  std::set<std::string> out;
  std::istringstream in(Slurp(procs_file));
  std::string pid;
  while (in >> pid) out.insert(pid);
  return out;
}

}  // namespace

Status SandboxFreezer::Freeze() {
  if (frozen_) return Status::Ok();
  if (cgroup_->dirs().empty()) return Error(Code::kFailedPrecondition, "sandbox has no cgroup");
  if (DetectCgroupVersion() == CgroupVersion::kV1) return FreezeV1();
  const std::string& dir = cgroup_->dirs().front();
  state_file_ = dir + "/cgroup.freeze";
  PADDOCK_RETURN_IF_ERROR(WriteText(state_file_, "1").Prefix("freezing the sandbox"));
  frozen_ = true;
  auto deadline = std::chrono::steady_clock::now() + kFreezeTimeout;
  while (Slurp(dir + "/cgroup.events").find("frozen 1") == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline) {
      Thaw();
      return Error(Code::kUnavailable, "the sandbox's processes did not freeze within 5 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return Status::Ok();
}

Status SandboxFreezer::FreezeV1() {
  if (access(kFreezerHierarchy, F_OK) != 0)
    return Error(Code::kFailedPrecondition,
                 "cgroup v1 without a freezer hierarchy at {}: cannot stop the sandbox's processes "
                 "while its files are read",
                 kFreezerHierarchy);
  std::string dir = FreezerDir(root_name_, name_);
  PADDOCK_RETURN_IF_ERROR(MkdirAll(dir));
  made_v1_dir_ = true;
  // Move every process of the sandbox in. A process forked meanwhile starts in
  // its parent's freezer cgroup or is seen on the next pass.
  std::string procs = cgroup_->dirs().front() + "/cgroup.procs";
  for (int pass = 0;; ++pass) {
    std::set<std::string> want = Pids(procs), have = Pids(dir + "/cgroup.procs");
    bool moved = false;
    for (const auto& pid : want) {
      if (have.count(pid)) continue;
      Status st = WriteText(dir + "/cgroup.procs", pid);
      (void)st;  // the process may have exited meanwhile
      moved = true;
    }
    if (!moved) break;
    if (pass > 100) return Error(Code::kUnavailable, "the sandbox's processes keep changing; cannot freeze it");
  }
  state_file_ = dir + "/freezer.state";
  PADDOCK_RETURN_IF_ERROR(WriteText(state_file_, "FROZEN").Prefix("freezing the sandbox"));
  frozen_ = true;
  auto deadline = std::chrono::steady_clock::now() + kFreezeTimeout;
  while (Slurp(state_file_).rfind("FROZEN", 0) != 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      Thaw();
      return Error(Code::kUnavailable, "the sandbox's processes did not freeze within 5 s");
    }
    Status st = WriteText(state_file_, "FROZEN");
    (void)st;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return Status::Ok();
}

void SandboxFreezer::Thaw() {
  if (!frozen_) return;
  frozen_ = false;
  bool v2 = state_file_.size() >= 6 && state_file_.compare(state_file_.size() - 6, 6, "freeze") == 0;
  Status st = WriteText(state_file_, v2 ? "0" : "THAWED");
  (void)st;
}

void SandboxFreezer::Remove() {
  Thaw();
  if (!made_v1_dir_) return;
  made_v1_dir_ = false;
  rmdir(FreezerDir(root_name_, name_).c_str());
}

std::vector<std::string> FreezerCgroupsUnder(const std::string& root_name) {
  std::vector<std::string> out;
  if (DetectCgroupVersion() != CgroupVersion::kV1) return out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(fmt::format("{}/{}", kFreezerHierarchy, root_name), ec))
    if (e.is_directory(ec)) out.push_back(e.path().string());
  return out;
}

int ReapFreezerCgroups(const std::string& root_name, std::vector<std::string>* errors) {
  int removed = 0;
  for (const auto& dir : FreezerCgroupsUnder(root_name)) {
    Status thaw = WriteText(dir + "/freezer.state", "THAWED");
    (void)thaw;  // already thawed, or gone meanwhile: the removal below says
    Status st = KillAndRemoveCgroupDir(dir);
    if (st.ok()) ++removed;
    else errors->push_back(st.Prefix("freezer cgroup").ToString());
  }
  return removed;
}

}  // namespace paddock
