#include "storage/image_store.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "storage/entry_policy.h"
#include "storage/fs_util.h"

namespace paddock::storage {

using nlohmann::json;

namespace {
Result<std::vector<std::string>> ListNames(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT) return out;
    return ErrnoError(fmt::format("listing {}", dir));
  }
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != ".." && n.rfind(".tmp-", 0) != 0) out.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string EncodeLayerRecord(const StoredLayer& l) {
  return json{{"diff_id", l.diff_id.str()}, {"blob", l.blob.str()}, {"compression", CompressionName(l.compression)},
              {"index", l.index.str()},     {"size", l.size},        {"uncompressed_size", l.uncompressed_size}}
      .dump();
}

Result<StoredLayer> DecodeLayerRecord(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return Error(Code::kDataLoss, "layer record is not JSON");
  StoredLayer l;
  try {
    PADDOCK_ASSIGN_OR_RETURN(l.diff_id, Digest::Parse(j.at("diff_id").get<std::string>()));
    PADDOCK_ASSIGN_OR_RETURN(l.blob, Digest::Parse(j.at("blob").get<std::string>()));
    PADDOCK_ASSIGN_OR_RETURN(l.index, Digest::Parse(j.at("index").get<std::string>()));
    PADDOCK_ASSIGN_OR_RETURN(l.compression, ParseCompression(j.at("compression").get<std::string>()));
    l.size = j.at("size").get<uint64_t>();
    l.uncompressed_size = j.at("uncompressed_size").get<uint64_t>();
  } catch (const std::exception& e) {
    return Error(Code::kDataLoss, "malformed layer record: {}", e.what());
  }
  return l;
}

std::string ManifestHolder(const Digest& m) { return "manifest:" + m.hex(); }
constexpr std::string_view kImageHolder = "image";
// A commit's small file, rounded up generously, and slack on top: what
// ImageTransaction::Commit reserves before writing any.
constexpr uint64_t kCommitFileBytes = 8192;
constexpr uint64_t kCommitSlackBytes = 256 << 10;

bool Under(const std::string& path, const std::string& dir) {
  if (dir == ".") return path != ".";
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}
}  // namespace

// ---- ImageTransaction ----

struct ImageTransaction::PendingLayer {
  StoredLayer layer;
  std::optional<StagedBlob> blob, index;  // set when this transaction stores it
  std::vector<LayerEntry> entries;
  bool entries_known = false;
};

struct ImageTransaction::PendingImage {
  std::string config_json;
  Manifest manifest;
  Digest digest;
  std::vector<std::string> names;
};

ImageTransaction::ImageTransaction(ImageStore* store, std::unique_ptr<StagingArea> staging)
    : store_(store), staging_(std::move(staging)) {}
ImageTransaction::~ImageTransaction() = default;

Result<StoredLayer> ImageTransaction::AddLayer(const ByteSource& source, const LayerHint& hint,
                                               const AddLayerOptions& options) {
  const ImageStoreOptions& opt = store_->options_;
  IngestOptions io;
  io.compression = opt.compression;
  io.level = opt.compression == Compression::kZstd ? opt.zstd_level : opt.lz4_level;
  io.limits = opt.limits;
  io.name = hint.name.empty() ? "layer" : hint.name;
  io.keep_compressed_source = options.keep_compressed_source;
  io.unpack_into = options.unpack_into;
  io.unpack_writeback = options.unpack_writeback;

  std::optional<StoredLayer> existing;
  if (hint.diff_id) {
    {
      std::lock_guard lock(layers_mu_);
      for (auto& p : layers_)
        if (p->layer.diff_id == *hint.diff_id) existing = p->layer;
    }
    if (!existing) {
      auto found = store_->FindLayer(*hint.diff_id);
      if (found.ok() && store_->blobs_->Has(found->blob) && store_->blobs_->Has(found->index)) existing = *found;
    }
  }
  io.store = !existing;
  PADDOCK_ASSIGN_OR_RETURN(IngestedLayer in, IngestLayer(source, staging_.get(), io));
  if (hint.source_digest && !(in.source_digest == *hint.source_digest))
    return Error(Code::kInvalidArgument, "{}: content hashes to {}, not the {} it is named by", io.name,
                 in.source_digest.str(), hint.source_digest->str());
  if (hint.diff_id && !(in.diff_id == *hint.diff_id))
    return Error(Code::kInvalidArgument, "{}: uncompressed content hashes to {}, but the image config says {}",
                 io.name, in.diff_id.str(), hint.diff_id->str());
  if (options.unpacked && in.unpacked) *options.unpacked = *in.unpacked;

  auto pending = std::make_unique<PendingLayer>();
  pending->entries = std::move(in.entries);
  pending->entries_known = true;
  std::unique_lock lock(layers_mu_);
  if (!existing) {
    // Unknown beforehand (directories, snapshots): dedup on the computed diff_id.
    for (auto& p : layers_)
      if (p->layer.diff_id == in.diff_id) existing = p->layer;
    if (!existing) {
      auto found = store_->FindLayer(in.diff_id);
      if (found.ok() && store_->blobs_->Has(found->blob) && store_->blobs_->Has(found->index)) existing = *found;
    }
  }
  if (existing) {
    pending->layer = *existing;
  } else {
    pending->layer = StoredLayer{in.diff_id, in.blob->digest, in.compression, in.index->digest, in.blob->size,
                                 in.uncompressed_size};
    pending->blob = in.blob;
    pending->index = in.index;
  }
  StoredLayer out = pending->layer;
  layers_.push_back(std::move(pending));
  return out;
}

Result<StoredLayer> ImageTransaction::ReuseLayer(const Digest& diff_id) {
  PADDOCK_ASSIGN_OR_RETURN(StoredLayer l, store_->FindLayer(diff_id));
  auto pending = std::make_unique<PendingLayer>();
  pending->layer = l;
  std::lock_guard lock(layers_mu_);
  layers_.push_back(std::move(pending));
  return l;
}

Result<StoredLayer> ImageTransaction::AddStoredLayer(const ByteSource& source, const StoredLayer& expected,
                                                     const std::string& name) {
  const ImageStoreOptions& opt = store_->options_;
  IngestOptions io;
  io.limits = opt.limits;
  io.name = name.empty() ? "layer" : name;
  io.keep_compressed_source = true;
  io.keep_lz4_source = true;
  PADDOCK_ASSIGN_OR_RETURN(IngestedLayer in, IngestLayer(source, staging_.get(), io));
  auto differs = [&](const char* what, const std::string& got, const std::string& want) {
    return Error(Code::kInvalidArgument, "{}: its {} is {}, but the image's manifest says {}", io.name, what, got,
                 want);
  };
  if (!(in.source_digest == expected.blob)) return differs("blob digest", in.source_digest.str(), expected.blob.str());
  if (in.source_size != expected.size)
    return differs("size", std::to_string(in.source_size), std::to_string(expected.size));
  if (!(in.diff_id == expected.diff_id)) return differs("diff_id", in.diff_id.str(), expected.diff_id.str());
  if (in.uncompressed_size != expected.uncompressed_size)
    return differs("uncompressed size", std::to_string(in.uncompressed_size), std::to_string(expected.uncompressed_size));
  if (in.compression != expected.compression)
    return differs("compression", CompressionName(in.compression), CompressionName(expected.compression));
  if (!in.blob || !in.index) return Error(Code::kInternal, "{}: nothing was staged", io.name);
  if (!(in.index->digest == expected.index))
    return differs("entry index", in.index->digest.str(),
                   expected.index.str() + " (is the other store's paddockd another version?)");
  auto pending = std::make_unique<PendingLayer>();
  pending->layer = expected;
  pending->blob = in.blob;
  pending->index = in.index;
  pending->entries = std::move(in.entries);
  pending->entries_known = true;
  std::lock_guard lock(layers_mu_);
  layers_.push_back(std::move(pending));
  return expected;
}

Result<StoredLayer> ImageTransaction::ReuseStoredLayer(const StoredLayer& layer) {
  if (!store_->blobs_->Has(layer.blob) || !store_->blobs_->Has(layer.index) || !store_->FindLayer(layer.diff_id).ok())
    return Error(Code::kNotFound, "layer {} is not stored as blob {}", layer.diff_id.str(), layer.blob.str());
  auto pending = std::make_unique<PendingLayer>();
  pending->layer = layer;
  std::lock_guard lock(layers_mu_);
  layers_.push_back(std::move(pending));
  return layer;
}

Result<Digest> ImageTransaction::AddImage(std::string config_json, const std::vector<StoredLayer>& layers,
                                          std::vector<std::string> names) {
  auto diff_ids = ParseDiffIds(config_json);
  if (diff_ids.ok()) {
    bool same = diff_ids->size() == layers.size();
    for (size_t i = 0; same && i < layers.size(); ++i) same = (*diff_ids)[i] == layers[i].diff_id;
    if (!same)
      return Error(Code::kInvalidArgument, "image config lists {} diff_ids that do not match its {} layers",
                   diff_ids->size(), layers.size());
  }
  PADDOCK_RETURN_IF_ERROR(ParseImageConfig(config_json).status());
  auto img = std::make_unique<PendingImage>();
  for (auto& n : names) {
    PADDOCK_ASSIGN_OR_RETURN(std::string norm, ImageStore::NormalizeName(n));
    img->names.push_back(norm);
  }
  img->manifest.config = Sha256::Of(config_json);
  img->manifest.layers = layers;
  img->config_json = std::move(config_json);
  img->digest = Sha256::Of(img->manifest.Encode());
  Digest d = img->digest;
  images_.push_back(std::move(img));
  return d;
}

Status ImageTransaction::Commit() {
  if (committed_) return Error(Code::kFailedPrecondition, "transaction already committed");
  BlobStore& blobs = *store_->blobs_;
  // 1. Layer stacks: no entry may be written through a symlink of a lower layer.
  std::map<std::string, const PendingLayer*> by_diff;
  for (auto& p : layers_) {
    if (!p->entries_known) {
      PADDOCK_ASSIGN_OR_RETURN(p->entries, store_->LayerEntries(p->layer));
      p->entries_known = true;
    }
    by_diff.emplace(p->layer.diff_id.hex(), p.get());
  }
  for (auto& img : images_) {
    std::set<std::string> symlinks;
    for (size_t i = 0; i < img->manifest.layers.size(); ++i) {
      auto it = by_diff.find(img->manifest.layers[i].diff_id.hex());
      if (it == by_diff.end())
        return Error(Code::kInternal, "layer {} was not added to this transaction",
                     img->manifest.layers[i].diff_id.str());
      std::string where = fmt::format(" of a lower layer (layer {})", i + 1);
      for (const LayerEntry& e : it->second->entries)
        if (e.type != EntryType::kWhiteout && e.type != EntryType::kOpaque)
          PADDOCK_RETURN_IF_ERROR(CheckNotThroughSymlink(e.path, symlinks, where));
      for (const LayerEntry& e : it->second->entries) {
        if (e.type == EntryType::kWhiteout || e.type == EntryType::kOpaque) {
          if (e.type == EntryType::kWhiteout) symlinks.erase(e.path);
          for (auto s = symlinks.begin(); s != symlinks.end();) s = Under(*s, e.path) ? symlinks.erase(s) : std::next(s);
        } else if (e.type == EntryType::kSymlink) {
          symlinks.insert(e.path);
        } else {
          symlinks.erase(e.path);
        }
      }
    }
  }
  // Room for the small files the commit writes (layer records, config, manifest,
  // image record, names, each through a temp file; reference files are empty),
  // checked and held against other commits in one step: running out half-way
  // would leave some of them visible.
  uint64_t files = 0, refs = 0;
  for (auto& p : layers_) files += p->blob ? 2 : 0;
  for (auto& img : images_) {
    files += 6 + 2 * img->names.size();
    refs += 2 + 2 * img->manifest.layers.size();
  }
  PADDOCK_ASSIGN_OR_RETURN(SpaceReservation room,
                           blobs.Reserve(files * kCommitFileBytes + kCommitSlackBytes, 2 * files + refs + 16,
                                         "commit"));
  // 2. Blobs, then the layer records that name them.
  for (auto& p : layers_) {
    if (p->blob) {
      PADDOCK_RETURN_IF_ERROR(blobs.Commit(*p->blob));
      PADDOCK_RETURN_IF_ERROR(blobs.Commit(*p->index));
      PADDOCK_RETURN_IF_ERROR(AtomicWriteFile(store_->LayerRecordPath(p->layer.diff_id), EncodeLayerRecord(p->layer)));
    } else {
      for (const Digest& d : {p->layer.blob, p->layer.index})
        ::utimensat(AT_FDCWD, blobs.BlobPath(d).c_str(), nullptr, 0);  // restart gc grace
    }
  }
  // 3. Images: config and manifest blobs, references, the image record, names.
  for (auto& img : images_) {
    PADDOCK_ASSIGN_OR_RETURN(Digest cfg, blobs.Put(img->config_json));
    PADDOCK_ASSIGN_OR_RETURN(Digest man, blobs.Put(img->manifest.Encode()));
    if (!(man == img->digest) || !(cfg == img->manifest.config))
      return Error(Code::kInternal, "image digest changed while committing");
    std::string holder = ManifestHolder(man);
    PADDOCK_RETURN_IF_ERROR(blobs.AddRef(cfg, holder));
    for (const StoredLayer& l : img->manifest.layers) {
      PADDOCK_RETURN_IF_ERROR(blobs.AddRef(l.blob, holder));
      PADDOCK_RETURN_IF_ERROR(blobs.AddRef(l.index, holder));
    }
    PADDOCK_RETURN_IF_ERROR(blobs.AddRef(man, kImageHolder));
    PADDOCK_RETURN_IF_ERROR(AtomicWriteFile(store_->ImagePath(man), man.str() + "\n"));
    for (const std::string& n : img->names) PADDOCK_RETURN_IF_ERROR(store_->Tag(man, n));
  }
  committed_ = true;
  return Status::Ok();
}

// ---- ImageStore ----

Result<std::unique_ptr<ImageStore>> ImageStore::Open(const std::string& root, ImageStoreOptions options) {
  PADDOCK_ASSIGN_OR_RETURN(auto blobs, BlobStore::Open(root));
  for (const char* sub : {"layers/sha256", "images", "refs/names"})
    PADDOCK_RETURN_IF_ERROR(MakeDirs(root + "/" + sub).Prefix("opening image store"));
  return std::unique_ptr<ImageStore>(new ImageStore(root, options, std::move(blobs)));
}

std::string ImageStore::LayerRecordPath(const Digest& d) const { return root_ + "/layers/sha256/" + d.hex(); }
std::string ImageStore::NamePath(const std::string& n) const { return root_ + "/refs/names/" + EscapeComponent(n); }
std::string ImageStore::ImagePath(const Digest& d) const { return root_ + "/images/" + d.hex(); }

Result<std::unique_ptr<ImageTransaction>> ImageStore::Begin() {
  PADDOCK_ASSIGN_OR_RETURN(auto staging, blobs_->NewStaging());
  return std::unique_ptr<ImageTransaction>(new ImageTransaction(this, std::move(staging)));
}

Result<std::string> ImageStore::NormalizeName(std::string_view name) {
  if (name.empty() || name.size() > 255) return Error(Code::kInvalidArgument, "image name '{}' is empty or too long", name);
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '/' || c == ':'))
      return Error(Code::kInvalidArgument, "image name '{}' has a character outside [A-Za-z0-9._/:-]", name);
  size_t slash = name.rfind('/');
  size_t colon = name.rfind(':');
  std::string out(name);
  if (colon == std::string_view::npos || (slash != std::string_view::npos && colon < slash)) out += ":latest";
  if (out.front() == ':' || out.back() == ':')
    return Error(Code::kInvalidArgument, "image name '{}' has an empty name or tag", name);
  return out;
}

Result<std::vector<std::pair<std::string, Digest>>> ImageStore::Names() const {
  PADDOCK_ASSIGN_OR_RETURN(auto files, ListNames(root_ + "/refs/names"));
  std::vector<std::pair<std::string, Digest>> out;
  for (auto& f : files) {
    auto text = ReadFileLimited(root_ + "/refs/names/" + f, 4096);
    if (!text.ok()) continue;  // removed concurrently
    std::string t = text.value();
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
    auto d = Digest::Parse(t);
    if (d.ok()) out.emplace_back(UnescapeComponent(f), d.value());
  }
  return out;
}

Status ImageStore::Tag(const Digest& image, std::string_view name) {
  PADDOCK_ASSIGN_OR_RETURN(std::string n, NormalizeName(name));
  if (::access(ImagePath(image).c_str(), F_OK) != 0)
    return Error(Code::kNotFound, "image {} not found; `paddock image ls` lists images", image.str());
  return AtomicWriteFile(NamePath(n), image.str() + "\n");
}

Result<Digest> ImageStore::Resolve(std::string_view ref) const {
  auto norm = NormalizeName(ref);
  if (norm.ok()) {
    auto text = ReadFileLimited(NamePath(norm.value()), 4096);
    if (text.ok()) {
      std::string t = text.value();
      while (!t.empty() && t.back() == '\n') t.pop_back();
      return Digest::Parse(t);
    }
  }
  std::string_view hex = ref;
  if (hex.substr(0, 7) == "sha256:") hex.remove_prefix(7);
  bool is_hex = hex.size() >= 4 && hex.size() <= 64 &&
                std::all_of(hex.begin(), hex.end(), [](char c) { return std::isxdigit(c) && !std::isupper(c); });
  if (is_hex) {
    PADDOCK_ASSIGN_OR_RETURN(auto images, ListNames(root_ + "/images"));
    std::vector<std::string> hits;
    for (auto& h : images)
      if (h.compare(0, hex.size(), hex) == 0) hits.push_back(h);
    if (hits.size() == 1) return Digest::FromHex(hits[0]);
    if (hits.size() > 1)
      return Error(Code::kInvalidArgument, "digest prefix '{}' matches {} images; give more digits", ref, hits.size());
  }
  return Error(Code::kNotFound, "image '{}' not found; `paddock image ls` lists images", ref);
}

Result<Image> ImageStore::Get(std::string_view ref) const {
  PADDOCK_ASSIGN_OR_RETURN(Digest d, Resolve(ref));
  PADDOCK_ASSIGN_OR_RETURN(std::string mtext, blobs_->Read(d, options_.max_json_bytes));
  Image img;
  img.digest = d;
  PADDOCK_ASSIGN_OR_RETURN(img.manifest, Manifest::Decode(mtext));
  PADDOCK_ASSIGN_OR_RETURN(img.config_json, blobs_->Read(img.manifest.config, options_.max_json_bytes));
  PADDOCK_ASSIGN_OR_RETURN(img.config, ParseImageConfig(img.config_json));
  PADDOCK_ASSIGN_OR_RETURN(auto names, Names());
  for (auto& [n, nd] : names)
    if (nd == d) img.names.push_back(n);
  return img;
}

Result<std::vector<ImageSummary>> ImageStore::List() const {
  PADDOCK_ASSIGN_OR_RETURN(auto images, ListNames(root_ + "/images"));
  PADDOCK_ASSIGN_OR_RETURN(auto names, Names());
  std::vector<ImageSummary> out;
  for (auto& h : images) {
    if (!IsHex64(h)) continue;
    ImageSummary s;
    s.digest = Digest::FromHex(h);
    for (auto& [n, nd] : names)
      if (nd == s.digest) s.names.push_back(n);
    auto mtext = blobs_->Read(s.digest, options_.max_json_bytes);
    if (mtext.ok()) {
      auto m = Manifest::Decode(mtext.value());
      if (m.ok()) {
        s.layers = m->layers.size();
        for (auto& l : m->layers) s.stored_bytes += l.size;
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

Status ImageStore::DropImage(const Digest& d) {
  PADDOCK_ASSIGN_OR_RETURN(auto names, Names());
  for (auto& [n, nd] : names)
    if (nd == d && ::unlink(NamePath(n).c_str()) != 0 && errno != ENOENT)
      return ErrnoError(fmt::format("removing name {}", n));
  if (::unlink(ImagePath(d).c_str()) != 0 && errno != ENOENT) return ErrnoError("removing image record");
  PADDOCK_RETURN_IF_ERROR(blobs_->RemoveRef(d, kImageHolder));
  PADDOCK_ASSIGN_OR_RETURN(size_t refs, blobs_->RefCount(d));
  if (refs > 0) return Status::Ok();
  auto mtext = blobs_->Read(d, options_.max_json_bytes);
  if (!mtext.ok()) return Status::Ok();  // manifest gone or corrupt: Gc's repair handles the holders
  PADDOCK_ASSIGN_OR_RETURN(Manifest m, Manifest::Decode(mtext.value()));
  std::string holder = ManifestHolder(d);
  PADDOCK_RETURN_IF_ERROR(blobs_->RemoveRef(m.config, holder));
  for (auto& l : m.layers) {
    PADDOCK_RETURN_IF_ERROR(blobs_->RemoveRef(l.blob, holder));
    PADDOCK_RETURN_IF_ERROR(blobs_->RemoveRef(l.index, holder));
  }
  return Status::Ok();
}

Status ImageStore::Remove(std::string_view ref) {
  PADDOCK_ASSIGN_OR_RETURN(Digest d, Resolve(ref));
  auto norm = NormalizeName(ref);
  if (norm.ok() && ::access(NamePath(norm.value()).c_str(), F_OK) == 0) {
    if (::unlink(NamePath(norm.value()).c_str()) != 0) return ErrnoError("removing name");
    PADDOCK_ASSIGN_OR_RETURN(auto names, Names());
    for (auto& [n, nd] : names)
      if (nd == d) return Status::Ok();  // still named
  }
  return DropImage(d);
}

Result<GcReport> ImageStore::Gc(const GcOptions& options) {
  // Repair: a crash between dropping an image and releasing its manifest's holds
  // leaves "manifest:<hex>" holders whose manifest has no image.
  PADDOCK_ASSIGN_OR_RETURN(auto all, blobs_->List());
  if (!options.dry_run) {
    for (const Digest& d : all) {
      PADDOCK_ASSIGN_OR_RETURN(auto holders, blobs_->Holders(d));
      for (auto& h : holders) {
        if (h == kImageHolder && ::access(ImagePath(d).c_str(), F_OK) != 0)
          PADDOCK_RETURN_IF_ERROR(blobs_->RemoveRef(d, h));
        if (h.rfind("manifest:", 0) == 0 && ::access((root_ + "/images/" + h.substr(9)).c_str(), F_OK) != 0)
          PADDOCK_RETURN_IF_ERROR(blobs_->RemoveRef(d, h));
      }
    }
  }
  PADDOCK_ASSIGN_OR_RETURN(GcReport report, blobs_->Gc(options));
  if (!options.dry_run) {
    PADDOCK_ASSIGN_OR_RETURN(auto records, ListNames(root_ + "/layers/sha256"));
    for (auto& r : records) {
      if (!IsHex64(r)) continue;
      auto l = FindLayer(Digest::FromHex(r));
      if (!l.ok() || !blobs_->Has(l->blob) || !blobs_->Has(l->index))
        ::unlink((root_ + "/layers/sha256/" + r).c_str());
    }
  }
  return report;
}

Result<StoredLayer> ImageStore::FindLayer(const Digest& diff_id) const {
  auto text = ReadFileLimited(LayerRecordPath(diff_id), 64 << 10);
  if (!text.ok()) return Error(Code::kNotFound, "layer {} is not stored", diff_id.str());
  return DecodeLayerRecord(text.value());
}

Result<std::vector<LayerEntry>> ImageStore::LayerEntries(const StoredLayer& layer) const {
  PADDOCK_ASSIGN_OR_RETURN(std::string text, blobs_->Read(layer.index, 1ull << 30));
  return DecodeIndex(text);
}

Status ImageStore::StreamLayerTar(const StoredLayer& layer,
                                  const std::function<Status(const void*, size_t)>& sink) const {
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), &archive_read_free);
  archive_read_support_filter_all(a.get());
  archive_read_support_format_raw(a.get());
  std::string path = blobs_->BlobPath(layer.blob);
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 20) != ARCHIVE_OK)
    return Error(Code::kNotFound, "layer {}: cannot open blob {}: {}", layer.diff_id.str(), layer.blob.str(),
                 archive_error_string(a.get()));
  archive_entry* e;
  if (archive_read_next_header(a.get(), &e) != ARCHIVE_OK)
    return Error(Code::kDataLoss, "layer {}: blob {} is unreadable: {}", layer.diff_id.str(), layer.blob.str(),
                 archive_error_string(a.get()));
  Sha256 h;
  std::string buf(1 << 20, '\0');
  for (;;) {
    la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
    if (n < 0)
      return Error(Code::kDataLoss, "layer {}: blob {} is corrupt: {}", layer.diff_id.str(), layer.blob.str(),
                   archive_error_string(a.get()));
    if (n == 0) break;
    h.Update(buf.data(), static_cast<size_t>(n));
    PADDOCK_RETURN_IF_ERROR(sink(buf.data(), static_cast<size_t>(n)));
  }
  Digest got = h.Finish();
  if (!(got == layer.diff_id))
    return Error(Code::kDataLoss, "layer {}: blob {} decompresses to {}", layer.diff_id.str(), layer.blob.str(),
                 got.str());
  return Status::Ok();
}

}  // namespace paddock::storage
