// `paddock image push`: an image of the ImageStore to a registry, as an OCI
// image manifest over the blobs DescribeOciImage (storage/oci_image.h) names, so
// that a push and an OCI layout export agree byte for byte.
//
// For the config and each layer: HEAD the blob, skip it when the registry has
// it; else, when this store recorded the blob in another repository of the same
// registry (blob_sources.h), ask for a cross-repository mount; else (or when the
// mount is declined) POST an upload and PUT the whole blob (monolithic),
// streamed from the store with its digest and Content-Length; a blob larger
// than PushOptions::chunk_size goes in chunks instead (PATCH with
// Content-Range, each to the location the last answer named, then PUT
// ?digest=), one chunk buffered at a time; a chunk whose PATCH failed
// transiently is resumed from where the registry's upload status (GET → 204,
// Range 0-N) says it stands, and a registry that refuses the first PATCH (404,
// 405, 416) gets the blob monolithically. Then PUT the
// manifest under the reference's tag (or its digest, which must be the
// manifest's). A failure names the reference; blobs already uploaded stay on the
// registry (unreferenced until a manifest names them, as with any client).
#pragma once

#include <functional>
#include <string>

#include "sandbox/base/status.h"
#include "storage/image_store.h"
#include "storage/registry/reference.h"
#include "storage/registry/registry_client.h"

namespace paddock::storage::registry {

// The largest chunk a push buffers.
inline constexpr uint64_t kMaxChunkSize = 1ull << 30;

struct PushOptions {
  RegistryOptions registry;
  // Blobs larger than this go in chunks of this size (PATCH); 0: every blob
  // in one PUT. At most kMaxChunkSize (held in memory while it is sent).
  uint64_t chunk_size = 16 << 20;
};

struct PushProgress {
  std::string phase;  // "checking" | "blob" | "manifest" | "pushed"
  std::string message;
  uint64_t bytes_done = 0, bytes_total = 0;  // blob bytes uploaded / to upload
};

struct PushResult {
  Digest image;            // the store's image id
  Digest manifest_digest;  // the OCI manifest put on the registry
  uint64_t blobs_total = 0;     // distinct blobs: the config and the layers
  uint64_t blobs_present = 0;   // already on the registry (HEAD): not sent
  uint64_t blobs_mounted = 0;   // mounted from another repository of the registry
  uint64_t blobs_uploaded = 0;  // sent
  uint64_t bytes_uploaded = 0;
  uint64_t blobs_chunked = 0;    // of those sent, in chunks (PATCH)
  uint64_t chunk_resumes = 0;    // chunks resumed after asking the upload's status
  uint64_t chunk_fallbacks = 0;  // blobs sent whole because the registry refused chunks
};

// `image` is a store name, digest or digest prefix.
Result<PushResult> PushImage(ImageStore& store, const std::string& image, const Reference& ref,
                             const PushOptions& options,
                             const std::function<void(const PushProgress&)>& progress = {});

}  // namespace paddock::storage::registry
