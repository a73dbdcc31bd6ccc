// ImageStore: images (manifest + config), their layers, names and tags, over a
// BlobStore rooted at the same directory.
//
// Layout under ROOT (besides the BlobStore's blobs/, staging/, blobrefs/):
//   layers/sha256/<diff_id hex>   JSON StoredLayer: where the layer with this
//                                 uncompressed digest is stored (dedup key)
//   images/<manifest hex>         present ⇔ the image exists (holds a ref on the manifest)
//   refs/names/<escaped name:tag> the manifest digest this name points at
// Every file is replaced atomically (temp + rename); see blob_store.h for the
// shared-filesystem contract.
//
// References: an image holds its manifest ("image"); a manifest holds its config,
// layer and index blobs ("manifest:<hex>"). Remove() drops the image and cascades;
// Gc() frees unreferenced blobs and repairs references a crash left behind.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/blob_store.h"
#include "storage/image.h"
#include "storage/layer.h"
#include "storage/layer_ingest.h"

namespace paddock::storage {

struct ImageStoreOptions {
  Compression compression = Compression::kZstd;  // for new layers
  int zstd_level = 3;
  int lz4_level = 0;  // 0 = lz4 fast mode
  LayerLimits limits;
  uint64_t max_json_bytes = 16ull << 20;  // manifests, configs, index.json
};

struct Image {
  Digest digest;  // of the manifest: the image id
  Manifest manifest;
  std::string config_json;  // OCI image config, verbatim
  ImageConfig config;
  std::vector<std::string> names;  // "name:tag" pointing here
};

struct ImageSummary {
  Digest digest;
  std::vector<std::string> names;
  size_t layers = 0;
  uint64_t stored_bytes = 0;  // sum of compressed layer sizes (shared layers counted each time)
};

// What a layer to add is known to be, from the archive's descriptors.
struct LayerHint {
  std::string name;                        // for errors
  std::optional<Digest> source_digest;     // the archive blob's digest, checked
  std::optional<Digest> diff_id;           // from the config, checked; enables dedup
};

// What AddLayer does beyond the store's defaults (IngestOptions says more).
struct AddLayerOptions {
  // Stage a gzip or zstd source byte for byte as the layer's blob instead of
  // recompressing it (a registry pull's layers).
  bool keep_compressed_source = false;
  // Unpack the layer into this existing, empty directory in the same pass
  // (LayerCache::StreamedLayer::root()); its stats go to `unpacked`. The tree
  // is only trustworthy when AddLayer returned OK.
  std::string unpack_into;
  bool unpack_writeback = false;
  UnpackStats* unpacked = nullptr;
};

class ImageStore;

// Builds one or more images atomically: layers are staged, and nothing is visible
// in the store until Commit(). Destroying an uncommitted transaction leaves the
// store as it was. Used by import now, and by snapshot (a sandbox's upper dir as a
// tar stream → AddLayer → Commit on top of the parent's layers) next.
class ImageTransaction {
 public:
  ~ImageTransaction();
  // Ingests a layer. If the hint's diff_id is already stored, the source is only
  // validated and hashed (nothing written) and the stored layer reused.
  // AddLayer and ReuseLayer may run on several threads at once (a pull's
  // parallel layers); the rest of the transaction is one thread's.
  Result<StoredLayer> AddLayer(const ByteSource& source, const LayerHint& hint, const AddLayerOptions& options = {});
  // Reuses a layer already in the store (e.g. a parent image's) by diff_id.
  Result<StoredLayer> ReuseLayer(const Digest& diff_id);
  // A layer exactly as another store holds it (storage/image_copy.h): `source`
  // must be the blob `expected.blob` byte for byte, kept as it comes (zstd, lz4
  // or gzip). Entries are checked as AddLayer checks them; the diff_id, the
  // sizes, the compression and the index computed here must be `expected`'s
  // (INVALID_ARGUMENT naming what differs). `name` names the layer in errors.
  Result<StoredLayer> AddStoredLayer(const ByteSource& source, const StoredLayer& expected, const std::string& name);
  // `layer` from blobs the store already holds (its blob and index, and a
  // record of its diff_id); NOT_FOUND when any is missing.
  Result<StoredLayer> ReuseStoredLayer(const StoredLayer& layer);
  // Queues an image: config JSON (OCI config; its diff_ids must match `layers`)
  // plus layers added/reused in this transaction, bottom first. Returns its digest.
  Result<Digest> AddImage(std::string config_json, const std::vector<StoredLayer>& layers,
                          std::vector<std::string> names);
  // Checks the whole layer stacks (no entry written through a lower layer's
  // symlink), then commits blobs, layer records, images and names, in that order.
  Status Commit();

 private:
  friend class ImageStore;
  struct PendingImage;
  struct PendingLayer;
  ImageTransaction(ImageStore* store, std::unique_ptr<StagingArea> staging);
  ImageStore* store_;
  std::unique_ptr<StagingArea> staging_;
  std::mutex layers_mu_;  // guards layers_ while layers are added
  std::vector<std::unique_ptr<PendingLayer>> layers_;
  std::vector<std::unique_ptr<PendingImage>> images_;
  bool committed_ = false;
};

class ImageStore {
 public:
  static Result<std::unique_ptr<ImageStore>> Open(const std::string& root, ImageStoreOptions options = {});

  BlobStore& blobs() { return *blobs_; }
  const ImageStoreOptions& options() const { return options_; }
  const std::string& root() const { return root_; }

  Result<std::unique_ptr<ImageTransaction>> Begin();

  // "name" means "name:latest". A digest or a unique hex prefix (≥ 4 chars,
  // "sha256:" optional) also resolves. NOT_FOUND says how to list images.
  Result<Digest> Resolve(std::string_view ref) const;
  Result<Image> Get(std::string_view ref) const;
  Result<std::vector<ImageSummary>> List() const;
  // Points `name` at an existing image (replacing what it pointed at, which stays
  // as an untagged image until removed).
  Status Tag(const Digest& image, std::string_view name);
  // By name: drops the name, and the image when no other name points at it.
  // By digest: drops the image and every name pointing at it. Blobs are freed by Gc.
  Status Remove(std::string_view ref);
  Result<GcReport> Gc(const GcOptions& options = {});

  // Layer access for materialization and export.
  Result<StoredLayer> FindLayer(const Digest& diff_id) const;
  Result<std::vector<LayerEntry>> LayerEntries(const StoredLayer& layer) const;
  // Streams the layer's uncompressed tar (decompressing with libarchive) and
  // checks it against the diff_id at the end (DATA_LOSS on mismatch).
  Status StreamLayerTar(const StoredLayer& layer, const std::function<Status(const void*, size_t)>& sink) const;

  static Result<std::string> NormalizeName(std::string_view name);

 private:
  friend class ImageTransaction;
  ImageStore(std::string root, ImageStoreOptions options, std::unique_ptr<BlobStore> blobs)
      : root_(std::move(root)), options_(options), blobs_(std::move(blobs)) {}
  std::string LayerRecordPath(const Digest& diff_id) const;
  std::string NamePath(const std::string& normalized) const;
  std::string ImagePath(const Digest& d) const;
  Result<std::vector<std::pair<std::string, Digest>>> Names() const;
  Status DropImage(const Digest& d);
  std::string root_;
  ImageStoreOptions options_;
  std::unique_ptr<BlobStore> blobs_;
};

}  // namespace paddock::storage
