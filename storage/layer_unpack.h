// Unpacks one stored layer into an empty directory, fast and defensively.
//
// Pipeline: DecompressPipe (libzstd / liblz4 on its own thread, 1 MiB chunks,
// hashing the tar) → libarchive's tar reader (format only, no filters) → our own
// writer, which creates every entry relative to an open directory fd (a cache of
// open parents by path) instead of resolving a path per entry. The decompressed
// stream is hashed and must equal the diff_id, or the unpack fails.
//
// Extraction keeps what a root filesystem needs: numeric owners (no name lookup),
// permissions incl. setuid/setgid, mtimes, and xattrs except `trusted.*` (a layer
// must not smuggle overlayfs metadata such as trusted.overlay.opaque/redirect).
// ACLs and file flags are not restored.
//
// Defence in depth (import already refused all of these): every entry passes
// EntryPolicy again (no `..`, no absolute paths, no device nodes, no write through
// a symlink of the layer, hard links only to earlier files, size caps), and the
// writer cannot follow a symlink wherever one came from: parent directories are
// opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) one component at a
// time from the root fd, leaves created with O_CREAT | O_EXCL | O_NOFOLLOW,
// mkdirat, symlinkat, mknodat, linkat (no AT_SYMLINK_FOLLOW). Whiteouts are created
// with openat2 the same way (overlay_whiteout.h), in overlayfs form.
#pragma once

#include <cstdint>
#include <string>

#include "sandbox/base/status.h"
#include "storage/image_store.h"
#include "storage/layer.h"

namespace paddock::storage {

struct UnpackStats {
  uint64_t entries = 0;
  uint64_t tar_bytes = 0;
  uint64_t whiteouts = 0;
  uint64_t opaque_dirs = 0;
};

struct UnpackOptions {
  // The caller will make the tree durable (syncfs): start writeback of each large
  // file as it is closed (sync_file_range, not waiting), so the disk works during
  // the unpack and the final sync finds little left.
  bool start_writeback = false;
};

// `dest` must be an existing, empty directory on a filesystem that supports
// trusted.* xattrs and device nodes (for whiteouts). On error `dest` holds a
// partial tree the caller must remove.
Result<UnpackStats> UnpackLayer(ImageStore& store, const StoredLayer& layer, const std::string& dest,
                                const UnpackOptions& options = {});

}  // namespace paddock::storage
