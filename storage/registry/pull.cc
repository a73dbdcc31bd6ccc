#include "storage/registry/pull.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "storage/image.h"
#include "storage/registry/blob_sources.h"
#include "storage/registry/layer_download.h"
#include "storage/registry/throttled_progress.h"

namespace paddock::storage::registry {

using nlohmann::json;

namespace {

constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
constexpr std::string_view kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";
constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
constexpr std::string_view kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";

// Layer media types a pull can ingest (the store's ingest detects the
// compression itself; the media type only has to say "a tar").
const std::set<std::string, std::less<>> kLayerTypes = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
};

struct Descriptor {
  std::string media_type;
  Digest digest;
  uint64_t size = 0;
};

Result<Descriptor> ParseDescriptor(const json& j, const std::string& who) {
  if (!j.is_object()) return Error(Code::kInvalidArgument, "{}: a descriptor is not an object", who);
  Descriptor d;
  if (j.contains("mediaType") && j["mediaType"].is_string()) d.media_type = j["mediaType"];
  std::string digest = j.contains("digest") && j["digest"].is_string() ? j["digest"].get<std::string>() : "";
  if (digest.rfind("sha256:", 0) != 0)
    return Error(Code::kInvalidArgument, "{}: digest '{}' is not sha256:<hex> (the only algorithm pulled)", who,
                 digest.substr(0, 80));
  auto parsed = Digest::Parse(digest);
  if (!parsed.ok()) return parsed.status().Prefix(who);
  d.digest = *parsed;
  if (!j.contains("size") || !j["size"].is_number_unsigned())
    return Error(Code::kInvalidArgument, "{}: descriptor {} has no valid size", who, d.digest.str());
  d.size = j["size"];
  return d;
}

Result<json> ParseJson(const std::string& text, const std::string& who) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error(Code::kInvalidArgument, "{} is not a JSON object", who);
  return j;
}

std::string TypeOf(const FetchedManifest& m, const json& j) {
  if (j.contains("mediaType") && j["mediaType"].is_string()) return j["mediaType"];
  if (m.media_type == kOciIndex || m.media_type == kDockerList || m.media_type == kOciManifest ||
      m.media_type == kDockerManifest)
    return m.media_type;
  // OCI allows mediaType to be absent: go by the shape.
  if (j.contains("manifests")) return std::string(kOciIndex);
  if (j.contains("layers")) return std::string(kOciManifest);
  return m.media_type;
}

// The platform's entry of an index: an exact os/architecture(/variant) match.
Result<Descriptor> PickPlatform(const json& index, const Platform& want, const std::string& who) {
  if (!index.contains("manifests") || !index["manifests"].is_array())
    return Error(Code::kInvalidArgument, "{} has no manifests list", who);
  std::vector<std::string> offered;
  for (const auto& m : index["manifests"]) {
    if (!m.is_object() || !m.contains("platform") || !m["platform"].is_object()) continue;
    const auto& p = m["platform"];
    std::string os = p.value("os", ""), arch = p.value("architecture", ""), variant = p.value("variant", "");
    offered.push_back(os + "/" + arch + (variant.empty() ? "" : "/" + variant));
    if (os == want.os && arch == want.architecture && (want.variant.empty() || variant == want.variant))
      return ParseDescriptor(m, who);
  }
  std::string list;
  for (const auto& o : offered) list += (list.empty() ? "" : ", ") + o;
  return Error(Code::kNotFound, "{} has no image for {} (it has: {}); choose one with --platform", who, want.str(),
               list.empty() ? "none with a platform" : list);
}

// Progress at most every 200 ms, and always at phase changes.
using Reporter = ThrottledProgress<PullProgress>;

std::string Mib(uint64_t b) { return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20)); }

Result<PullResult> Pull(ImageStore& store, const Reference& ref, const PullOptions& options,
                        const std::function<void(const PullProgress&)>& progress) {
  Reporter say(progress);
  RegistryClient client(ref, options.registry);
  PullResult result;
  say.Say({"manifest", fmt::format("{}: fetching the manifest from {}", ref.str(), client.base().str())});

  // 1. Manifest, through at most one index level (an index of indexes is not a
  //    thing registries serve; refusing it bounds the work).
  PADDOCK_ASSIGN_OR_RETURN(FetchedManifest fetched, client.GetManifest(ref.ManifestRef()));
  std::string who = fmt::format("{}: manifest {}", ref.str(), fetched.digest.str());
  PADDOCK_ASSIGN_OR_RETURN(json doc, ParseJson(fetched.bytes, who));
  std::string type = TypeOf(fetched, doc);
  if (type == kOciIndex || type == kDockerList) {
    PADDOCK_ASSIGN_OR_RETURN(Descriptor d, PickPlatform(doc, options.platform, who));
    PADDOCK_ASSIGN_OR_RETURN(fetched, client.GetManifest(d.digest.str()));
    who = fmt::format("{}: manifest {} ({})", ref.str(), fetched.digest.str(), options.platform.str());
    PADDOCK_ASSIGN_OR_RETURN(doc, ParseJson(fetched.bytes, who));
    type = TypeOf(fetched, doc);
    if (type == kOciIndex || type == kDockerList)
      return Error(Code::kInvalidArgument, "{} is an index inside an index, which is not pulled", who);
  }
  if (doc.value("schemaVersion", 0) == 1 || type.find("distribution.manifest.v1") != std::string::npos)
    return Error(Code::kUnimplemented, "{} is a Docker schema 1 manifest, which is not supported; push the image "
                 "again with a current tool (schema 2 or OCI)", who);
  if (type != kOciManifest && type != kDockerManifest)
    return Error(Code::kInvalidArgument, "{} has media type '{}', not an image manifest", who, type.substr(0, 100));
  result.manifest_digest = fetched.digest;
  if (!doc.contains("config") || !doc.contains("layers") || !doc["layers"].is_array())
    return Error(Code::kInvalidArgument, "{} lacks config or layers", who);

  // 2. Config: small, fetched whole and verified; it names the diff_ids.
  PADDOCK_ASSIGN_OR_RETURN(Descriptor cfg_desc, ParseDescriptor(doc["config"], who));
  PADDOCK_ASSIGN_OR_RETURN(std::string config_json,
                           client.GetSmallBlob(cfg_desc.digest, cfg_desc.size, store.options().max_json_bytes));
  auto diff_ids_r = ParseDiffIds(config_json);
  if (!diff_ids_r.ok()) return diff_ids_r.status().Prefix(fmt::format("{}: config {}", ref.str(), cfg_desc.digest.str()));
  std::vector<Digest> diff_ids = *diff_ids_r;
  std::vector<Descriptor> layers;
  for (const auto& l : doc["layers"]) {
    PADDOCK_ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor(l, who));
    if (!kLayerTypes.count(d.media_type))
      return Error(Code::kUnimplemented, "{}: layer {} has media type '{}', which is not pulled (tar, tar+gzip or "
                   "tar+zstd layers are)", who, d.digest.str(), d.media_type.substr(0, 100));
    if (l.contains("urls"))
      return Error(Code::kUnimplemented, "{}: layer {} is a foreign layer (urls), which is not pulled", who,
                   d.digest.str());
    layers.push_back(d);
  }
  if (layers.size() != diff_ids.size())
    return Error(Code::kInvalidArgument, "{} has {} layers but its config lists {} diff_ids", who, layers.size(),
                 diff_ids.size());

  // 3. Layers: those the store has are reused, the others streamed in.
  uint64_t to_fetch = 0;
  std::set<std::string> missing;
  for (size_t i = 0; i < layers.size(); ++i)
    if (!store.FindLayer(diff_ids[i]).ok() && missing.insert(diff_ids[i].hex()).second) to_fetch += layers[i].size;
  result.layers_total = layers.size();
  result.layers_new = missing.size();
  say.Say({"manifest",
           fmt::format("{}: {} layers, {} to fetch ({})", ref.str(), layers.size(), missing.size(), Mib(to_fetch)),
           0, to_fetch});

  const uint64_t committed_before = store.blobs().stats().bytes_committed;
  PADDOCK_ASSIGN_OR_RETURN(auto tx, store.Begin());
  // Which layer each position of the stack is: one already stored (reused
  // now), or the first occurrence of a new diff_id (fetched below; a repeat
  // of it later in the stack takes the same stored layer).
  std::map<std::string, size_t> first_of;  // diff_id hex → index of its first occurrence
  std::vector<std::optional<StoredLayer>> at(layers.size());
  // Layers unpacked into the cache as they stream; dropped (trees removed)
  // unless the commit below succeeds.
  std::vector<std::unique_ptr<StreamedLayer>> streams(layers.size());
  std::vector<UnpackStats> unpacked(layers.size());
  std::vector<size_t> jobs;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!first_of.emplace(diff_ids[i].hex(), i).second) continue;
    if (!missing.count(diff_ids[i].hex())) {
      PADDOCK_ASSIGN_OR_RETURN(StoredLayer l, tx->ReuseLayer(diff_ids[i]));
      at[i] = l;
    } else {
      jobs.push_back(i);
    }
  }

  // New layers are fetched and ingested a few at a time into the one
  // transaction: a pull of many layers is bound by neither one connection's
  // latency nor one core's decompression.
  std::mutex progress_mu;
  std::atomic<uint64_t> fetched_bytes{0};
  std::atomic<size_t> next_job{0}, layers_done{0};
  std::atomic<bool> abort{false};
  Status first_error;  // progress_mu
  auto fetch_one = [&](size_t i) -> Status {
    const Descriptor& d = layers[i];
    const std::string blob_who = fmt::format("{}: layer {}", ref.str(), d.digest.str());
    LayerDownload download(client, d.digest, d.size, blob_who, [&](uint64_t n) {
      uint64_t all = fetched_bytes += n;
      std::lock_guard lock(progress_mu);
      say.Say({"layer",
               fmt::format("{}: {} of {} layers done, {} / {}", ref.str(), layers_done.load(), jobs.size(),
                           Mib(all), Mib(to_fetch)),
               all, to_fetch},
              false);
    }, &abort);
    ByteSource source = [&](void* buf, size_t n) { return download.Read(buf, n); };
    LayerHint hint{"layer " + d.digest.str(), d.digest, diff_ids[i]};
    AddLayerOptions add;
    add.keep_compressed_source = options.keep_registry_blobs;
    if (options.layer_cache) {
      auto stream = options.layer_cache->BeginStream(diff_ids[i]);
      if (!stream.ok())  // not fatal: the layer is stored, and unpacked at first use
        spdlog::warn("{}: not unpacking while downloading: {}", blob_who, stream.status().message());
      else if (*stream) {
        streams[i] = std::move(*stream);
        add.unpack_into = streams[i]->root();
        add.unpack_writeback = options.layer_cache->options().sync;
        add.unpacked = &unpacked[i];
      }
    }
    auto stored = tx->AddLayer(source, hint, add);
    if (!stored.ok()) {
      streams[i].reset();  // the partial tree goes now, not at the end of the pull
      return download.error().ok() ? stored.status().Prefix(ref.str()) : download.error();
    }
    // Not synced here: after the commit the tree is leasable at once and made
    // durable in the background (layer_cache.h, "Durable later, usable at once").
    at[i] = *stored;
    layers_done++;
    return Status::Ok();
  };
  auto worker = [&] {
    for (size_t j; !abort.load() && (j = next_job++) < jobs.size();) {
      Status st = fetch_one(jobs[j]);
      if (st.ok()) continue;
      // The first failure stops the others; theirs (CANCELLED) are not reported.
      if (!abort.exchange(true)) {
        std::lock_guard lock(progress_mu);
        first_error = st;
      }
    }
  };
  const size_t parallel = std::clamp<size_t>(options.parallel_layers, 1, 16);
  std::vector<std::thread> threads;
  for (size_t t = 1; t < std::min(parallel, jobs.size()); ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (!first_error.ok()) return first_error;
  std::vector<StoredLayer> stack;
  for (size_t i = 0; i < layers.size(); ++i) stack.push_back(*at[first_of[diff_ids[i].hex()]]);
  result.bytes_fetched = fetched_bytes.load();
  const uint64_t fetched_total = result.bytes_fetched;

  // 4. One image, committed with its names; until now nothing is visible.
  std::vector<std::string> names = options.names;
  if (names.empty() && !ref.DefaultName().empty()) names.push_back(ref.DefaultName());
  say.Say({"committing", fmt::format("{}: committing", ref.str()), fetched_total, to_fetch});
  auto image = tx->AddImage(config_json, stack, names);
  if (!image.ok()) return image.status().Prefix(ref.str());
  // A re-pull of an image the store has under every asked-for name commits
  // nothing: the commit's stack checks and fsyncs would be most of its time.
  bool present = store.Resolve(image->str()).ok();
  for (const auto& n : names) {
    auto d = store.Resolve(n);
    present = present && d.ok() && *d == *image;
  }
  if (!present)
    if (Status st = tx->Commit(); !st.ok()) return st.Prefix(ref.str());
  // The layers are in the store now: their streamed trees join the cache.
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!streams[i]) continue;
    if (Status st = streams[i]->Commit(*at[i], unpacked[i]); !st.ok())
      spdlog::warn("{}: layer {} was stored but not kept in the layer cache (unpacked at first use): {}", ref.str(),
                   diff_ids[i].str(), st.message());
    else
      result.layers_unpacked++;
  }
  // Where these blobs live: a later push of an image sharing them to another
  // repository of this registry mounts them from here instead of uploading
  // (blob_sources.h). Recorded for every blob of the manifest, fetched or
  // already stored: the registry holds them all under this repository.
  RecordBlobSource(store, cfg_desc.digest, ref.registry, ref.repository);
  for (const auto& l : layers) RecordBlobSource(store, l.digest, ref.registry, ref.repository);
  result.image = *image;
  result.bytes_committed = store.blobs().stats().bytes_committed - committed_before;
  auto img = store.Get(result.image.str());
  if (img.ok()) result.names = img->names;
  say.Say({"committed",
           fmt::format("{}: {} layers, {} fetched ({}), {} written", ref.str(), result.layers_total, result.layers_new,
                       Mib(result.bytes_fetched), Mib(result.bytes_committed)),
           fetched_total, to_fetch});
  return result;
}

}  // namespace

Result<Platform> ParsePlatform(std::string_view text) {
  Platform p;
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t slash = text.find('/', start);
    parts.emplace_back(text.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  bool ok = parts.size() == 2 || parts.size() == 3;
  for (const auto& s : parts) ok = ok && !s.empty() && s.size() < 64;
  if (!ok) return Error(Code::kInvalidArgument, "platform '{}' is not os/architecture[/variant], e.g. linux/amd64", text);
  p.os = parts[0];
  p.architecture = parts[1];
  if (parts.size() == 3) p.variant = parts[2];
  return p;
}

Result<PullResult> PullImage(ImageStore& store, const Reference& ref, const PullOptions& options,
                             const std::function<void(const PullProgress&)>& progress) {
  auto r = Pull(store, ref, options, progress);
  // Out of space while staging: say which pull (the inner message names the file).
  if (!r.ok() && r.status().code() == Code::kResourceExhausted &&
      r.status().message().find(ref.str()) == std::string::npos)
    return r.status().Prefix("pulling " + ref.str());
  return r;
}

}  // namespace paddock::storage::registry
