// Turns a layer as found in an archive (a tar, plain or compressed with any
// filter libarchive reads: gzip, zstd, xz, bzip2, lz4) into the stored form, in
// one streaming pass: the source is hashed (to check it against its descriptor),
// decompressed, hashed again (the diff_id), every tar header checked by
// EntryPolicy and indexed, and the tar recompressed into a staged blob (or the
// gzip/zstd source kept as it came, `keep_compressed_source`). Optionally the
// same pass unpacks every entry into a directory (`unpack_into`): a registry
// pull fills the layer cache while the layer downloads.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/blob_store.h"
#include "storage/layer.h"
#include "storage/layer_tree_writer.h"

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
  // A source that is one gzip or zstd stream is staged byte for byte as the
  // blob (its digest is the source's) instead of recompressing the tar: no
  // compression CPU, and the blob can be pushed back as it came. Other sources
  // are compressed as `compression` says.
  bool keep_compressed_source = false;
  // With keep_compressed_source: keep an lz4 source too (a layer copied from
  // another store as it is stored there, storage/image_copy.h).
  bool keep_lz4_source = false;
  // Unpack every entry into this existing, empty directory as it streams
  // (LayerTreeWriter: the same tree UnpackLayer makes). On error it holds a
  // partial tree for the caller to remove; the caller must also not use it
  // before checking the digests the result reports.
  std::string unpack_into;
  bool unpack_writeback = false;  // LayerTreeWriter's start_writeback
};

struct IngestedLayer {
  Digest source_digest;  // sha256 of the bytes as read (the archive's blob digest)
  uint64_t source_size = 0;
  Digest diff_id;
  uint64_t uncompressed_size = 0;
  std::vector<LayerEntry> entries;
  std::optional<StagedBlob> blob;   // compressed tar, when store
  Compression compression = Compression::kZstd;  // what `blob` is
  std::optional<UnpackStats> unpacked;  // when unpack_into was given
  std::optional<StagedBlob> index;  // entry index, when store
};

// Any bad entry, truncation or corruption is INVALID_ARGUMENT naming the layer and
// the entry. Staged blobs are not committed here.
Result<IngestedLayer> IngestLayer(const ByteSource& source, StagingArea* staging, const IngestOptions& options);

}  // namespace paddock::storage
