// An overlayfs upper directory turned into an OCI layer tar: what a container
// changed on top of its image, as a layer that stacks on the image's layers.
//
//   upper entry                                  layer tar entry
//   character device 0/0 NAME (overlay whiteout) `.wh.NAME` (empty regular file)
//   directory with trusted.overlay.opaque=y      the directory + `DIR/.wh..wh..opq`
//   file, dir, symlink, fifo                     itself; a file with other links in
//                                                the upper dir becomes a hard link to
//                                                the first one written
//   other devices, sockets                       left out (counted)
//
// Owners are host ids of the sandbox's user namespace and are mapped back to the
// ids the sandbox saw (host id - id_base); ids outside the range become 65534
// (the overflow id the sandbox saw them as). Entries are sorted, parents first.
// A directory that overlayfs recorded as renamed (trusted.overlay.redirect) or a
// metadata-only copy-up (trusted.overlay.metacopy) cannot be expressed in OCI and
// is refused with FAILED_PRECONDITION naming it. Extended attributes are not kept.
//
// Everything is read through `upper_fd` with openat(O_NOFOLLOW), so the upper dir
// need not be mounted anywhere the caller can name (a container's changes are
// only reachable through an fd once the daemon dropped its copy of the mount).
#pragma once

#include <cstdint>
#include <functional>

#include "sandbox/base/status.h"

namespace paddock {

struct OverlayDiffOptions {
  uint32_t id_base = 0;        // host id of the sandbox's id 0
  uint32_t id_count = 65536;   // ids mapped
};

struct OverlayDiffStats {
  uint64_t entries = 0;
  uint64_t whiteouts = 0;
  uint64_t opaque_dirs = 0;
  uint64_t hardlinks = 0;
  uint64_t skipped_special = 0;
  uint64_t file_bytes = 0;
};

using TarBytesSink = std::function<Status(const void* data, size_t n)>;

Status WriteOverlayDiffTar(int upper_fd, const OverlayDiffOptions& options, const TarBytesSink& sink,
                           OverlayDiffStats* stats = nullptr);

}  // namespace paddock
