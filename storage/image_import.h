// Getting images in and out of an ImageStore.
//
// Import accepts:
//   * an OCI image layout, as a directory or a tar (index.json → manifest → config +
//     layers; nested indexes pick linux/amd64, else the first manifest);
//   * a `docker save` archive, as a tar or its unpacked directory (manifest.json;
//     layers uncompressed, gzip or zstd; legacy symlinked layer.tar files resolved
//     inside the archive);
//   * a plain directory, as a one-layer image (ImportDirectory).
// Every layer passes EntryPolicy; every blob is checked against its name; a
// config's diff_ids must match its layers. Any failure is INVALID_ARGUMENT naming
// the entry, and leaves nothing in the store (all writes are staged in one
// ImageTransaction, committed only when the whole archive was read).
#pragma once

#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/image_store.h"

namespace paddock::storage {

struct ImportOptions {
  // Names for the imported image (only when the archive holds exactly one);
  // otherwise the archive's own names (RepoTags, ref.name annotations) are used.
  std::vector<std::string> names;
};

struct ImportResult {
  std::vector<Digest> images;  // in archive order
  uint64_t layers_total = 0;
  uint64_t layers_new = 0;       // layers not already in the store
  uint64_t bytes_committed = 0;  // bytes of new blobs written into the store
};

Result<ImportResult> ImportImage(ImageStore& store, const std::string& path, const ImportOptions& options = {});

struct DirectoryImportResult {
  Digest image;
  uint64_t skipped_special = 0;  // device nodes and sockets left out (a sandbox brings its own /dev)
};

// Packs `dir` into one layer (sorted, numeric owners, mtimes kept), so importing
// the same unchanged directory twice yields the same diff_id.
Result<DirectoryImportResult> ImportDirectory(ImageStore& store, const std::string& dir, const ImageConfig& config,
                                              const std::vector<std::string>& names = {});

// Writes the image as an OCI image layout directory: zstd layers are copied as
// stored (media type tar+zstd), lz4 layers are written as plain tars; the config
// is the imported one, byte for byte. Importing the result yields the same image
// digest, config digest and diff_ids.
Status ExportOci(ImageStore& store, std::string_view ref, const std::string& out_dir);

}  // namespace paddock::storage
