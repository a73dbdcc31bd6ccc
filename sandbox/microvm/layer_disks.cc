#include "sandbox/microvm/layer_disks.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "sandbox/base/unique_fd.h"
#include "sandbox/linux/fs_util.h"

namespace fs = std::filesystem;

namespace paddock::microvm {

Status RunTool(const std::vector<std::string>& argv) {
  int errp[2];
  if (pipe2(errp, O_CLOEXEC) != 0) return ErrnoError("pipe");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(errp[1], 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(errp[1]);
  if (pid < 0) {
    close(errp[0]);
    return ErrnoError("fork");
  }
  std::string err;
  char buf[4096];
  for (ssize_t n; (n = read(errp[0], buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    err.append(buf, static_cast<size_t>(n));
    if (err.size() > 8192) err.erase(0, err.size() - 8192);
  }
  close(errp[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && access(argv[0].c_str(), X_OK) != 0)
    return Error(Code::kFailedPrecondition, "{} is not installed (scripts/install-deps.sh)", argv[0]);
  while (!err.empty() && err.back() == '\n') err.pop_back();
  if (err.size() > 600) err = "..." + err.substr(err.size() - 600);
  return Error(Code::kInternal, "{} failed: {}", argv[0], err);
}

Result<std::string> LayerDisks::Get(const std::string& layer_dir) {
  struct stat st;
  if (stat(layer_dir.c_str(), &st) != 0) return ErrnoError("layer " + layer_dir);
  std::error_code ec;
  std::string canon = fs::weakly_canonical(layer_dir, ec).string();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : fmt::format("{}\n{}:{}:{}", canon, st.st_dev, st.st_ino, st.st_mtime)) {
    h ^= c;
    h *= 1099511628211ull;
  }
  std::string out = fmt::format("{}/{:016x}.{}", dir_, h, fs_);
  std::shared_future<Result<std::string>> fut;
  std::promise<Result<std::string>> mine;
  bool builder = false;
  {
    std::lock_guard lock(mu_);
    auto it = building_.find(out);
    if (it != building_.end()) {
      fut = it->second;
    } else {
      fut = mine.get_future().share();
      building_[out] = fut;
      builder = true;
    }
  }
  if (!builder) return fut.get();
  Result<std::string> r = [&]() -> Result<std::string> {
    if (access(out.c_str(), R_OK) == 0) return out;
    PADDOCK_RETURN_IF_ERROR(MkdirAll(dir_, 0755));
    // Another daemon process on this state dir may be building it too.
    UniqueFd lock(open((out + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!lock.valid()) return ErrnoError("locking " + out);
    while (flock(lock.get(), LOCK_EX) != 0 && errno == EINTR) {
    }
    if (access(out.c_str(), R_OK) == 0) return out;
    std::string tmp = fmt::format("{}.tmp.{}", out, getpid());
    Status st = Build(layer_dir, tmp);
    if (st.ok() && chmod(tmp.c_str(), 0644) == 0 && rename(tmp.c_str(), out.c_str()) == 0) return out;
    unlink(tmp.c_str());
    if (st.ok()) st = ErrnoError("installing " + out);
    return st.Prefix("building the disk image of layer " + layer_dir);
  }();
  mine.set_value(r);
  {
    std::lock_guard lock(mu_);
    if (!r.ok()) building_.erase(out);  // a later create may try again
  }
  return r;
}

Status LayerDisks::Build(const std::string& layer_dir, const std::string& out) {
  if (fs_ == "erofs") return RunTool({"/usr/bin/mkfs.erofs", "--quiet", out, layer_dir});
  // ext4: sized from the tree (data rounded to blocks, one inode each),
  // no journal (read-only), root owned by root.
  uint64_t bytes = 0, inodes = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(layer_dir, ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    ++inodes;
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) bytes += (it->file_size(ec) + 4095) / 4096 * 4096;
  }
  uint64_t size = (bytes + inodes * 512) * 5 / 4 + (16ull << 20);
  int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("creating " + out);
  int rc = ftruncate(fd, static_cast<off_t>(size));
  close(fd);
  if (rc != 0) return ErrnoError("sizing " + out);
  return RunTool({"/usr/sbin/mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-O",
                  "^has_journal,^resize_inode", "-N", std::to_string(inodes + 64), "-d", layer_dir, out});
}

}  // namespace paddock::microvm
