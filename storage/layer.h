// Stored layers: the on-disk format (see docs/image-store.md).
//
// A layer is identified by its diff_id: the sha256 of its UNCOMPRESSED tar, as in
// OCI. It is stored as two blobs:
//   * the tar, compressed as one zstd frame (level 3, default) or one lz4 frame,
//     byte for byte the tar that was imported (so the diff_id can be re-derived and
//     a zstd layer exported to OCI unchanged); a layer pulled from a registry keeps
//     the registry's own gzip or zstd blob instead (same digest, pushed back as is);
//   * an index blob: JSON listing every entry (path, type, size, mode, owner, mtime,
//     link target, header offset in the tar), so inspect, snapshot diffs and the
//     materializer can plan without decompressing.
// The same diff_id is stored once whatever image or compression brought it
// (ROOT/layers/sha256/<diff_id hex> names the stored pair).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/digest.h"

namespace paddock::storage {

// kGzip only for blobs kept as a registry sent them (pulls); new layers are
// compressed with zstd or lz4.
enum class Compression { kZstd, kLz4, kGzip };
const char* CompressionName(Compression c);
Result<Compression> ParseCompression(std::string_view name);

// Caps applied to every layer read from outside. Exceeding one is INVALID_ARGUMENT
// naming the entry; nothing is committed.
struct LayerLimits {
  uint64_t max_unpacked_bytes = 64ull << 30;  // sum of entry sizes in one layer
  uint64_t max_entries = 2'000'000;           // entries in one layer
};

// Entry types in an index. Whiteouts are ordinary empty files in the tar (OCI
// `.wh.NAME`, `.wh..wh..opq`), marked here so the materializer need not re-parse.
enum class EntryType : char {
  kFile = 'f',
  kDir = 'd',
  kSymlink = 'l',
  kHardlink = 'h',
  kFifo = 'p',
  kWhiteout = 'w',  // path is the whited-out path (".wh." removed)
  kOpaque = 'o',    // path is the directory made opaque
};

struct LayerEntry {
  std::string path;  // normalized, relative, no "..", "." for the root
  EntryType type = EntryType::kFile;
  uint64_t size = 0;
  uint32_t mode = 0;
  uint32_t uid = 0, gid = 0;
  int64_t mtime = 0;
  std::string link;  // symlink target, or hard link target path
  uint64_t offset = 0;  // header offset in the uncompressed tar
};

struct StoredLayer {
  Digest diff_id;  // sha256 of the uncompressed tar
  Digest blob;     // the compressed tar
  Compression compression = Compression::kZstd;
  Digest index;    // JSON entry index
  uint64_t size = 0;               // compressed bytes
  uint64_t uncompressed_size = 0;  // tar bytes
};

std::string EncodeIndex(const Digest& diff_id, const std::vector<LayerEntry>& entries);
Result<std::vector<LayerEntry>> DecodeIndex(std::string_view json);

}  // namespace paddock::storage
