#include "storage/image_import.h"


#include <nlohmann/json.hpp>

#include "storage/import_source.h"

namespace paddock::storage {

using nlohmann::json;

namespace {

constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
constexpr std::string_view kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";

struct ArchiveImage {
  std::string config_json;
  std::vector<std::string> layer_paths;  // canonical source paths
  std::vector<LayerHint> hints;
  std::vector<std::string> names;
};

Result<json> ParseJson(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return Error(Code::kInvalidArgument, "{} is not valid JSON", what);
  return j;
}

std::string BlobPathOf(const Digest& d) { return "blobs/sha256/" + d.hex(); }

// Reads blobs/sha256/<hex> and checks the content against the name.
Result<std::string> ReadBlob(ImportSource& src, const std::string& digest_text, uint64_t max, const std::string& who) {
  auto d = Digest::Parse(digest_text);
  if (!d.ok()) return d.status().Prefix(who);
  std::string path = BlobPathOf(*d);
  if (!src.Exists(path))
    return Error(Code::kInvalidArgument, "{} names blob {}, which is not in the archive", who, d->str());
  PADDOCK_ASSIGN_OR_RETURN(std::string data, src.ReadSmall(path, max));
  Digest got = Sha256::Of(data);
  if (!(got == *d))
    return Error(Code::kInvalidArgument, "blob {} does not match its name: its content hashes to {}", path, got.str());
  return data;
}

Status CollectOciManifests(ImportSource& src, const json& index, uint64_t max, const std::string& who, int depth,
                           std::vector<std::pair<json, json>>* out) {
  if (depth > 4) return Error(Code::kInvalidArgument, "{}: image indexes nest too deep", who);
  if (!index.contains("manifests") || !index["manifests"].is_array())
    return Error(Code::kInvalidArgument, "{} has no manifests list", who);
  std::vector<json> chosen;
  bool any_platform = false;
  for (const auto& desc : index["manifests"]) {
    if (desc.contains("platform")) any_platform = true;
  }
  for (const auto& desc : index["manifests"]) {
    if (any_platform && depth > 0 && desc.contains("platform")) {
      const auto& p = desc["platform"];
      if (p.value("os", "") != "linux" || p.value("architecture", "") != "amd64") continue;
    }
    chosen.push_back(desc);
    if (any_platform && depth > 0) break;
  }
  if (chosen.empty() && !index["manifests"].empty()) chosen.push_back(index["manifests"][0]);
  for (const auto& desc : chosen) {
    std::string mt = desc.value("mediaType", "");
    std::string dg = desc.value("digest", "");
    PADDOCK_ASSIGN_OR_RETURN(std::string text, ReadBlob(src, dg, max, who));
    PADDOCK_ASSIGN_OR_RETURN(json m, ParseJson(text, "manifest " + dg));
    if (mt == kOciIndex || mt == kDockerList || m.value("mediaType", "") == kOciIndex) {
      PADDOCK_RETURN_IF_ERROR(CollectOciManifests(src, m, max, "index " + dg, depth + 1, out));
    } else {
      out->emplace_back(desc, m);
    }
  }
  return Status::Ok();
}

Result<std::vector<ArchiveImage>> ReadOciLayout(ImportSource& src, uint64_t max) {
  PADDOCK_ASSIGN_OR_RETURN(std::string text, src.ReadSmall("index.json", max));
  PADDOCK_ASSIGN_OR_RETURN(json index, ParseJson(text, "index.json"));
  std::vector<std::pair<json, json>> manifests;
  PADDOCK_RETURN_IF_ERROR(CollectOciManifests(src, index, max, "index.json", 0, &manifests));
  std::vector<ArchiveImage> out;
  for (auto& [desc, m] : manifests) {
    std::string who = "manifest " + desc.value("digest", "");
    if (!m.contains("config") || !m.contains("layers") || !m["layers"].is_array())
      return Error(Code::kInvalidArgument, "{} lacks config or layers", who);
    ArchiveImage img;
    PADDOCK_ASSIGN_OR_RETURN(img.config_json, ReadBlob(src, m["config"].value("digest", ""), max, who));
    PADDOCK_ASSIGN_OR_RETURN(auto diff_ids, ParseDiffIds(img.config_json));
    if (diff_ids.size() != m["layers"].size())
      return Error(Code::kInvalidArgument, "{} has {} layers but its config lists {} diff_ids", who, m["layers"].size(),
                   diff_ids.size());
    for (size_t i = 0; i < diff_ids.size(); ++i) {
      const json& l = m["layers"][i];
      auto d = Digest::Parse(l.value("digest", ""));
      if (!d.ok()) return d.status().Prefix(who);
      std::string path = BlobPathOf(*d);
      if (!src.Exists(path))
        return Error(Code::kInvalidArgument, "{} names layer {}, which is not in the archive", who, d->str());
      img.layer_paths.push_back(src.Canonical(path));
      img.hints.push_back(LayerHint{"layer " + path, *d, diff_ids[i]});
    }
    if (desc.contains("annotations")) {
      const json& a = desc["annotations"];
      std::string n = a.value("io.containerd.image.name", a.value("org.opencontainers.image.ref.name", ""));
      if (!n.empty() && ImageStore::NormalizeName(n).ok()) img.names.push_back(n);
    }
    out.push_back(std::move(img));
  }
  return out;
}

Result<std::vector<ArchiveImage>> ReadDockerSave(ImportSource& src, uint64_t max) {
  PADDOCK_ASSIGN_OR_RETURN(std::string text, src.ReadSmall("manifest.json", max));
  PADDOCK_ASSIGN_OR_RETURN(json list, ParseJson(text, "manifest.json"));
  if (!list.is_array()) return Error(Code::kInvalidArgument, "manifest.json is not a list of images");
  std::vector<ArchiveImage> out;
  for (const auto& m : list) {
    std::string cfg = m.value("Config", "");
    std::string who = "manifest.json image " + cfg;
    if (cfg.empty() || !src.Exists(cfg))
      return Error(Code::kInvalidArgument, "{}: config '{}' is not in the archive", who, cfg);
    ArchiveImage img;
    PADDOCK_ASSIGN_OR_RETURN(img.config_json, src.ReadSmall(cfg, max));
    // "<hex>.json" (classic) and "blobs/sha256/<hex>" (docker 25+) name the config by its digest.
    std::string base = cfg.substr(cfg.rfind('/') == std::string::npos ? 0 : cfg.rfind('/') + 1);
    if (base.size() > 5 && base.substr(base.size() - 5) == ".json") base.resize(base.size() - 5);
    if (IsHex64(base) && Sha256::Of(img.config_json).hex() != base)
      return Error(Code::kInvalidArgument, "blob {} does not match its name: its content hashes to {}", cfg,
                   Sha256::Of(img.config_json).str());
    PADDOCK_ASSIGN_OR_RETURN(auto diff_ids, ParseDiffIds(img.config_json));
    if (!m.contains("Layers") || !m["Layers"].is_array() || m["Layers"].size() != diff_ids.size())
      return Error(Code::kInvalidArgument, "{}: Layers does not match the config's {} diff_ids", who, diff_ids.size());
    for (size_t i = 0; i < diff_ids.size(); ++i) {
      std::string path = m["Layers"][i].is_string() ? m["Layers"][i].get<std::string>() : "";
      if (path.empty() || !src.Exists(path))
        return Error(Code::kInvalidArgument, "{} names layer '{}', which is not in the archive", who, path);
      LayerHint hint{"layer " + path, std::nullopt, diff_ids[i]};
      if (path.rfind("blobs/sha256/", 0) == 0) {
        auto d = Digest::Parse(path.substr(13));
        if (d.ok()) hint.source_digest = *d;
      }
      img.layer_paths.push_back(src.Canonical(path));
      img.hints.push_back(hint);
    }
    if (m.contains("RepoTags") && m["RepoTags"].is_array())
      for (const auto& t : m["RepoTags"])
        if (t.is_string() && ImageStore::NormalizeName(t.get<std::string>()).ok()) img.names.push_back(t);
    out.push_back(std::move(img));
  }
  return out;
}

}  // namespace

namespace {
Result<ImportResult> ImportImageImpl(ImageStore& store, const std::string& path, const ImportOptions& options);

}  // namespace

Result<ImportResult> ImportImage(ImageStore& store, const std::string& path, const ImportOptions& options) {
  auto r = ImportImageImpl(store, path, options);
  // Out of space (or memory, or descriptors): say which import; the inner message
  // names the layer and the file being written.
  if (!r.ok() && r.status().code() == Code::kResourceExhausted)
    return r.status().Prefix(fmt::format("importing {}", path));
  return r;
}

namespace {
Result<ImportResult> ImportImageImpl(ImageStore& store, const std::string& path, const ImportOptions& options) {
  PADDOCK_ASSIGN_OR_RETURN(auto src, ImportSource::Open(path));
  const uint64_t max = store.options().max_json_bytes;
  std::vector<ArchiveImage> images;
  if (src->Exists("index.json")) {
    PADDOCK_ASSIGN_OR_RETURN(images, ReadOciLayout(*src, max));
  } else if (src->Exists("manifest.json")) {
    PADDOCK_ASSIGN_OR_RETURN(images, ReadDockerSave(*src, max));
  } else {
    return Error(Code::kInvalidArgument,
                 "{} is neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json); "
                 "import a plain directory with import-dir",
                 path);
  }
  if (images.empty()) return Error(Code::kInvalidArgument, "{} holds no images", path);
  if (!options.names.empty()) {
    if (images.size() != 1)
      return Error(Code::kInvalidArgument, "{} holds {} images; a name can only be given to one", path, images.size());
    images[0].names = options.names;
  }

  const uint64_t committed_before = store.blobs().stats().bytes_committed;
  PADDOCK_ASSIGN_OR_RETURN(auto tx, store.Begin());
  std::map<std::string, LayerHint> hints;
  for (const auto& img : images)
    for (size_t i = 0; i < img.layer_paths.size(); ++i) hints.emplace(img.layer_paths[i], img.hints[i]);
  std::set<std::string> wanted;
  for (const auto& [p, h] : hints) wanted.insert(p);
  std::map<std::string, StoredLayer> stored;
  ImportResult result;
  PADDOCK_RETURN_IF_ERROR(src->ForEach(wanted, [&](const std::string& p, const ByteSource& bytes) -> Status {
    bool known = store.FindLayer(*hints[p].diff_id).ok();
    PADDOCK_ASSIGN_OR_RETURN(stored[p], tx->AddLayer(bytes, hints[p]));
    result.layers_total++;
    if (!known) result.layers_new++;
    return Status::Ok();
  }));
  for (auto& img : images) {
    std::vector<StoredLayer> layers;
    for (const auto& p : img.layer_paths) layers.push_back(stored.at(p));
    PADDOCK_ASSIGN_OR_RETURN(Digest d, tx->AddImage(img.config_json, layers, img.names));
    result.images.push_back(d);
  }
  PADDOCK_RETURN_IF_ERROR(tx->Commit());  // reserves room for its files first
  result.bytes_committed = store.blobs().stats().bytes_committed - committed_before;
  return result;
}
}  // namespace

}  // namespace paddock::storage
