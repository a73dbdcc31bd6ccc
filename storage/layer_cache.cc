#include "storage/layer_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "storage/fs_util.h"
#include "storage/layer_unpack.h"

namespace fs = std::filesystem;

namespace paddock::storage {

struct CachedLayer {
  Digest diff_id;
  std::string root;
  uint64_t bytes = 0;
  int leases = 0;
  bool ready = false;
  std::shared_future<Status> pending;
  UniqueFd shared_lock;  // LOCK_SH on the layer's lock file while leases > 0
  uint64_t last_used = 0;
  // A streamed layer not yet durable: no marker yet; `settle_lock` holds the
  // layer's lock file LOCK_EX until the syncer has written the marker.
  bool settling = false;
  UniqueFd settle_lock;
};

// ---------- LayerLease ----------

LayerLease::LayerLease(LayerLease&& o) noexcept
    : cache_(std::exchange(o.cache_, nullptr)), layer_(std::move(o.layer_)) {}

LayerLease& LayerLease::operator=(LayerLease&& o) noexcept {
  if (this != &o) {
    Release();
    cache_ = std::exchange(o.cache_, nullptr);
    layer_ = std::move(o.layer_);
  }
  return *this;
}

LayerLease::~LayerLease() { Release(); }

void LayerLease::Release() {
  if (layer_ && cache_) cache_->Release(layer_.get());
  layer_.reset();
  cache_ = nullptr;
}

const std::string& LayerLease::root() const { return layer_->root; }
const Digest& LayerLease::diff_id() const { return layer_->diff_id; }

// ---------- helpers ----------

namespace {

constexpr const char* kMarker = "marker.json";

int FlockRetry(int fd, int op) {
  for (;;) {
    int r = ::flock(fd, op);
    if (r == 0 || errno != EINTR) return r;
  }
}

Result<UniqueFd> OpenLock(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoError(fmt::format("opening lock {}", path));
  return fd;
}

// Tries LOCK_EX without waiting; an invalid fd when someone else holds the lock.
UniqueFd TryExclusive(const std::string& path) {
  auto fd = OpenLock(path);
  if (!fd.ok()) return UniqueFd();
  if (FlockRetry(fd->get(), LOCK_EX | LOCK_NB) != 0) return UniqueFd();
  return std::move(fd).value();
}

std::string MarkerText(const StoredLayer& stored, const UnpackStats& stats) {
  nlohmann::json m = {{"diff_id", stored.diff_id.str()},
                      {"blob", stored.blob.str()},
                      {"compression", CompressionName(stored.compression)},
                      {"bytes", stored.uncompressed_size},
                      {"entries", stats.entries},
                      {"whiteouts", stats.whiteouts},
                      {"opaque_dirs", stats.opaque_dirs},
                      {"format", 1}};
  return m.dump();
}

// LAYER_DIR/marker.json, fsynced with its directory entry. A crash half way
// leaves a marker that does not parse, which Open treats as none.
Status WriteDurableMarker(const std::string& layer_dir, const std::string& text) {
  const std::string path = layer_dir + "/" + kMarker;
  UniqueFd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!f.valid()) return ErrnoError("writing layer marker " + path);
  PADDOCK_RETURN_IF_ERROR(WriteAll(f.get(), text.data(), text.size(), "layer marker"));
  if (::fsync(f.get()) != 0) return ErrnoError("fsync of the layer marker " + path);
  f.reset();
  return FsyncDir(layer_dir);
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);  // does not follow symlinks
  if (ec) spdlog::warn("layer cache: removing {}: {}", path, ec.message());
}

}  // namespace

// ---------- LayerCache ----------

Result<std::unique_ptr<LayerCache>> LayerCache::Open(const std::string& dir, ImageStore* store,
                                                     LayerCacheOptions options) {
  PADDOCK_RETURN_IF_ERROR(MakePrivateDir(dir));
  PADDOCK_RETURN_IF_ERROR(MakeDirs(dir + "/.tmp"));
  PADDOCK_RETURN_IF_ERROR(MakeDirs(dir + "/.locks"));
  std::unique_ptr<LayerCache> cache(new LayerCache(dir, store, options));
  PADDOCK_RETURN_IF_ERROR(cache->Scan());
  PADDOCK_RETURN_IF_ERROR(cache->Trim());
  return cache;
}

LayerCache::~LayerCache() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  settle_cv_.notify_all();
  if (settler_.joinable()) settler_.join();  // every committed streamed layer gets its marker first
}

bool LayerCache::ValidMarker(const std::string& hex, uint64_t* bytes, std::string* why) const {
  std::string layer_dir = dir_ + "/" + hex;
  auto text = ReadFileLimited(layer_dir + "/" + kMarker, 1 << 16);
  if (!text.ok()) {
    *why = "no readable marker";
    return false;
  }
  auto j = nlohmann::json::parse(text.value(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("diff_id") || !j.contains("blob") ||
      !j.contains("bytes") || !j["diff_id"].is_string() || !j["blob"].is_string() ||
      !j["bytes"].is_number_unsigned()) {
    *why = "corrupt marker";
    return false;
  }
  if (j["diff_id"].get<std::string>() != "sha256:" + hex) {
    *why = "marker names another layer";
    return false;
  }
  auto blob = Digest::Parse(j["blob"].get<std::string>());
  auto layer = store_->FindLayer(Digest::FromHex(hex));
  if (!layer.ok()) {
    *why = "layer no longer in the store";
    return false;
  }
  if (!blob.ok() || !(blob.value() == layer->blob)) {
    *why = "marker names another blob than the store's";
    return false;
  }
  if (!store_->blobs().Has(layer->blob)) {
    *why = "blob no longer in the store";
    return false;
  }
  struct stat st;
  if (::lstat((layer_dir + "/root").c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    *why = "no root directory";
    return false;
  }
  *bytes = j["bytes"].get<uint64_t>();
  return true;
}

Status LayerCache::Scan() {
  std::error_code ec;
  // Partial unpacks and interrupted evictions.
  for (auto& d : fs::directory_iterator(dir_ + "/.tmp", ec)) {
    std::string name = d.path().filename();
    std::string hex = name.substr(0, name.find('.'));
    UniqueFd lock;
    if (IsHex64(hex)) {
      lock = TryExclusive(LockPath(hex));
      if (!lock.valid()) continue;  // another process is unpacking it right now
    }
    RemoveTree(d.path());
    ++open_report_.removed_partial;
  }
  if (ec) return Error(Code::kInternal, "layer cache: listing {}/.tmp: {}", dir_, ec.message());

  struct Found {
    std::string hex;
    uint64_t bytes;
    int64_t mtime;
  };
  std::vector<Found> found;
  for (auto& d : fs::directory_iterator(dir_, ec)) {
    std::string hex = d.path().filename();
    if (!IsHex64(hex)) continue;  // .tmp, .locks, anything else is not ours to judge
    uint64_t bytes = 0;
    std::string why;
    if (ValidMarker(hex, &bytes, &why)) {
      struct stat st {};
      ::stat((d.path().string() + "/" + kMarker).c_str(), &st);
      found.push_back({hex, bytes, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec});
      continue;
    }
    UniqueFd lock = TryExclusive(LockPath(hex));
    if (!lock.valid()) continue;
    spdlog::info("layer cache: removing sha256:{}: {}", hex, why);
    std::string doomed = dir_ + "/.tmp/dead." + hex + "." + UniqueTempName("x");
    if (::rename(d.path().c_str(), doomed.c_str()) == 0) RemoveTree(doomed);
    ++open_report_.removed_invalid;
  }
  if (ec) return Error(Code::kInternal, "layer cache: listing {}: {}", dir_, ec.message());

  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.mtime < b.mtime; });
  std::lock_guard<std::mutex> l(mu_);
  for (auto& f : found) {
    auto layer = std::make_shared<CachedLayer>();
    layer->diff_id = Digest::FromHex(f.hex);
    layer->root = dir_ + "/" + f.hex + "/root";
    layer->bytes = f.bytes;
    layer->ready = true;
    layer->last_used = ++tick_;
    stats_.bytes += f.bytes;
    layers_[f.hex] = layer;
  }
  open_report_.kept = found.size();
  return Status::Ok();
}

Status LayerCache::TakeShared(CachedLayer* layer) {
  PADDOCK_ASSIGN_OR_RETURN(UniqueFd fd, OpenLock(LockPath(layer->diff_id.hex())));
  if (FlockRetry(fd.get(), LOCK_SH) != 0) return ErrnoError("locking cached layer");
  struct stat st;
  std::string marker = LayerDir(layer->diff_id) + "/" + kMarker;
  if (::stat(marker.c_str(), &st) != 0)
    return Error(Code::kNotFound, "cached layer {} was removed", layer->diff_id.str());
  layer->shared_lock = std::move(fd);
  return Status::Ok();
}

Status LayerCache::Materialize(CachedLayer* layer) {
  const std::string hex = layer->diff_id.hex();
  PADDOCK_ASSIGN_OR_RETURN(StoredLayer stored, store_->FindLayer(layer->diff_id));
  PADDOCK_ASSIGN_OR_RETURN(UniqueFd lock, OpenLock(LockPath(hex)));
  if (FlockRetry(lock.get(), LOCK_EX) != 0) return ErrnoError("locking layer for unpack");

  uint64_t bytes = 0;
  std::string why;
  bool unpacked = false;
  if (!ValidMarker(hex, &bytes, &why)) {
    std::string final_dir = LayerDir(layer->diff_id);
    if (::access(final_dir.c_str(), F_OK) == 0) {  // a stale or bad tree: out of the way
      std::string doomed = dir_ + "/.tmp/dead." + hex + "." + UniqueTempName("x");
      if (::rename(final_dir.c_str(), doomed.c_str()) != 0) return ErrnoError("moving stale cached layer");
      RemoveTree(doomed);
    }
    std::string tmp = dir_ + "/.tmp/" + hex + "." + UniqueTempName("u");
    PADDOCK_RETURN_IF_ERROR(MakeDirs(tmp + "/root"));
    auto st = UnpackLayer(*store_, stored, tmp + "/root", UnpackOptions{.start_writeback = options_.sync});
    if (!st.ok()) {
      RemoveTree(tmp);
      return st.status();
    }
    if (Status is = Install(tmp, stored, *st); !is.ok()) {
      RemoveTree(tmp);
      return is;
    }
    bytes = stored.uncompressed_size;
    unpacked = true;
  }
  // Exclusive → shared. The conversion is not atomic, so check the layer is still there.
  if (FlockRetry(lock.get(), LOCK_SH) != 0) return ErrnoError("locking cached layer");
  if (::access((LayerDir(layer->diff_id) + "/" + kMarker).c_str(), F_OK) != 0)
    return Error(Code::kAborted, "cached layer {} was evicted by another process while being acquired",
                 layer->diff_id.str());
  layer->shared_lock = std::move(lock);
  layer->bytes = bytes;
  if (unpacked) {
    std::lock_guard<std::mutex> l(mu_);
    ++stats_.unpacks;
  }
  return Status::Ok();
}

Status LayerCache::Install(const std::string& tmp, const StoredLayer& stored, const UnpackStats& stats,
                           bool tree_synced) {
  std::string text = MarkerText(stored, stats);
  Status ws = Status::Ok();
  {
    UniqueFd f(::open((tmp + "/" + kMarker).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ws = f.valid() ? WriteAll(f.get(), text.data(), text.size(), "layer marker") : ErrnoError("writing layer marker");
    if (ws.ok() && options_.sync) {
      if (!tree_synced && ::syncfs(f.get()) != 0) ws = ErrnoError("syncfs on the layer cache");
      if (ws.ok() && tree_synced && ::fsync(f.get()) != 0) ws = ErrnoError("fsync of the layer marker");
      if (ws.ok() && tree_synced) ws = FsyncDir(tmp);
    }
  }
  if (ws.ok() && ::rename(tmp.c_str(), LayerDir(stored.diff_id).c_str()) != 0)
    ws = ErrnoError("renaming unpacked layer into place");
  if (ws.ok() && options_.sync) ws = FsyncDir(dir_);
  return ws.Prefix(fmt::format("layer {}", stored.diff_id.str()));
}

// ---------- streamed layers ----------

StreamedLayer::StreamedLayer(LayerCache* cache, Digest diff_id, std::string tmp, UniqueFd lock)
    : cache_(cache), diff_id_(diff_id), tmp_(std::move(tmp)), root_(tmp_ + "/root"), lock_(std::move(lock)) {}

StreamedLayer::~StreamedLayer() {
  if (!done_) RemoveTree(tmp_);  // before the lock goes: no one may see it half-made
}

Status StreamedLayer::Sync() {
  if (!cache_->options_.sync || synced_) return Status::Ok();
  UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::syncfs(fd.get()) != 0) return ErrnoError("syncfs on the layer cache");
  synced_ = true;
  return Status::Ok();
}

Status StreamedLayer::Commit(const StoredLayer& stored, const UnpackStats& stats) {
  if (done_) return Error(Code::kFailedPrecondition, "streamed layer {} already committed", diff_id_.str());
  done_ = true;
  auto fail = [&](Status st) {
    RemoveTree(tmp_);
    return st;
  };
  if (!(stored.diff_id == diff_id_))
    return fail(Error(Code::kInternal, "streamed layer {} committed as {}", diff_id_.str(), stored.diff_id.str()));
  // The marker must agree with the store's record, as Open() will check.
  auto record = cache_->store_->FindLayer(diff_id_);
  if (!record.ok() || !(record->blob == stored.blob))
    return fail(Error(Code::kFailedPrecondition, "layer {} is not committed in the store as blob {}", diff_id_.str(),
                      stored.blob.str()));
  if (cache_->options_.sync && !synced_) {
    // Usable now, durable later: into place without a marker; the syncer
    // writes it once the tree is on disk (and keeps the lock until then).
    if (::rename(tmp_.c_str(), cache_->LayerDir(diff_id_).c_str()) != 0)
      return fail(ErrnoError(fmt::format("layer {}: renaming unpacked layer into place", diff_id_.str())));
    cache_->AdoptSettling(diff_id_, stored.uncompressed_size, MarkerText(stored, stats), std::move(lock_));
    return Status::Ok();
  }
  if (Status st = cache_->Install(tmp_, stored, stats, synced_); !st.ok()) return fail(st);
  cache_->Adopt(diff_id_, stored.uncompressed_size);
  lock_.reset();
  return Status::Ok();
}

void LayerCache::AdoptSettling(const Digest& diff_id, uint64_t bytes, std::string marker, UniqueFd lock) {
  std::vector<std::string> doomed;
  {
    std::lock_guard<std::mutex> l(mu_);
    ++stats_.unpacks;
    const std::string hex = diff_id.hex();
    Settle s{diff_id, std::move(marker), UniqueFd(), nullptr};
    if (layers_.count(hex)) {
      // An Acquire here got to the layer first and waits on its lock: it uses
      // the tree once the marker is written and the lock released.
      s.lock = std::move(lock);
    } else {
      auto layer = std::make_shared<CachedLayer>();
      layer->diff_id = diff_id;
      layer->root = LayerDir(diff_id) + "/root";
      layer->bytes = bytes;
      layer->ready = true;
      layer->settling = true;
      layer->settle_lock = std::move(lock);
      layer->last_used = ++tick_;
      stats_.bytes += bytes;
      ++stats_.settling;
      layers_[hex] = layer;
      s.layer = layer;
      EvictLocked(nullptr, &doomed);  // others, to make room: a settling layer is never evicted
    }
    to_settle_.push_back(std::move(s));
    if (!settler_.joinable()) settler_ = std::thread([this] { SettleLoop(); });
  }
  settle_cv_.notify_one();
  RemoveTrees(doomed);
}

// Batches of streamed layers: one syncfs for all of them (the trees, and
// their renames into place), then each marker, fsynced; then each becomes an
// ordinary cached layer.
void LayerCache::SettleLoop() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    settle_cv_.wait(l, [&] { return stopping_ || !to_settle_.empty(); });
    if (to_settle_.empty()) return;  // stopping, nothing left to make durable
    std::vector<Settle> batch = std::move(to_settle_);
    to_settle_.clear();
    l.unlock();
    if (options_.before_settle) options_.before_settle();
    Status synced = Status::Ok();
    {
      UniqueFd fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!fd.valid() || ::syncfs(fd.get()) != 0) synced = ErrnoError("syncfs on the layer cache");
    }
    std::vector<Status> results;
    for (const auto& s : batch)
      results.push_back(synced.ok() ? WriteDurableMarker(LayerDir(s.diff_id), s.marker) : synced);
    if (synced.ok()) (void)FsyncDir(dir_);
    std::vector<std::string> doomed;
    l.lock();
    for (size_t i = 0; i < batch.size(); ++i) {
      Settle& s = batch[i];
      if (!results[i].ok()) {
        // Not durable: the tree serves this process (it is complete in memory)
        // but keeps no marker, so a restart unpacks it again. A settling layer
        // keeps its lock: nothing here or elsewhere evicts or redoes it.
        spdlog::warn("layer cache: layer {} stays without a marker (unpacked again after a restart): {}",
                     s.diff_id.str(), results[i].message());
        continue;
      }
      if (!s.layer) continue;  // s.lock goes below: the waiting Acquire finds the marker
      CachedLayer& layer = *s.layer;
      layer.settling = false;
      --stats_.settling;
      UniqueFd lock = std::move(layer.settle_lock);
      if (layer.leases > 0) {
        // Exclusive → shared while leased (our own lock: the conversion does not wait).
        if (FlockRetry(lock.get(), LOCK_SH) == 0) layer.shared_lock = std::move(lock);
        else spdlog::warn("layer cache: layer {}: sharing its lock: {}", s.diff_id.str(), std::strerror(errno));
      }
    }
    EvictLocked(nullptr, &doomed);
    l.unlock();
    batch.clear();  // drops the locks of detached and settled, unleased layers
    RemoveTrees(doomed);
    l.lock();
  }
}

Result<std::unique_ptr<StreamedLayer>> LayerCache::BeginStream(const Digest& diff_id) {
  const std::string hex = diff_id.hex();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (layers_.count(hex)) return std::unique_ptr<StreamedLayer>();  // cached, or an unpack in flight here
  }
  UniqueFd lock = TryExclusive(LockPath(hex));
  if (!lock.valid()) return std::unique_ptr<StreamedLayer>();  // another process has it
  if (::access(LayerDir(diff_id).c_str(), F_OK) == 0) return std::unique_ptr<StreamedLayer>();
  std::string tmp = dir_ + "/.tmp/" + hex + "." + UniqueTempName("s");
  PADDOCK_RETURN_IF_ERROR(MakeDirs(tmp + "/root"));
  return std::unique_ptr<StreamedLayer>(new StreamedLayer(this, diff_id, std::move(tmp), std::move(lock)));
}

void LayerCache::Adopt(const Digest& diff_id, uint64_t bytes) {
  std::vector<std::string> doomed;
  {
    std::lock_guard<std::mutex> l(mu_);
    ++stats_.unpacks;
    const std::string hex = diff_id.hex();
    if (layers_.count(hex)) return;  // an Acquire got here first; it finds the marker
    auto layer = std::make_shared<CachedLayer>();
    layer->diff_id = diff_id;
    layer->root = LayerDir(diff_id) + "/root";
    layer->bytes = bytes;
    layer->ready = true;
    layer->last_used = ++tick_;
    stats_.bytes += bytes;
    layers_[hex] = layer;
    EvictLocked(nullptr, &doomed);
  }
  RemoveTrees(doomed);
}

Result<LayerLease> LayerCache::Acquire(const Digest& diff_id) {
  const std::string hex = diff_id.hex();
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    auto it = layers_.find(hex);
    if (it != layers_.end()) {
      std::shared_ptr<CachedLayer> layer = it->second;
      if (layer->ready) {
        // A settling layer is held LOCK_EX by this process until its marker is
        // written: nothing else can take it away, and no shared lock is needed.
        if (layer->leases == 0 && !layer->settling) {
          Status st = TakeShared(layer.get());
          if (st.code() == Code::kNotFound) {  // removed behind our back: unpack again
            stats_.bytes -= layer->bytes;
            layers_.erase(it);
            continue;
          }
          PADDOCK_RETURN_IF_ERROR(st);
        }
        ++layer->leases;
        layer->last_used = ++tick_;
        ++stats_.hits;
        return LayerLease(this, layer);
      }
      std::shared_future<Status> pending = layer->pending;
      ++stats_.waits;
      l.unlock();
      Status st = pending.get();
      l.lock();
      PADDOCK_RETURN_IF_ERROR(st);
      continue;
    }

    auto layer = std::make_shared<CachedLayer>();
    layer->diff_id = diff_id;
    layer->root = LayerDir(diff_id) + "/root";
    std::promise<Status> done;
    layer->pending = done.get_future().share();
    layers_[hex] = layer;
    l.unlock();
    Status st = Materialize(layer.get());
    l.lock();
    if (!st.ok()) {
      layers_.erase(hex);
      done.set_value(st);
      return st;
    }
    layer->ready = true;
    layer->leases = 1;
    layer->last_used = ++tick_;
    stats_.bytes += layer->bytes;
    done.set_value(Status::Ok());
    std::vector<std::string> doomed;
    EvictLocked(layer.get(), &doomed);
    l.unlock();
    RemoveTrees(doomed);
    return LayerLease(this, layer);
  }
}

void LayerCache::Release(CachedLayer* layer) {
  std::vector<std::string> doomed;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (--layer->leases > 0) return;
    layer->shared_lock.reset();
    layer->last_used = ++tick_;
    // The marker's mtime is the last use, for LRU order after a restart.
    ::utimensat(AT_FDCWD, (LayerDir(layer->diff_id) + "/" + kMarker).c_str(), nullptr, 0);
    EvictLocked(nullptr, &doomed);
  }
  RemoveTrees(doomed);
}

void LayerCache::EvictLocked(const CachedLayer* keep, std::vector<std::string>* doomed) {
  if (options_.max_bytes == 0 || stats_.bytes <= options_.max_bytes) return;
  std::vector<std::shared_ptr<CachedLayer>> candidates;
  for (auto& [hex, layer] : layers_)
    if (layer->ready && !layer->settling && layer->leases == 0 && layer.get() != keep) candidates.push_back(layer);
  std::sort(candidates.begin(), candidates.end(),
            [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
  for (auto& layer : candidates) {
    if (stats_.bytes <= options_.max_bytes) break;
    const std::string hex = layer->diff_id.hex();
    UniqueFd lock = TryExclusive(LockPath(hex));
    if (!lock.valid()) continue;  // leased by another process
    std::string dest = dir_ + "/.tmp/evict." + hex + "." + UniqueTempName("e");
    if (::rename(LayerDir(layer->diff_id).c_str(), dest.c_str()) != 0) {
      spdlog::warn("layer cache: evicting {}: {}", layer->diff_id.str(), std::strerror(errno));
      continue;
    }
    doomed->push_back(dest);
    stats_.bytes -= layer->bytes;
    ++stats_.evictions;
    layers_.erase(hex);
  }
  if (stats_.bytes > options_.max_bytes)
    spdlog::debug("layer cache: {} bytes cached, over the {} byte bound (layers in use)", stats_.bytes,
                  options_.max_bytes);
}

void LayerCache::RemoveTrees(const std::vector<std::string>& doomed) {
  for (const auto& d : doomed) RemoveTree(d);
}

Status LayerCache::Trim() {
  std::vector<std::string> doomed;
  {
    std::lock_guard<std::mutex> l(mu_);
    EvictLocked(nullptr, &doomed);
  }
  RemoveTrees(doomed);
  return Status::Ok();
}

bool LayerCache::Contains(const Digest& diff_id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = layers_.find(diff_id.hex());
  return it != layers_.end() && it->second->ready;
}

LayerCacheStats LayerCache::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  LayerCacheStats s = stats_;
  s.layers = 0;
  for (auto& [hex, layer] : layers_) s.layers += layer->ready ? 1 : 0;
  return s;
}

}  // namespace paddock::storage
