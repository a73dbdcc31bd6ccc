// Unpacks one stored layer into an empty directory, fast and defensively.
//
// Pipeline: DecompressPipe (libzstd / liblz4 / zlib on its own thread, 1 MiB
// chunks, hashing the tar) → libarchive's tar reader (format only, no filters) →
// LayerTreeWriter (layer_tree_writer.h: every entry created relative to an open
// directory fd, never through a symlink, owners/modes/mtimes/xattrs kept,
// `trusted.*` dropped, whiteouts in overlayfs form). The decompressed stream is
// hashed and must equal the diff_id, or the unpack fails.
//
// Defence in depth (import already refused all of these): every entry passes
// EntryPolicy again (no `..`, no absolute paths, no device nodes, no write through
// a symlink of the layer, hard links only to earlier files, size caps).
//
// A pull unpacks new layers while they download instead (IngestOptions::
// unpack_into, same LayerTreeWriter), so this runs for layers that were
// imported, evicted, or pulled before into another node's cache.
#pragma once

#include <cstdint>
#include <string>

#include "sandbox/base/status.h"
#include "storage/image_store.h"
#include "storage/layer.h"
#include "storage/layer_tree_writer.h"

namespace paddock::storage {

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
