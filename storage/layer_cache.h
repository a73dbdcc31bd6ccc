// LayerCache: the node-local materialization cache. Each layer is unpacked at most
// once per node and shared read-only by every sandbox as an overlay lower dir.
//
// Layout under DIR (node-local, e.g. STATE/layers; never the shared store):
//   DIR/<diff_id hex>/root         the unpacked layer (overlay lower dir, read-only by convention)
//   DIR/<diff_id hex>/marker.json  {"diff_id", "blob", "compression", "bytes", ...}; its mtime is the last use
//   DIR/.tmp/<hex>.<unique>/       an unpack in progress; renamed to DIR/<hex> when complete
//   DIR/.locks/<hex>.lock          flock: EX while unpacking or evicting, SH while leased
//
// Whiteouts are in overlayfs form (see overlay_whiteout.h): `.wh.NAME` is a 0/0
// char device NAME, `.wh..wh..opq` is trusted.overlay.opaque=y on the directory.
// Mount an image as lowerdir=top:...:bottom of the leases' root() paths.
//
// Concurrency: concurrent Acquire()s of one layer in this process wait on one
// unpack (a shared future per layer); other processes using the same DIR wait on
// the layer's lock file. A lease (LayerLease) pins its layer: eviction skips layers
// leased here, and layers another process holds a shared lock on.
//
// Size bound: `max_bytes` over the layers' apparent size (tar bytes). After each
// unpack and each last release, least-recently-used unleased layers are evicted
// until the total fits. Leased layers are never evicted, so the bound can be
// exceeded while they are all in use.
//
// Restart: Open() removes partial unpacks (DIR/.tmp) and every layer whose marker
// is missing or unreadable, names another diff_id, or whose layer or blob is no
// longer in the store (or is stored from another blob). Intact layers are kept, in
// LRU order by marker mtime. File contents are not re-hashed at open (the unpack
// checked the diff_id; the tree is private to the daemon).
//
// Streamed layers: a registry pull unpacks a new layer into the cache while it
// downloads (BeginStream → the ingest writes into root() → Commit once the
// store has committed the layer), instead of the cache decompressing the stored
// blob again later. The partial tree lives in DIR/.tmp under the layer's lock,
// like an unpack of our own, and is removed unless committed.
//
// Durable later, usable at once (LayerCacheOptions::sync): a committed
// streamed layer is renamed into place *without* its marker and is leasable
// right away; a background syncer then syncfs()es the cache's filesystem and
// only after that writes and fsyncs the marker. The marker is the only proof
// of a complete layer (Open removes marker-less trees), so a crash before it
// is durable means the layer is unpacked again after the restart, never that a
// half-written tree is trusted. Until its marker is written the layer is
// "settling": the stream's LOCK_EX on its lock file is kept (another process
// neither evicts it nor unpacks it over it; its Acquire waits for the marker),
// this process's eviction skips it, and Acquire leases it without taking the
// shared lock (it holds the exclusive one); once settled, the lock becomes
// shared while leases remain, or is dropped. The destructor waits for the
// syncer.
//
// Lifetime: the cache must outlive every lease and every StreamedLayer.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <thread>
#include <vector>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "sandbox/base/unique_fd.h"
#include "storage/image_store.h"
#include "storage/layer_tree_writer.h"

namespace paddock::storage {

struct LayerCacheOptions {
  uint64_t max_bytes = 0;  // 0: unbounded
  // syncfs() before a finished unpack is marked complete, so a power loss
  // cannot leave a marked layer with missing data. Off only for benchmarks/tests.
  bool sync = true;
  // Tests only (timing injection): called by the background syncer before it
  // syncs a batch of streamed layers; it may block to hold them "settling".
  std::function<void()> before_settle;
};

struct LayerCacheStats {
  uint64_t unpacks = 0;      // layers unpacked by this process
  uint64_t hits = 0;         // Acquire()s served by a ready layer
  uint64_t waits = 0;        // Acquire()s that waited on another thread's unpack
  uint64_t evictions = 0;
  uint64_t settling = 0;     // streamed layers leasable but not yet durable (no marker yet)
  uint64_t bytes = 0;        // apparent size of the layers known to be cached
  size_t layers = 0;
};

struct LayerCacheOpenReport {
  size_t kept = 0;
  size_t removed_partial = 0;  // DIR/.tmp leftovers
  size_t removed_invalid = 0;  // bad marker, or layer/blob gone from the store
};

class LayerCache;
struct CachedLayer;

// One layer being unpacked into the cache by someone else's stream (a pull).
// Move-only; destroying it uncommitted removes the partial tree, so a layer
// whose download failed its digest, or whose archive was refused, never
// appears in the cache.
class StreamedLayer {
 public:
  ~StreamedLayer();
  StreamedLayer(const StreamedLayer&) = delete;
  StreamedLayer& operator=(const StreamedLayer&) = delete;
  // The empty directory to unpack into.
  const std::string& root() const { return root_; }
  // Makes the finished tree durable now (LayerCacheOptions::sync: syncfs), so a
  // pull syncs each layer as soon as it is unpacked, overlapping the layers
  // still downloading, and Commit only has the marker left to sync.
  Status Sync();
  // After the store has committed `stored` (same diff_id): renames the tree
  // into place and makes it a ready, unleased layer. With
  // LayerCacheOptions::sync and a tree not yet synced (Sync), the layer is
  // leasable at once and made durable in the background (see "Durable later"
  // above); otherwise the marker is written (and synced) before it returns. On
  // error the tree is removed (Acquire unpacks the layer from the store later).
  Status Commit(const StoredLayer& stored, const UnpackStats& stats);

 private:
  friend class LayerCache;
  StreamedLayer(LayerCache* cache, Digest diff_id, std::string tmp, UniqueFd lock);
  LayerCache* cache_;
  Digest diff_id_;
  std::string tmp_, root_;
  UniqueFd lock_;  // LOCK_EX on the layer's lock file until committed or dropped
  bool done_ = false;
  bool synced_ = false;
};

// Pins one materialized layer. Move-only; releasing (destruction) makes the layer
// evictable again once no other lease holds it.
class LayerLease {
 public:
  LayerLease() = default;
  LayerLease(LayerLease&& o) noexcept;
  LayerLease& operator=(LayerLease&& o) noexcept;
  ~LayerLease();
  explicit operator bool() const { return layer_ != nullptr; }
  const std::string& root() const;  // DIR/<hex>/root
  const Digest& diff_id() const;
  void Release();

 private:
  friend class LayerCache;
  LayerLease(LayerCache* cache, std::shared_ptr<CachedLayer> layer) : cache_(cache), layer_(std::move(layer)) {}
  LayerCache* cache_ = nullptr;
  std::shared_ptr<CachedLayer> layer_;
};

class LayerCache {
 public:
  static Result<std::unique_ptr<LayerCache>> Open(const std::string& dir, ImageStore* store,
                                                  LayerCacheOptions options = {});
  ~LayerCache();

  // Returns a lease on the layer's unpacked tree, unpacking it first if needed.
  Result<LayerLease> Acquire(const Digest& diff_id);
  // A directory to unpack the layer into while it streams, or null when the
  // layer is cached, being unpacked here or by another process, or its
  // directory exists already: then the caller only stores it, and Acquire
  // deals with it as with any stored layer.
  Result<std::unique_ptr<StreamedLayer>> BeginStream(const Digest& diff_id);
  // Evicts unleased layers, least recently used first, until the total fits.
  Status Trim();
  // True when the layer is present and marked complete (no lease taken).
  bool Contains(const Digest& diff_id) const;

  LayerCacheStats stats() const;
  const LayerCacheOpenReport& open_report() const { return open_report_; }
  const std::string& dir() const { return dir_; }
  const LayerCacheOptions& options() const { return options_; }
  std::string LayerDir(const Digest& diff_id) const { return dir_ + "/" + diff_id.hex(); }

 private:
  friend class LayerLease;
  friend class StreamedLayer;
  // Marker, sync and rename of a finished tree at `tmp` (layer lock held);
  // `tree_synced`: the tree is durable already, only the marker needs syncing.
  Status Install(const std::string& tmp, const StoredLayer& stored, const UnpackStats& stats,
                 bool tree_synced = false);
  // A streamed layer became ready.
  void Adopt(const Digest& diff_id, uint64_t bytes);
  // A streamed layer renamed into place without its marker: ready now, durable
  // once the syncer has written `marker` (it keeps `lock`, LOCK_EX, until then).
  void AdoptSettling(const Digest& diff_id, uint64_t bytes, std::string marker, UniqueFd lock);
  void SettleLoop();
  struct Settle {
    Digest diff_id;
    std::string marker;
    UniqueFd lock;
    std::shared_ptr<CachedLayer> layer;  // null: an Acquire was already waiting on the lock
  };
  LayerCache(std::string dir, ImageStore* store, LayerCacheOptions options)
      : dir_(std::move(dir)), store_(store), options_(options) {}
  Status Scan();
  Status Materialize(CachedLayer* layer);
  Status TakeShared(CachedLayer* layer);  // mu_ held
  void Release(CachedLayer* layer);
  // Evicts what it can; mu_ held. Removed trees are queued in `doomed`.
  void EvictLocked(const CachedLayer* keep, std::vector<std::string>* doomed);
  void RemoveTrees(const std::vector<std::string>& doomed);
  std::string LockPath(const std::string& hex) const { return dir_ + "/.locks/" + hex + ".lock"; }
  // Whether DIR/<hex> is a complete layer matching the store; `why` says what is wrong.
  bool ValidMarker(const std::string& hex, uint64_t* bytes, std::string* why) const;

  std::string dir_;
  ImageStore* store_;
  LayerCacheOptions options_;
  LayerCacheOpenReport open_report_;

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<CachedLayer>> layers_;  // by diff_id hex
  uint64_t tick_ = 0;
  LayerCacheStats stats_;
  // The background syncer of streamed layers (guarded by mu_).
  std::vector<Settle> to_settle_;
  std::condition_variable settle_cv_;
  bool stopping_ = false;
  std::thread settler_;
};

}  // namespace paddock::storage
