// Copying an image into this store from another store, by the image's id (the
// digest of its manifest), one blob at a time: what a fleet node does when a
// front places a sandbox on an image of the front's store that the node lacks
// (rollout/fleet/image_transfer.h carries the bytes over the front's call).
//
// Nothing that arrives is trusted. The manifest must hash to the image id, the
// config to the manifest's config digest; every layer blob is counted against
// the size the manifest declares and hashed as it streams (longer, shorter or
// other bytes are DATA_LOSS naming the blob), and its tar passes the same entry
// checks as an import (storage/entry_policy.h). The layer's diff_id, sizes and
// entry index must come out as the manifest says, so the copy has the same
// image id as the original. Layers whose blobs the store already holds are not
// fetched. Everything is staged in one ImageTransaction and committed at the
// end: a copy that fails at any point leaves the store as it was.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "storage/image_store.h"
#include "storage/layer_ingest.h"

namespace paddock::storage {

// Where the blobs come from. One blob is open at a time.
class BlobFetcher {
 public:
  virtual ~BlobFetcher() = default;
  // Starts reading blob `digest`, said to be `size` bytes (0: not known; then
  // at most `max_bytes`). The source yields its bytes, then 0 at the end.
  virtual Result<ByteSource> Open(const Digest& digest, uint64_t size, uint64_t max_bytes) = 0;
};

struct CopyProgress {
  std::string phase;  // "manifest" | "layer" | "committing" | "committed"
  std::string message;
  uint64_t bytes_done = 0, bytes_total = 0;  // layer bytes fetched / to fetch
};

struct CopyResult {
  Digest image;
  bool already_present = false;  // the store had it: nothing fetched
  uint64_t layers_total = 0;
  uint64_t layers_fetched = 0;
  uint64_t bytes_fetched = 0;  // blob bytes received (manifest, config, layers)
};

struct CopyOptions {
  std::string display;  // how errors name the image ("busybox:1"); its digest is added
  uint64_t max_layers = 512;
};

// Copies image `image` from `from` into `store` (a no-op when it is there).
// Errors name the image and the blob.
Result<CopyResult> CopyImage(ImageStore& store, const Digest& image, BlobFetcher& from, const CopyOptions& options,
                             const std::function<void(const CopyProgress&)>& progress = {});

// A source that checks `inner` against `digest` and `size` as it streams:
// DATA_LOSS naming `what` when it runs past `size` (or `max_bytes` when size is
// 0), ends short, or hashes otherwise. The check of the digest comes before the
// end is reported, so a consumer never sees a complete but wrong blob.
ByteSource VerifiedSource(ByteSource inner, const Digest& digest, uint64_t size, uint64_t max_bytes, std::string what);

}  // namespace paddock::storage
