#include "storage/store_image_resolver.h"

#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include <nlohmann/json.hpp>

#include "sandbox/base/unique_fd.h"
#include "storage/image_import.h"
#include "storage/layer_ingest.h"

namespace paddock::storage {

namespace {

struct LeaseSet {
  std::vector<LayerLease> leases;
};

// Runs `produce` on a thread writing into a socketpair and hands the reading
// end to `consume` as a ByteSource, so a layer streams from the producer into
// the ingest path without a temporary file.
Status Pipe(const TarProducer& produce,
            const std::function<Status(const ByteSource&)>& consume) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
  UniqueFd reader(sv[0]);
  UniqueFd writer(sv[1]);
  Status produced;
  std::thread t([&] {
    produced = produce([&](const void* data, size_t n) -> Status {
      const char* p = static_cast<const char*>(data);
      while (n > 0) {
        ssize_t w = send(writer.get(), p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return ErrnoError("streaming the layer");
        p += w;
        n -= static_cast<size_t>(w);
      }
      return Status::Ok();
    });
    writer.reset();  // EOF for the reader
  });
  Status consumed = consume(SourceFromFd(reader.get()));
  reader.reset();  // a producer still writing gets EPIPE and stops
  t.join();
  // The producer's error explains a consumer's truncation, so it comes first.
  if (!produced.ok()) return produced;
  return consumed;
}

}  // namespace

struct StoreImageResolver::Cached {
  ResolvedImage image;  // with lease = the LeaseSet below, set per Resolve
  std::shared_ptr<LeaseSet> leases;
};

Result<ResolvedImage> StoreImageResolver::Resolve(const std::string& ref, const ImageAccess& access) {
  if (ref.empty()) return Error(Code::kInvalidArgument, "no image given");
  if (ref[0] == '/') {
    if (!allow_directories_)
      return Error(Code::kPermissionDenied,
                   "image '{}' is a host directory, which this daemon does not take as an image; "
                   "import it (`paddock image import-dir {} --name NAME`) and use the name, or start "
                   "paddockd with --allow-dir-images (development only)",
                   ref, ref);
    if (!access.host_dir_ok)
      return Error(Code::kPermissionDenied,
                   "image '{}' is a host directory: only a sandbox created over the daemon's unix "
                   "socket may use one (never a TCP client or a task file); import it and use its name",
                   ref);
    return ResolveHostDirectoryImage(ref);
  }
  auto digest = store_->Resolve(ref);
  // A name in the store wins; otherwise a registry reference is pulled once.
  if (!digest.ok() && digest.status().code() == Code::kNotFound && registry_.fetch && registry_.names_registry(ref)) {
    auto pulled = registry_.fetch(ref, access.local_client);
    if (!pulled.ok()) return pulled.status();
    digest = store_->Resolve(*pulled);
  }
  if (!digest.ok()) return digest.status();
  {
    std::lock_guard lock(mu_);
    auto it = cached_.find(digest->str());
    if (it != cached_.end()) {
      if (auto held = it->second.lock()) {
        ResolvedImage out = held->image;
        out.ref = ref;
        out.lease = held;  // keeps the cache entry and, through it, the layer leases
        return out;
      }
      cached_.erase(it);
    }
  }
  auto image = store_->Get(digest->str());
  if (!image.ok()) return image.status();
  ResolvedImage out;
  out.id = image->digest.str();
  out.ref = ref;
  out.env = image->config.env;
  out.workdir = image->config.cwd;
  out.entrypoint = image->config.entrypoint;
  out.cmd = image->config.cmd;
  out.user = image->config.user;
  auto leases = std::make_shared<LeaseSet>();
  for (const auto& layer : image->manifest.layers) {
    auto lease = cache_->Acquire(layer.diff_id);
    if (!lease.ok())
      return lease.status().Prefix(fmt::format("materializing layer {} of image '{}'",
                                               layer.diff_id.Short(), ref));
    out.layer_dirs.push_back(lease->root());
    leases->leases.push_back(std::move(lease).value());
  }
  auto entry = std::make_shared<Cached>();
  entry->image = out;
  entry->leases = leases;
  out.lease = entry;
  std::lock_guard lock(mu_);
  cached_[out.id] = entry;
  return out;
}

Result<SnapshotResult> StoreImageResolver::CommitLayer(const ResolvedImage& base,
                                                       const TarProducer& top,
                                                       const std::string& name) {
  std::vector<std::string> names;
  SnapshotResult out;
  if (!name.empty()) {
    PADDOCK_ASSIGN_OR_RETURN(out.name, ImageStore::NormalizeName(name));
    names.push_back(out.name);
  }
  std::string base_id = base.id;
  if (!base.from_store()) {
    // The development form has no stored layers to build on: the directory
    // becomes the snapshot's base layer (an untagged image).
    if (base.layer_dirs.size() != 1)
      return Error(Code::kInternal, "directory image {} has {} layers", base.id, base.layer_dirs.size());
    auto imported = ImportDirectory(*store_, base.layer_dirs[0], {}, {});
    if (!imported.ok()) return imported.status().Prefix("importing the base directory " + base.id);
    base_id = imported->image.str();
  }
  PADDOCK_ASSIGN_OR_RETURN(Image parent, store_->Get(base_id));
  PADDOCK_ASSIGN_OR_RETURN(auto txn, store_->Begin());
  std::vector<StoredLayer> layers;
  for (const auto& l : parent.manifest.layers) {
    auto reused = txn->ReuseLayer(l.diff_id);
    if (!reused.ok()) return reused.status().Prefix("base image " + base_id);
    layers.push_back(*reused);
  }
  Result<StoredLayer> added = Error(Code::kInternal, "snapshot layer not produced");
  PADDOCK_RETURN_IF_ERROR(Pipe(top, [&](const ByteSource& src) -> Status {
    added = txn->AddLayer(src, LayerHint{"snapshot layer", std::nullopt, std::nullopt});
    return added.status();
  }));
  layers.push_back(*added);

  nlohmann::json config = nlohmann::json::parse(parent.config_json, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object())
    return Error(Code::kDataLoss, "config of base image {} is not a JSON object", base_id);
  nlohmann::json ids = nlohmann::json::array();
  for (const auto& l : layers) ids.push_back(l.diff_id.str());
  config["rootfs"] = {{"type", "layers"}, {"diff_ids", ids}};
  if (config.contains("history") && config["history"].is_array())
    config["history"].push_back({{"created_by", "paddock sandbox snapshot"}});
  PADDOCK_ASSIGN_OR_RETURN(Digest digest, txn->AddImage(config.dump(), layers, names));
  PADDOCK_RETURN_IF_ERROR(txn->Commit());
  out.image = digest.str();
  out.layer = added->diff_id.str();
  out.layer_bytes = added->uncompressed_size;
  return out;
}

}  // namespace paddock::storage
