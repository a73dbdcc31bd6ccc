#include "sandbox/linux/fs_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace paddock {

Status MkdirAll(const std::string& path, mode_t mode) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return Error(Code::kInternal, "creating directory {}: {}", path, ec.message());
  chmod(path.c_str(), mode);
  return Status::Ok();
}

namespace {
int RemoveEntry(const char* path, const struct stat*, int type, struct FTW*) {
  int rc = (type == FTW_DP) ? rmdir(path) : unlink(path);
  return rc == 0 || errno == ENOENT ? 0 : -1;
}
}  // namespace

Status RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return errno == ENOENT ? Status::Ok() : ErrnoError("stat " + path);
  if (nftw(path.c_str(), RemoveEntry, 64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0)
    return ErrnoError("removing " + path);
  return Status::Ok();
}

Status CheckSearchableByOthers(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::weakly_canonical(path, ec);
  if (ec) return Error(Code::kInvalidArgument, "bad path {}: {}", path, ec.message());
  for (std::filesystem::path cur = p;; cur = cur.parent_path()) {
    struct stat st;
    if (stat(cur.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && !(st.st_mode & S_IXOTH))
      return Error(Code::kFailedPrecondition,
                   "{} (mode {:04o}) cannot be searched by sandbox users, and the state dir {} is "
                   "below it; run `chmod o+x {}` or choose another --state-dir",
                   cur.string(), st.st_mode & 07777, path, cur.string());
    if (cur == cur.parent_path()) break;
  }
  return Status::Ok();
}

Result<std::string> ReadSmallFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("opening " + path);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status st = ErrnoError("reading " + path);
      close(fd);
      return st;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

Status WriteSmallFile(const std::string& path, std::string_view content) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC | O_TRUNC | O_CREAT, 0644);
  if (fd < 0) return ErrnoError("opening " + path);
  ssize_t n = write(fd, content.data(), content.size());
  int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(content.size())) return ErrnoError("writing " + path, err);
  return Status::Ok();
}

}  // namespace paddock
