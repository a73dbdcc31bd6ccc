// The store-backed ImageResolver (the interface is sandbox/image_source.h):
// images by name, digest or digest prefix from the ImageStore, their layers
// materialized once per node by the LayerCache; registry references the store
// lacks pulled on first use through a RegistryFetcher; host directories where
// allowed; snapshots committed into the store. Library paddock_store_images:
// it bridges sandbox/ (which declares what a substrate needs) and storage/, so
// that neither includes the other's implementation.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sandbox/image_source.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"

namespace paddock::storage {

// Pull on first use: whether a text names a registry image, and fetching it
// into the store (returning the image id, "sha256:<hex>"). Calls may come from
// many threads at once.
struct RegistryFetcher {
  std::function<bool(const std::string& ref)> names_registry;
  std::function<Result<std::string>(const std::string& ref, bool local_client)> fetch;
};

// Stored images through `store` and `cache` (both must outlive the resolver
// and every lease it hands out); host directories only when
// `allow_directories` (paddockd --allow-dir-images) and the call allows them.
class StoreImageResolver final : public ImageResolver {
 public:
  StoreImageResolver(ImageStore* store, LayerCache* cache, bool allow_directories = false,
                     RegistryFetcher registry = {})
      : store_(store), cache_(cache), allow_directories_(allow_directories), registry_(std::move(registry)) {}
  Result<ResolvedImage> Resolve(const std::string& ref, const ImageAccess& access) override;
  Result<SnapshotResult> CommitLayer(const ResolvedImage& base, const TarProducer& top,
                                     const std::string& name) override;

 private:
  struct Cached;
  ImageStore* store_;
  LayerCache* cache_;
  const bool allow_directories_;
  const RegistryFetcher registry_;  // empty: no pull on first use
  // The warm path stays independent of the image's size and layer count: a
  // resolved image (immutable by digest) is kept while any sandbox holds it,
  // and its layers' leases are shared by those sandboxes. Only the name →
  // digest lookup touches the store on every Resolve.
  std::mutex mu_;
  std::map<std::string, std::weak_ptr<Cached>> cached_;  // by image digest
};

}  // namespace paddock::storage
