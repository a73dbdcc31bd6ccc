// Mounts the daemon makes on the host: idmapped views of images, overlay
// roots, and their removal.
#pragma once

#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock {

// Attaches a read-only view of `source` at `target` whose file owners are
// shifted through the user namespace `userns_fd` (MOUNT_ATTR_IDMAP), so that
// host root's files belong to the sandbox's root.
Status MountIdmappedReadOnly(const std::string& source, const std::string& target, int userns_fd);
// A read-only bind mount without id shifting (fallback where the filesystem
// does not support idmapped mounts).
Status BindReadOnly(const std::string& source, const std::string& target);

// overlayfs with `lowers` (top first). Without an upper dir it is read-only.
Status MountOverlay(const std::vector<std::string>& lowers, const std::string& upper,
                    const std::string& work, const std::string& target);

// A tmpfs of `bytes` at `target` (mode 0755).
Status MountTmpfs(const std::string& target, uint64_t bytes);

// Lazily detaches the mount at `path` (and anything below it).
Status Unmount(const std::string& path);

// Mount points at or below `prefix`, deepest first, from /proc/self/mountinfo.
std::vector<std::string> MountsUnder(const std::string& prefix);

}  // namespace paddock
