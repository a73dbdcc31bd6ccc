// A stored image as OCI sees it: the blobs and the image manifest that both an
// OCI layout export (ExportOci) and a registry push write, so the two always
// agree. zstd and gzip layers go out as stored (tar+zstd / tar+gzip, the
// store's blob and digest: a pulled layer is pushed as the registry sent it);
// lz4 layers go out as plain tars, whose digest is the diff_id; the config is
// the imported one, byte for byte.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "storage/image_store.h"

namespace paddock::storage {

inline constexpr const char* kOciManifestType = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* kOciConfigType = "application/vnd.oci.image.config.v1+json";
inline constexpr const char* kOciIndexType = "application/vnd.oci.image.index.v1+json";

struct OciBlob {
  std::string media_type;
  Digest digest;  // known before the bytes are produced (a push names it up front)
  uint64_t size = 0;
  // Streams exactly `size` bytes hashing to `digest` (DATA_LOSS if the store's
  // copy does not); may be called more than once.
  std::function<Status(const std::function<Status(const void*, size_t)>& sink)> write;
};

struct OciImage {
  OciBlob config;
  std::vector<OciBlob> layers;  // bottom first; a layer repeated in the image is listed each time
  std::string manifest;         // the OCI image manifest JSON
  Digest manifest_digest;
};

// `store` must outlive the returned writers.
Result<OciImage> DescribeOciImage(ImageStore& store, const Image& image);

}  // namespace paddock::storage
