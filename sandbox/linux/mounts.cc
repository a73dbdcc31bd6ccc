#include "sandbox/linux/mounts.h"

#include <fcntl.h>
#include <linux/mount.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "sandbox/base/unique_fd.h"

namespace paddock {

Status MountIdmappedReadOnly(const std::string& source, const std::string& target, int userns_fd) {
  UniqueFd tree(static_cast<int>(syscall(SYS_open_tree, AT_FDCWD, source.c_str(),
                                         OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)));
  if (!tree.valid()) return ErrnoError("open_tree " + source);
  struct mount_attr attr {};
  attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID;
  attr.userns_fd = static_cast<uint64_t>(userns_fd);
  if (syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH, &attr, sizeof attr) != 0)
    return ErrnoError("idmapping " + source);
  if (syscall(SYS_move_mount, tree.get(), "", AT_FDCWD, target.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0)
    return ErrnoError("attaching idmapped mount at " + target);
  return Status::Ok();
}

Status BindReadOnly(const std::string& source, const std::string& target) {
  if (mount(source.c_str(), target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0)
    return ErrnoError("bind-mounting " + source);
  if (mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
            nullptr) != 0) {
    Status st = ErrnoError("making " + target + " read-only");
    umount2(target.c_str(), MNT_DETACH);
    return st;
  }
  return Status::Ok();
}

Status MountOverlay(const std::vector<std::string>& lowers, const std::string& upper,
                    const std::string& work, const std::string& target) {
  std::string opts = "lowerdir=";
  for (size_t i = 0; i < lowers.size(); ++i) opts += (i ? ":" : "") + lowers[i];
  // No setuid file and no device node of an image or a sandbox's changes
  // takes effect, inside the sandbox or out.
  unsigned long flags = MS_NODEV | MS_NOSUID;
  if (!upper.empty()) opts += ",upperdir=" + upper + ",workdir=" + work;
  else flags |= MS_RDONLY;
  if (mount("overlay", target.c_str(), "overlay", flags, opts.c_str()) != 0)
    return ErrnoError("mounting overlay at " + target);
  return Status::Ok();
}

Status MountTmpfs(const std::string& target, uint64_t bytes) {
  std::string opts = fmt::format("mode=0755,size={}", bytes);
  if (mount("tmpfs", target.c_str(), "tmpfs", MS_NODEV | MS_NOSUID, opts.c_str()) != 0)
    return ErrnoError("mounting tmpfs at " + target);
  return Status::Ok();
}

Status Unmount(const std::string& path) {
  if (umount2(path.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
    return ErrnoError("unmounting " + path);
  return Status::Ok();
}

std::vector<std::string> MountsUnder(const std::string& prefix) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string id, parent, devno, root, mountpoint;
    ss >> id >> parent >> devno >> root >> mountpoint;
    if (mountpoint == prefix || mountpoint.rfind(prefix + "/", 0) == 0) out.push_back(mountpoint);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace paddock
