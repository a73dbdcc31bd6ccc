#include "sandbox/linux/cgroup.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <filesystem>
#include <sstream>
#include <string_view>
#include <thread>

#include <spdlog/spdlog.h>

#include "sandbox/linux/fs_util.h"

namespace fs = std::filesystem;

namespace paddock {

namespace {
constexpr const char* kCgroupFs = "/sys/fs/cgroup";

uint64_t ReadU64(const std::string& path) {
  auto r = ReadSmallFile(path);
  if (!r.ok()) return 0;
  try {
    return std::stoull(r.value());
  } catch (...) {
    return 0;
  }
}

uint64_t ReadKeyed(const std::string& path, const std::string& key) {
  auto r = ReadSmallFile(path);
  if (!r.ok()) return 0;
  std::istringstream in(r.value());
  std::string k;
  uint64_t v;
  while (in >> k >> v)
    if (k == key) return v;
  return 0;
}

Status EnsureDir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoError("creating cgroup " + dir);
  return Status::Ok();
}
}  // namespace

CgroupVersion DetectCgroupVersion() {
  static const CgroupVersion v = [] {
    auto controllers = ReadSmallFile(std::string(kCgroupFs) + "/cgroup.controllers");
    if (controllers.ok() && controllers.value().find("memory") != std::string::npos)
      return CgroupVersion::kV2;
    return CgroupVersion::kV1;
  }();
  return v;
}

Result<Cgroup> Cgroup::Create(const std::string& root_name, const std::string& name,
                              const Limits& limits) {
  Cgroup cg;
  cg.version_ = DetectCgroupVersion();
  uint64_t mem = limits.memory_bytes ? limits.memory_bytes : kDefaultMemoryBytes;
  uint32_t pids = limits.pids ? limits.pids : kDefaultPids;
  auto fail = [&cg](Status st) {
    Status ignored = cg.Destroy();
    (void)ignored;
    return st;
  };
  if (cg.version_ == CgroupVersion::kV2) {
    std::string parent = fmt::format("{}/{}", kCgroupFs, root_name);
    PADDOCK_RETURN_IF_ERROR(EnsureDir(parent));
    Status ignored = WriteSmallFile(parent + "/cgroup.subtree_control", "+memory +pids +cpu");
    (void)ignored;
    std::string dir = parent + "/" + name;
    PADDOCK_RETURN_IF_ERROR(EnsureDir(dir));
    cg.dirs_ = {dir};
    cg.memory_dir_ = cg.pids_dir_ = cg.cpu_dir_ = cg.cpuacct_dir_ = dir;
    Status st = WriteSmallFile(dir + "/memory.max", std::to_string(mem));
    if (st.ok()) st = WriteSmallFile(dir + "/memory.swap.max", "0");
    if (st.ok()) st = WriteSmallFile(dir + "/pids.max", std::to_string(pids));
    if (st.ok() && limits.cpu_millicores)
      st = WriteSmallFile(dir + "/cpu.max", fmt::format("{} 100000", limits.cpu_millicores * 100));
    if (!st.ok()) return fail(st.Prefix("setting cgroup limits"));
    return cg;
  }
  for (const char* ctrl : {"memory", "pids", "cpu", "cpuacct"}) {
    // Without a cpu limit the cpu hierarchy has nothing to enforce (cpuacct
    // does the accounting): one mkdir fewer per cgroup, one cgroup.procs
    // write fewer for every process that joins it (each exec's, for a
    // function sandbox).
    if (std::string_view(ctrl) == "cpu" && !limits.cpu_millicores) continue;
    std::string hier = fmt::format("{}/{}", kCgroupFs, ctrl);
    if (access(hier.c_str(), F_OK) != 0) continue;
    // cpu and cpuacct may be one co-mounted hierarchy.
    std::string real = fs::canonical(hier).string();
    std::string dir = fmt::format("{}/{}/{}", real, root_name, name);
    if (std::find(cg.dirs_.begin(), cg.dirs_.end(), dir) == cg.dirs_.end()) {
      Status st = EnsureDir(fmt::format("{}/{}", real, root_name));
      if (st.ok()) st = EnsureDir(dir);
      if (!st.ok()) return fail(st);
      cg.dirs_.push_back(dir);
    }
    std::string c = ctrl;
    if (c == "memory") cg.memory_dir_ = dir;
    if (c == "pids") cg.pids_dir_ = dir;
    if (c == "cpu") cg.cpu_dir_ = dir;
    if (c == "cpuacct") cg.cpuacct_dir_ = dir;
  }
  if (cg.memory_dir_.empty() || cg.pids_dir_.empty())
    return fail(Error(Code::kFailedPrecondition,
                      "cgroup v1 memory and pids controllers are required under {}", kCgroupFs));
  Status st = WriteSmallFile(cg.memory_dir_ + "/memory.limit_in_bytes", std::to_string(mem));
  if (st.ok()) {
    Status ignored = WriteSmallFile(cg.memory_dir_ + "/memory.memsw.limit_in_bytes", std::to_string(mem));
    (void)ignored;  // absent without swap accounting
    st = WriteSmallFile(cg.pids_dir_ + "/pids.max", std::to_string(pids));
  }
  if (st.ok() && limits.cpu_millicores && !cg.cpu_dir_.empty()) {
    st = WriteSmallFile(cg.cpu_dir_ + "/cpu.cfs_period_us", "100000");
    if (st.ok())
      st = WriteSmallFile(cg.cpu_dir_ + "/cpu.cfs_quota_us", std::to_string(limits.cpu_millicores * 100));
  }
  if (!st.ok()) return fail(st.Prefix("setting cgroup limits"));
  return cg;
}

Status Cgroup::AddProcess(pid_t pid) const {
  for (const auto& dir : dirs_)
    PADDOCK_RETURN_IF_ERROR(WriteSmallFile(dir + "/cgroup.procs", std::to_string(pid)));
  return Status::Ok();
}

Result<std::vector<UniqueFd>> Cgroup::OpenProcsFiles() const {
  std::vector<UniqueFd> out;
  for (const auto& dir : dirs_) {
    std::string path = dir + "/cgroup.procs";
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoError("opening " + path);
    out.push_back(std::move(fd));
  }
  return out;
}

Usage Cgroup::ReadUsage() const {
  Usage u;
  if (version_ == CgroupVersion::kV2) {
    u.memory_bytes = ReadU64(memory_dir_ + "/memory.current");
    u.cpu_time_us = ReadKeyed(cpu_dir_ + "/cpu.stat", "usage_usec");
    u.pids = static_cast<uint32_t>(ReadU64(pids_dir_ + "/pids.current"));
  } else {
    u.memory_bytes = ReadU64(memory_dir_ + "/memory.usage_in_bytes");
    if (!cpuacct_dir_.empty()) u.cpu_time_us = ReadU64(cpuacct_dir_ + "/cpuacct.usage") / 1000;
    u.pids = static_cast<uint32_t>(ReadU64(pids_dir_ + "/pids.current"));
  }
  return u;
}

uint64_t Cgroup::OomKills() const {
  if (memory_dir_.empty()) return 0;
  if (version_ == CgroupVersion::kV2) return ReadKeyed(memory_dir_ + "/memory.events", "oom_kill");
  return ReadKeyed(memory_dir_ + "/memory.oom_control", "oom_kill");
}

Status Cgroup::Destroy() {
  Status first;
  for (const auto& dir : dirs_) {
    Status st = KillAndRemoveCgroupDir(dir);
    if (!st.ok() && first.ok()) first = st;
  }
  if (first.ok()) dirs_.clear();
  return first;
}

namespace {
// One thread for the whole process removes cgroups handed over by
// DestroyInBackground, in order.
class CgroupRemover {
 public:
  static CgroupRemover& Get() {
    static CgroupRemover* r = new CgroupRemover();  // never destroyed: used until exit
    return *r;
  }
  void Add(std::vector<std::string> dirs) {
    std::lock_guard lock(mu_);
    for (auto& d : dirs) queue_.push_back(std::move(d));
    if (!worker_.joinable()) worker_ = std::thread([this] { Loop(); });
    cv_.notify_all();
  }
  void Flush() {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [this] { return queue_.empty() && busy_ == 0; });
  }

 private:
  void Loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return !queue_.empty(); });
      std::string dir = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
      lock.unlock();
      Status st = KillAndRemoveCgroupDir(dir);
      if (!st.ok()) spdlog::warn("removing cgroup: {}", st.ToString());
      lock.lock();
      --busy_;
      if (queue_.empty() && busy_ == 0) idle_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::string> queue_;
  int busy_ = 0;
  std::thread worker_;
};
}  // namespace

void Cgroup::DestroyInBackground() {
  if (dirs_.empty()) return;
  CgroupRemover::Get().Add(std::move(dirs_));
  dirs_.clear();
}

void FlushCgroupRemovals() { CgroupRemover::Get().Flush(); }

Status KillAndRemoveCgroupDir(const std::string& dir) {
  if (access(dir.c_str(), F_OK) != 0) return Status::Ok();
  if (access((dir + "/cgroup.kill").c_str(), F_OK) == 0) {
    Status ignored = WriteSmallFile(dir + "/cgroup.kill", "1");
    (void)ignored;
  }
  for (int attempt = 0; attempt < 500; ++attempt) {
    auto procs = ReadSmallFile(dir + "/cgroup.procs");
    bool empty = !procs.ok() || procs.value().find_first_not_of(" \n") == std::string::npos;
    if (empty && rmdir(dir.c_str()) == 0) return Status::Ok();
    if (empty && errno == ENOENT) return Status::Ok();
    if (procs.ok()) {
      std::istringstream in(procs.value());
      pid_t pid;
      while (in >> pid) kill(pid, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(attempt < 20 ? 1 : 10));
  }
  return ErrnoError("removing cgroup " + dir + " (processes did not exit)");
}

namespace {
// The daemon's subtree root in each hierarchy we use (the v1 freezer, used
// only by snapshots, on request).
std::vector<std::string> CgroupRoots(const std::string& root_name, bool with_freezer) {
  std::vector<std::string> roots;
  if (DetectCgroupVersion() == CgroupVersion::kV2) {
    roots.push_back(fmt::format("{}/{}", kCgroupFs, root_name));
  } else {
    for (const char* ctrl : {"memory", "pids", "cpu", "cpuacct", "freezer"}) {
      if (!with_freezer && std::string_view(ctrl) == "freezer") continue;
      std::string hier = fmt::format("{}/{}", kCgroupFs, ctrl);
      if (access(hier.c_str(), F_OK) != 0) continue;
      std::string r = fmt::format("{}/{}", fs::canonical(hier).string(), root_name);
      if (std::find(roots.begin(), roots.end(), r) == roots.end()) roots.push_back(r);
    }
  }
  return roots;
}
}  // namespace

void RemoveCgroupRootIfEmpty(const std::string& root_name) {
  FlushCgroupRemovals();
  // rmdir refuses a cgroup with children or processes: exactly "if empty".
  for (const auto& r : CgroupRoots(root_name, /*with_freezer=*/true)) rmdir(r.c_str());
}

std::vector<std::string> CgroupDirsUnder(const std::string& root_name) {
  std::vector<std::string> out;
  std::vector<std::string> roots = CgroupRoots(root_name, /*with_freezer=*/false);
  for (const auto& r : roots) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(r, ec))
      if (e.is_directory()) out.push_back(e.path().string());
  }
  return out;
}

}  // namespace paddock
