#include "storage/overlay_whiteout.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

namespace paddock::storage {
namespace {

int OpenAt2(int dirfd, const char* path, uint64_t flags) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (;;) {
    int fd = static_cast<int>(::syscall(SYS_openat2, dirfd, path, &how, sizeof(how)));
    if (fd < 0 && errno == EAGAIN) continue;  // a concurrent rename; retry
    return fd;
  }
}

void Split(const std::string& rel, std::string* parent, std::string* name) {
  size_t k = rel.rfind('/');
  *parent = k == std::string::npos ? "." : rel.substr(0, k);
  *name = k == std::string::npos ? rel : rel.substr(k + 1);
}

}  // namespace

Result<UniqueFd> OpenDirBeneath(int root_fd, const std::string& rel, bool create) {
  UniqueFd fd(OpenAt2(root_fd, rel.c_str(), O_RDONLY | O_DIRECTORY));
  if (fd.valid()) return fd;
  if (errno != ENOENT || !create) return ErrnoError(fmt::format("opening directory '{}' in the layer", rel));
  // Walk from the root, creating what is missing; each step is beneath the last.
  UniqueFd cur(::fcntl(root_fd, F_DUPFD_CLOEXEC, 0));
  size_t start = 0;
  while (start < rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string::npos) end = rel.size();
    std::string comp = rel.substr(start, end - start);
    start = end + 1;
    if (comp.empty() || comp == ".") continue;
    if (::mkdirat(cur.get(), comp.c_str(), 0755) != 0 && errno != EEXIST)
      return ErrnoError(fmt::format("creating directory '{}' in the layer", rel));
    UniqueFd next(OpenAt2(cur.get(), comp.c_str(), O_RDONLY | O_DIRECTORY));
    if (!next.valid()) return ErrnoError(fmt::format("opening directory '{}' in the layer", rel));
    cur = std::move(next);
  }
  return cur;
}

Status MakeOverlayWhiteout(int root_fd, const std::string& rel) {
  std::string parent, name;
  Split(rel, &parent, &name);
  PADDOCK_ASSIGN_OR_RETURN(UniqueFd dir, OpenDirBeneath(root_fd, parent, true));
  struct stat st;
  if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return Status::Ok();
  if (::mknodat(dir.get(), name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0)
    return ErrnoError(fmt::format("creating overlay whiteout '{}'", rel));
  return Status::Ok();
}

Status MakeOverlayOpaque(int root_fd, const std::string& rel) {
  PADDOCK_ASSIGN_OR_RETURN(UniqueFd dir, OpenDirBeneath(root_fd, rel, true));
  if (::fsetxattr(dir.get(), "trusted.overlay.opaque", "y", 1, 0) != 0)
    return ErrnoError(fmt::format("marking '{}' opaque (trusted.overlay.opaque)", rel));
  return Status::Ok();
}

}  // namespace paddock::storage
