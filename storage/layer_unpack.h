// Unpacks one stored layer into an empty directory, fast and defensively.
//
// Pipeline: DecompressPipe (libzstd / liblz4 on its own thread, 4 MiB chunks) →
// libarchive's tar reader (format only, no filters) → archive_write_disk. The
// decompressed stream is hashed and must equal the diff_id, or the unpack fails.
//
// Extraction keeps what a root filesystem needs: numeric owners (no name lookup),
// permissions incl. setuid/setgid, mtimes, and xattrs except `trusted.*` (a layer
// must not smuggle overlayfs metadata such as trusted.overlay.opaque/redirect).
// ACLs and file flags are not restored.
//
// Defence in depth (import already refused all of these): every entry passes
// EntryPolicy again (no `..`, no absolute paths, no device nodes, no write through
// a symlink of the layer, hard links only to earlier files, size caps), and
// libarchive runs with ARCHIVE_EXTRACT_SECURE_NODOTDOT | SECURE_SYMLINKS. Whiteouts
// are created with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
// (overlay_whiteout.h), in overlayfs form.
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

// `dest` must be an existing, empty directory on a filesystem that supports
// trusted.* xattrs and device nodes (for whiteouts). On error `dest` holds a
// partial tree the caller must remove.
Result<UnpackStats> UnpackLayer(ImageStore& store, const StoredLayer& layer, const std::string& dest);

}  // namespace paddock::storage
