// Turns a layer as found in an archive (a tar, plain or compressed with any
// filter libarchive reads: gzip, zstd, xz, bzip2, lz4) into the stored form, in
// one streaming pass: the source is hashed (to check it against its descriptor),
// decompressed, hashed again (the diff_id), every tar header checked by
// EntryPolicy and indexed, and the tar recompressed into a staged blob.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/blob_store.h"
#include "storage/layer.h"

namespace paddock::storage {

// Fills buf with up to n bytes; returns 0 at the end.
using ByteSource = std::function<Result<size_t>(void* buf, size_t n)>;
ByteSource SourceFromFd(int fd);
ByteSource SourceFromString(std::string_view data);  // data must outlive the source

struct IngestOptions {
  Compression compression = Compression::kZstd;
  int level = 3;        // zstd level, or lz4 HC level (0 = lz4 fast)
  LayerLimits limits;
  bool store = true;    // false: validate and hash only, write nothing
  std::string name;     // how errors name this layer ("layer blobs/sha256/ab12…")
};

struct IngestedLayer {
  Digest source_digest;  // sha256 of the bytes as read (the archive's blob digest)
  uint64_t source_size = 0;
  Digest diff_id;
  uint64_t uncompressed_size = 0;
  std::vector<LayerEntry> entries;
  std::optional<StagedBlob> blob;   // compressed tar, when store
  std::optional<StagedBlob> index;  // entry index, when store
};

// Any bad entry, truncation or corruption is INVALID_ARGUMENT naming the layer and
// the entry. Staged blobs are not committed here.
Result<IngestedLayer> IngestLayer(const ByteSource& source, StagingArea* staging, const IngestOptions& options);

}  // namespace paddock::storage
