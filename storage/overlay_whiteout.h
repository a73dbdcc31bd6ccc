// OCI whiteouts rewritten into the form overlayfs reads from a lower directory, so a
// materialized layer can be stacked as an overlay lower dir as is:
//   `.wh.NAME`      → NAME as a character device 0/0 (mode 0, owner 0:0)
//   `.wh..wh..opq`  → the xattr trusted.overlay.opaque="y" on the directory
// Both need CAP_MKNOD / CAP_SYS_ADMIN (the daemon runs as root). Every path is
// resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
// under the layer's root fd, so nothing is ever created through a symlink or
// outside the root, whatever the layer contains.
#pragma once

#include <string>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"

namespace paddock::storage {

// Opens `rel` (normalized, relative; "." for the root) as a directory beneath
// root_fd, creating missing components with mode 0755 when `create`.
Result<UniqueFd> OpenDirBeneath(int root_fd, const std::string& rel, bool create);

// Makes `rel` a whiteout: a 0/0 char device, unless the layer itself has an entry
// there (OCI: a whiteout only hides lower layers' entries).
Status MakeOverlayWhiteout(int root_fd, const std::string& rel);

// Marks directory `rel` opaque (created when missing).
Status MakeOverlayOpaque(int root_fd, const std::string& rel);

}  // namespace paddock::storage
