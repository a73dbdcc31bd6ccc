// `paddock image pull`: an image from a registry into the ImageStore, streamed.
//
// The manifest (an index or manifest list picks the platform, linux/amd64 by
// default) and the config are fetched and verified; then each layer the store
// does not already hold (by diff_id) is fetched and fed to the store's ingest as
// its bytes arrive: counted against the manifest's size and hashed against its
// digest while it streams, decompressed (gzip, zstd or none), checked entry by
// entry (EntryPolicy), unpacked into the node's layer cache when one is given
// (PullOptions::layer_cache: the first sandbox needs no second decompression),
// and staged as the blob the registry sent (gzip, zstd) or recompressed (a plain
// tar). The unpacked trees become visible in the cache only after the store's
// commit, which follows every layer's digest check. Everything goes through one
// ImageTransaction (PullOptions::parallel_layers layers at a time; transient
// failures retried, a broken layer download resumed with a Range request: see
// registry_client.h and layer_download.h), so a pull that fails at any point (bad digest, a blob longer
// than declared, a dropped connection, a hostile tar) leaves the store as it was.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"
#include "storage/registry/reference.h"
#include "storage/registry/registry_client.h"

namespace paddock::storage::registry {

struct Platform {
  std::string os = "linux";
  std::string architecture = "amd64";
  std::string variant;  // optional ("v8")
  std::string str() const { return os + "/" + architecture + (variant.empty() ? "" : "/" + variant); }
};
// "os/arch[/variant]"; INVALID_ARGUMENT otherwise.
Result<Platform> ParsePlatform(std::string_view text);

struct PullOptions {
  RegistryOptions registry;
  Platform platform;
  // New layers fetched (and ingested) at once.
  int parallel_layers = 3;
  // Store names for the image; empty: the reference itself ("host/repo:tag"),
  // none for a reference by digest only.
  std::vector<std::string> names;
  // Unpack new layers into this cache while they download (one pass: no
  // second decompression when a sandbox first uses them). Null: store only; the
  // cache unpacks from the store on first use. Must outlive the pull.
  LayerCache* layer_cache = nullptr;
  // Keep gzip and zstd layers as the registry sent them (same blob, same
  // digest) instead of recompressing their tars with the store's compression.
  bool keep_registry_blobs = true;
};

struct PullProgress {
  std::string phase;  // "manifest" | "layer" | "committing" | "committed"
  std::string message;
  uint64_t bytes_done = 0, bytes_total = 0;  // layer bytes to fetch, all layers
};

struct PullResult {
  Digest image;            // the store's image id
  Digest manifest_digest;  // the registry's manifest (the platform's, under an index)
  std::vector<std::string> names;
  uint64_t layers_total = 0;
  uint64_t layers_new = 0;       // fetched: not already in the store
  uint64_t bytes_fetched = 0;    // layer bytes downloaded
  uint64_t bytes_committed = 0;  // bytes of new blobs written into the store
  uint64_t layers_unpacked = 0;  // new layers unpacked into the layer cache as they downloaded
};

Result<PullResult> PullImage(ImageStore& store, const Reference& ref, const PullOptions& options,
                             const std::function<void(const PullProgress&)>& progress = {});

}  // namespace paddock::storage::registry
