// Image store: blobs, layers, images, import/export, hostile archives.
#include <archive.h>
#include <archive_entry.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "storage/blob_store.h"
#include "storage/image_import.h"
#include "storage/image_store.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace paddock::storage {
namespace {

// ---------- archive builders (libarchive's writer) ----------

struct TarEntry {
  std::string path;
  char type = 'f';  // f file, d dir, l symlink, h hardlink, c char dev, b block dev, p fifo
  std::string content;
  std::string link;
  int64_t declared_size = -1;  // header size when different from content (bombs)
};

enum class Filter { kNone, kGzip, kZstd };

std::string WriteTar(const std::vector<TarEntry>& entries, Filter filter = Filter::kNone) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (filter == Filter::kGzip) archive_write_add_filter_gzip(a);
  if (filter == Filter::kZstd) archive_write_add_filter_zstd(a);
  std::vector<char> buf(64 << 20);
  size_t used = 0;
  archive_write_set_bytes_in_last_block(a, 1);
  EXPECT_EQ(archive_write_open_memory(a, buf.data(), buf.size(), &used), ARCHIVE_OK);
  for (const auto& t : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, t.path.c_str());
    archive_entry_set_mtime(e, 1700000000, 0);
    archive_entry_set_perm(e, t.type == 'd' ? 0755 : 0644);
    switch (t.type) {
      case 'd': archive_entry_set_filetype(e, AE_IFDIR); break;
      case 'l': archive_entry_set_filetype(e, AE_IFLNK); archive_entry_set_symlink(e, (t.link.empty() ? t.content : t.link).c_str()); break;
      case 'h': archive_entry_set_filetype(e, AE_IFREG); archive_entry_set_hardlink(e, t.link.c_str()); break;
      case 'c': archive_entry_set_filetype(e, AE_IFCHR); archive_entry_set_rdev(e, makedev(1, 3)); break;
      case 'b': archive_entry_set_filetype(e, AE_IFBLK); archive_entry_set_rdev(e, makedev(8, 0)); break;
      case 'p': archive_entry_set_filetype(e, AE_IFIFO); break;
      default:
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_size(e, t.declared_size >= 0 ? t.declared_size : static_cast<int64_t>(t.content.size()));
    }
    EXPECT_EQ(archive_write_header(a, e), ARCHIVE_OK) << archive_error_string(a);
    if (t.type == 'f' && !t.content.empty()) archive_write_data(a, t.content.data(), t.content.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return std::string(buf.data(), used);
}

// A tar of a real directory (sorted, like ImportDirectory but written independently).
void AddTree(archive* a, const std::string& root, const std::string& rel) {
  std::string full = rel.empty() ? root : root + "/" + rel;
  struct stat st;
  ASSERT_EQ(::lstat(full.c_str(), &st), 0);
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode)) return;
  archive_entry* e = archive_entry_new();
  archive_entry_copy_stat(e, &st);
  archive_entry_set_pathname(e, rel.empty() ? "./" : rel.c_str());
  if (S_ISLNK(st.st_mode)) archive_entry_set_symlink(e, fs::read_symlink(full).c_str());
  if (!S_ISREG(st.st_mode)) archive_entry_set_size(e, 0);
  archive_write_header(a, e);
  archive_entry_free(e);
  if (S_ISREG(st.st_mode)) {
    std::ifstream in(full, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), {});
    archive_write_data(a, data.data(), data.size());
  }
  if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> kids;
    for (auto& d : fs::directory_iterator(full)) kids.push_back(d.path().filename());
    std::sort(kids.begin(), kids.end());
    for (auto& k : kids) AddTree(a, root, rel.empty() ? k : rel + "/" + k);
  }
}

std::string TarOfDir(const std::string& dir, Filter filter) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (filter == Filter::kGzip) archive_write_add_filter_gzip(a);
  if (filter == Filter::kZstd) archive_write_add_filter_zstd(a);
  std::vector<char> buf(256 << 20);
  size_t used = 0;
  archive_write_open_memory(a, buf.data(), buf.size(), &used);
  AddTree(a, dir, "");
  archive_write_close(a);
  archive_write_free(a);
  return std::string(buf.data(), used);
}

std::string Sha(const std::string& s) { return Sha256::Of(s).str(); }
std::string Hex(const std::string& s) { return Sha256::Of(s).hex(); }

std::string Uncompressed(const std::string& blob) {
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_raw(a);
  archive_read_open_memory(a, blob.data(), blob.size());
  archive_entry* e;
  archive_read_next_header(a, &e);
  std::string out, buf(1 << 16, '\0');
  for (la_ssize_t n; (n = archive_read_data(a, buf.data(), buf.size())) > 0;) out.append(buf.data(), n);
  archive_read_free(a);
  return out;
}

std::string ConfigFor(const std::vector<std::string>& layer_blobs, const std::string& marker = "") {
  json ids = json::array();
  for (auto& l : layer_blobs) ids.push_back(Sha(Uncompressed(l)));
  json c = {{"architecture", "amd64"},
            {"os", "linux"},
            {"config", {{"Env", {"PATH=/bin", "MARK=" + marker}}, {"WorkingDir", "/work"}, {"Entrypoint", {"/bin/sh"}},
                        {"User", "0:0"}}},
            {"rootfs", {{"type", "layers"}, {"diff_ids", ids}}}};
  return c.dump();
}

// Files of an archive: path → content.
using Files = std::map<std::string, std::string>;

// An OCI image layout holding one image with these (possibly compressed) layer blobs.
Files OciLayout(const std::vector<std::string>& layers, const std::string& config, const std::string& ref = "") {
  Files f;
  f["oci-layout"] = R"({"imageLayoutVersion":"1.0.0"})";
  f["blobs/sha256/" + Hex(config)] = config;
  json ls = json::array();
  for (auto& l : layers) {
    f["blobs/sha256/" + Hex(l)] = l;
    ls.push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar"}, {"digest", Sha(l)}, {"size", l.size()}});
  }
  std::string m = json{{"schemaVersion", 2},
                       {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                       {"config", {{"mediaType", "application/vnd.oci.image.config.v1+json"},
                                   {"digest", Sha(config)}, {"size", config.size()}}},
                       {"layers", ls}}
                      .dump();
  f["blobs/sha256/" + Hex(m)] = m;
  json desc = {{"mediaType", "application/vnd.oci.image.manifest.v1+json"}, {"digest", Sha(m)}, {"size", m.size()}};
  if (!ref.empty()) desc["annotations"] = {{"org.opencontainers.image.ref.name", ref}};
  f["index.json"] = json{{"schemaVersion", 2}, {"manifests", {desc}}}.dump();
  return f;
}

Files DockerSave(const std::vector<std::string>& layers, const std::string& config, const std::string& tag) {
  Files f;
  f[Hex(config) + ".json"] = config;
  json ls = json::array();
  for (size_t i = 0; i < layers.size(); ++i) {
    std::string dir = Hex(layers[i]);
    f[dir + "/layer.tar"] = layers[i];
    f[dir + "/VERSION"] = "1.0";
    ls.push_back(dir + "/layer.tar");
  }
  f["manifest.json"] = json::array({{{"Config", Hex(config) + ".json"}, {"RepoTags", {tag}}, {"Layers", ls}}}).dump();
  return f;
}

void WriteArchive(const Files& files, const std::string& path) {
  std::vector<TarEntry> es;
  for (auto& [p, c] : files) es.push_back({p, 'f', c});
  std::string tar = WriteTar(es);
  std::ofstream(path, std::ios::binary) << tar;
}

void WriteDir(const Files& files, const std::string& dir) {
  for (auto& [p, c] : files) {
    fs::create_directories(fs::path(dir + "/" + p).parent_path());
    std::ofstream(dir + "/" + p, std::ios::binary) << c;
  }
}

class StorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/paddock-storage-XXXXXX";
    tmp_ = ::mkdtemp(tmpl);
    root_ = tmp_ + "/store";
    Reopen();
  }
  void TearDown() override { fs::remove_all(tmp_); }
  void Reopen(ImageStoreOptions o = {}) {
    auto s = ImageStore::Open(root_, o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
  }
  size_t CountFiles(const std::string& sub) {
    size_t n = 0;
    if (!fs::exists(root_ + "/" + sub)) return 0;
    for (auto& e : fs::recursive_directory_iterator(root_ + "/" + sub))
      if (e.is_regular_file()) ++n;
    return n;
  }
  // The store holds nothing at all: no blobs, layers, images, names, staging.
  void ExpectStoreEmpty() {
    EXPECT_EQ(CountFiles("blobs"), 0u);
    EXPECT_EQ(CountFiles("layers"), 0u);
    EXPECT_EQ(CountFiles("images"), 0u);
    EXPECT_EQ(CountFiles("refs"), 0u);
    EXPECT_EQ(CountFiles("staging"), 0u);
    EXPECT_TRUE(fs::is_empty(root_ + "/staging"));
  }
  Result<ImportResult> ImportFiles(const Files& f, const std::vector<std::string>& names = {}) {
    std::string path = tmp_ + "/in-" + std::to_string(counter_++) + ".tar";
    WriteArchive(f, path);
    return ImportImage(*store_, path, ImportOptions{names});
  }
  // Imports a one-image OCI archive of these layers; expects INVALID_ARGUMENT naming `needle`.
  void ExpectRefused(const std::vector<std::string>& layers, const std::string& needle) {
    auto r = ImportFiles(OciLayout(layers, ConfigFor(layers)));
    ASSERT_FALSE(r.ok()) << "import of a hostile archive succeeded";
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().ToString();
    ExpectStoreEmpty();
  }
  std::string tmp_, root_;
  std::unique_ptr<ImageStore> store_;
  int counter_ = 0;
};

std::string Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// ---------- blobs ----------

TEST_F(StorageTest, Blob_RoundTripAndVerifiedRead) {
  BlobStore& b = store_->blobs();
  auto d = b.Put("hello blob");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->str(), Sha("hello blob"));
  EXPECT_EQ(b.Read(*d).value(), "hello blob");
  EXPECT_TRUE(fs::exists(root_ + "/blobs/sha256/" + d->hex()));
  // Same content: same blob, nothing new committed.
  auto before = b.stats().bytes_committed;
  ASSERT_TRUE(b.Put("hello blob").ok());
  EXPECT_EQ(b.stats().bytes_committed, before);
  // Corrupt it on disk: reads are DATA_LOSS naming the blob.
  std::string path = b.BlobPath(*d);
  fs::permissions(path, fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(path, std::ios::binary) << "hellO blob";
  auto r = b.Read(*d);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find(d->str()), std::string::npos);
  EXPECT_EQ(b.Verify(*d).code(), Code::kDataLoss);
  EXPECT_EQ(b.Read(Sha256::Of("absent")).status().code(), Code::kNotFound);
}

TEST_F(StorageTest, Blob_SigkillMidWriteLeavesNoPartialBlob) {
  for (int round = 0; round < 5; ++round) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto s = BlobStore::Open(root_);
      for (uint64_t i = 0;; ++i) {
        auto st = s.value()->NewStaging();
        auto w = st.value()->NewWriter();
        std::string chunk = Random(256 << 10, i * 7919 + round);
        for (int k = 0; k < 16; ++k) (void)w.value()->Write(chunk);  // 4 MiB per blob
        auto staged = w.value()->Finish();
        (void)s.value()->Commit(staged.value());
      }
    }
    ::usleep(150000 + round * 70000);
    ::kill(pid, SIGKILL);
    int status;
    ::waitpid(pid, &status, 0);
  }
  auto blobs = store_->blobs().List();
  ASSERT_TRUE(blobs.ok());
  EXPECT_GT(blobs->size(), 0u);
  for (auto& d : *blobs) {
    EXPECT_TRUE(store_->blobs().Verify(d).ok()) << "partial blob visible: " << d.str();
    EXPECT_EQ(store_->blobs().Size(d).value(), 4u << 20);
  }
  EXPECT_GT(CountFiles("staging"), 0u);  // the killed writers' leftovers
  auto gc = store_->blobs().Gc(GcOptions{std::chrono::seconds(0)});
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(CountFiles("staging"), 0u);
}

TEST_F(StorageTest, Blob_ReferencesKeepBlobsThroughGc) {
  BlobStore& b = store_->blobs();
  Digest kept = b.Put("kept").value(), dropped = b.Put("dropped").value();
  ASSERT_TRUE(b.AddRef(kept, "holder:a").ok());
  ASSERT_TRUE(b.AddRef(kept, "holder/b").ok());
  ASSERT_TRUE(b.AddRef(kept, "holder:a").ok());  // idempotent
  EXPECT_EQ(b.RefCount(kept).value(), 2u);
  // A default grace period protects even unreferenced fresh blobs.
  EXPECT_EQ(b.Gc().value().blobs_removed, 0u);
  auto r = b.Gc(GcOptions{std::chrono::seconds(0)}).value();
  EXPECT_EQ(r.blobs_removed, 1u);
  EXPECT_FALSE(b.Has(dropped));
  EXPECT_TRUE(b.Has(kept));
  ASSERT_TRUE(b.RemoveRef(kept, "holder:a").ok());
  EXPECT_EQ(b.Gc(GcOptions{std::chrono::seconds(0)}).value().blobs_removed, 0u);
  ASSERT_TRUE(b.RemoveRef(kept, "holder/b").ok());
  EXPECT_EQ(b.RefCount(kept).value(), 0u);
  EXPECT_EQ(b.Gc(GcOptions{std::chrono::seconds(0)}).value().blobs_removed, 1u);
  EXPECT_EQ(CountFiles("blobs"), 0u);
}

// ---------- layers, images, names ----------

std::string BaseLayer() {
  return WriteTar({{"etc", 'd'}, {"etc/os-release", 'f', "paddock test\n"}, {"bin", 'd'},
                   {"bin/tool", 'f', Random(300 << 10, 1)}, {"bin/sh", 'l', "tool"}, {"etc/hosts", 'f', "127.0.0.1\n"}},
                  Filter::kGzip);
}

TEST_F(StorageTest, Image_SharedLayersStoredOnceAndOnlyNewBytesWritten) {
  std::string base = BaseLayer();
  std::string top1 = WriteTar({{"app", 'd'}, {"app/one", 'f', Random(200 << 10, 2)}}, Filter::kZstd);
  std::string top2 = WriteTar({{"app", 'd'}, {"app/two", 'f', Random(100 << 10, 3)}, {"etc/.wh.hosts", 'f'}});
  auto a = ImportFiles(OciLayout({base, top1}, ConfigFor({base, top1})), {"app:1"});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->layers_new, 2u);
  size_t blobs_after_a = store_->blobs().List()->size();

  auto b = ImportFiles(OciLayout({base, top2}, ConfigFor({base, top2})), {"app:2"});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->layers_new, 1u);
  Image img = store_->Get("app:2").value();
  const StoredLayer& top = img.manifest.layers[1];
  uint64_t index_size = store_->blobs().Size(top.index).value();
  uint64_t docs = store_->blobs().Size(img.digest).value() + store_->blobs().Size(img.manifest.config).value();
  // Only the new layer (compressed tar + index) and the two small documents.
  EXPECT_EQ(b->bytes_committed, top.size + index_size + docs);
  std::printf("second import wrote %llu bytes: top layer %llu (compressed of %llu), index %llu, manifest+config %llu\n",
              (unsigned long long)b->bytes_committed, (unsigned long long)top.size,
              (unsigned long long)top.uncompressed_size, (unsigned long long)index_size, (unsigned long long)docs);
  EXPECT_EQ(store_->blobs().List()->size(), blobs_after_a + 4);  // layer, index, config, manifest
  EXPECT_EQ(img.manifest.layers[0].blob, store_->Get("app:1")->manifest.layers[0].blob);

  // Importing the very same archive again writes no new blobs at all.
  auto again = ImportFiles(OciLayout({base, top2}, ConfigFor({base, top2})));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bytes_committed, 0u);
  EXPECT_EQ(again->images[0], img.digest);
}

TEST_F(StorageTest, Image_LayerFormatAndIndex) {
  std::string base = BaseLayer();
  ASSERT_TRUE(ImportFiles(OciLayout({base}, ConfigFor({base})), {"x"}).ok());
  Image img = store_->Get("x").value();
  const StoredLayer& l = img.manifest.layers[0];
  EXPECT_EQ(l.compression, Compression::kZstd);
  EXPECT_EQ(l.diff_id.str(), Sha(Uncompressed(base)));
  EXPECT_LT(l.size, l.uncompressed_size);
  std::string tar;
  ASSERT_TRUE(store_->StreamLayerTar(l, [&](const void* p, size_t n) {
                      tar.append(static_cast<const char*>(p), n);
                      return Status::Ok();
                    }).ok());
  EXPECT_EQ(tar, Uncompressed(base));
  auto entries = store_->LayerEntries(l).value();
  ASSERT_EQ(entries.size(), 6u);
  EXPECT_EQ(entries[4].path, "bin/sh");
  EXPECT_EQ(entries[4].type, EntryType::kSymlink);
  EXPECT_EQ(entries[4].link, "tool");
  EXPECT_EQ(entries[3].size, 300u << 10);
  EXPECT_EQ(img.config.env[0], "PATH=/bin");
  EXPECT_EQ(img.config.cwd, "/work");
  EXPECT_EQ(img.config.entrypoint, std::vector<std::string>{"/bin/sh"});
  EXPECT_EQ(img.config.user, "0:0");

  // lz4 selectable: the same diff_id is not stored twice, a new one is lz4.
  ImageStoreOptions o;
  o.compression = Compression::kLz4;
  Reopen(o);
  std::string other = WriteTar({{"lz", 'f', std::string(100000, 'z')}});
  ASSERT_TRUE(ImportFiles(OciLayout({base, other}, ConfigFor({base, other})), {"y"}).ok());
  Image y = store_->Get("y").value();
  EXPECT_EQ(y.manifest.layers[0].compression, Compression::kZstd);
  EXPECT_EQ(y.manifest.layers[1].compression, Compression::kLz4);
  std::string tar2;
  ASSERT_TRUE(store_->StreamLayerTar(y.manifest.layers[1], [&](const void* p, size_t n) {
                      tar2.append(static_cast<const char*>(p), n);
                      return Status::Ok();
                    }).ok());
  EXPECT_EQ(tar2, other);
}

TEST_F(StorageTest, Image_NamesTagsResolveListRemoveGc) {
  std::string base = BaseLayer();
  auto r = ImportFiles(OciLayout({base}, ConfigFor({base}, "one")), {"tools"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Digest d = r->images[0];
  EXPECT_EQ(store_->Resolve("tools").value(), d);
  EXPECT_EQ(store_->Resolve("tools:latest").value(), d);
  EXPECT_EQ(store_->Resolve(d.str()).value(), d);
  EXPECT_EQ(store_->Resolve(d.hex().substr(0, 8)).value(), d);
  EXPECT_EQ(store_->Resolve("sha256:" + d.hex().substr(0, 6)).value(), d);
  auto nf = store_->Resolve("nope:1");
  EXPECT_EQ(nf.status().code(), Code::kNotFound);
  EXPECT_NE(nf.status().message().find("paddock image ls"), std::string::npos);
  ASSERT_TRUE(store_->Tag(d, "registry.local/team/tools:v2").ok());
  EXPECT_EQ(store_->Resolve("registry.local/team/tools:v2").value(), d);
  EXPECT_EQ(store_->Tag(d, "bad name!").code(), Code::kInvalidArgument);

  auto r2 = ImportFiles(OciLayout({base}, ConfigFor({base}, "two")), {"other:1"});
  ASSERT_TRUE(r2.ok());
  auto list = store_->List().value();
  ASSERT_EQ(list.size(), 2u);
  for (auto& s : list) {
    EXPECT_EQ(s.layers, 1u);
    if (s.digest == d) {
      EXPECT_EQ(s.names.size(), 2u);
    }
  }
  // Dropping one of two names keeps the image; dropping the last removes it.
  ASSERT_TRUE(store_->Remove("tools").ok());
  EXPECT_TRUE(store_->Resolve(d.str()).ok());
  ASSERT_TRUE(store_->Remove("registry.local/team/tools:v2").ok());
  EXPECT_EQ(store_->Resolve(d.str()).status().code(), Code::kNotFound);
  // gc frees the config and manifest, but the shared layer stays for other:1.
  auto gc = store_->Gc(GcOptions{std::chrono::seconds(0)}).value();
  EXPECT_EQ(gc.blobs_removed, 2u);
  EXPECT_TRUE(store_->Get("other:1").ok());
  ASSERT_TRUE(store_->blobs().Verify(store_->Get("other:1")->manifest.layers[0].blob).ok());
  ASSERT_TRUE(store_->Remove(r2->images[0].hex().substr(0, 10)).ok());
  store_->Gc(GcOptions{std::chrono::seconds(0)}).value();
  ExpectStoreEmpty();
}

TEST_F(StorageTest, Image_DirectoryImportIsReproducible) {
  std::string rootfs = testing::EnsureBusyboxRootfs();
  ImageConfig cfg;
  cfg.env = {"PATH=/bin"};
  auto a = ImportDirectory(*store_, rootfs, cfg, {"busybox:dir"});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = ImportDirectory(*store_, rootfs, cfg);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->image, b->image);
  Image img = store_->Get("busybox:dir").value();
  auto entries = store_->LayerEntries(img.manifest.layers[0]).value();
  bool has_busybox = false;
  for (auto& e : entries) has_busybox |= e.path == "bin/busybox" && e.type == EntryType::kFile;
  EXPECT_TRUE(has_busybox);
  EXPECT_EQ(img.config.env, cfg.env);
}

// ---------- import formats and export ----------

TEST_F(StorageTest, Import_DockerSaveOfBusybox) {
  std::string rootfs = testing::EnsureBusyboxRootfs();
  std::string l1 = TarOfDir(rootfs, Filter::kNone);
  std::string l2 = WriteTar({{"etc", 'd'}, {"etc/.wh.image-marker", 'f'}, {"work", 'd'}, {"work/.wh..wh..opq", 'f'},
                             {"work/new", 'f', "x"}},
                            Filter::kGzip);
  std::string l3 = WriteTar({{"root/.profile", 'f', "export A=1\n"}}, Filter::kZstd);
  Files f = DockerSave({l1, l2, l3}, ConfigFor({l1, l2, l3}), "busybox:saved");
  auto r = ImportFiles(f);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Image img = store_->Get("busybox:saved").value();
  ASSERT_EQ(img.manifest.layers.size(), 3u);
  auto e2 = store_->LayerEntries(img.manifest.layers[1]).value();
  EXPECT_EQ(e2[1].type, EntryType::kWhiteout);
  EXPECT_EQ(e2[1].path, "etc/image-marker");
  EXPECT_EQ(e2[3].type, EntryType::kOpaque);
  EXPECT_EQ(e2[3].path, "work");
  // Whiteouts stay in the stored tar, byte for byte.
  std::string tar;
  ASSERT_TRUE(store_->StreamLayerTar(img.manifest.layers[1], [&](const void* p, size_t n) {
                      tar.append(static_cast<const char*>(p), n);
                      return Status::Ok();
                    }).ok());
  EXPECT_EQ(tar, Uncompressed(l2));

  // The same archive unpacked as a directory imports to the same image.
  WriteDir(f, tmp_ + "/saved-dir");
  auto r2 = ImportImage(*store_, tmp_ + "/saved-dir");
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_EQ(r2->images[0], r->images[0]);
}

TEST_F(StorageTest, Import_OciLayoutOfBusyboxAndExportRoundTrip) {
  std::string rootfs = testing::EnsureBusyboxRootfs();
  std::string l1 = TarOfDir(rootfs, Filter::kZstd);
  std::string l2 = WriteTar({{"etc/.wh.image-marker", 'f'}, {"etc/motd", 'f', "hi\n"}}, Filter::kGzip);
  std::string config = ConfigFor({l1, l2});
  auto r = ImportFiles(OciLayout({l1, l2}, config, "22.04"), {"bb:oci"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Image img = store_->Get("bb:oci").value();
  EXPECT_EQ(img.manifest.config.str(), Sha(config));

  // OCI layout as a directory, too.
  WriteDir(OciLayout({l1, l2}, config), tmp_ + "/oci-dir");
  auto rd = ImportImage(*store_, tmp_ + "/oci-dir");
  ASSERT_TRUE(rd.ok()) << rd.status().ToString();
  EXPECT_EQ(rd->images[0], img.digest);

  // import → export → import: same digests, and in a fresh store too.
  std::string out = tmp_ + "/export";
  ASSERT_TRUE(ExportOci(*store_, "bb:oci", out).ok());
  auto back = ImportImage(*store_, out);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->images[0], img.digest);
  EXPECT_EQ(back->bytes_committed, 0u);
  EXPECT_EQ(store_->Get(img.digest.str())->names.size(), 1u);  // annotation name bb:oci

  std::string root2 = tmp_ + "/store2";
  auto fresh = ImageStore::Open(root2).value();
  auto f1 = ImportImage(*fresh, out);
  ASSERT_TRUE(f1.ok()) << f1.status().ToString();
  EXPECT_EQ(f1->images[0], img.digest);
  std::string out2 = tmp_ + "/export2";
  ASSERT_TRUE(ExportOci(*fresh, img.digest.str(), out2).ok());
  EXPECT_EQ(fs::file_size(out + "/index.json"), fs::file_size(out2 + "/index.json"));
  auto f2 = ImportImage(*fresh, out2);
  ASSERT_TRUE(f2.ok());
  EXPECT_EQ(f2->images[0], img.digest);

  // An lz4 store exports plain tars; diff_ids and config survive.
  ImageStoreOptions o;
  o.compression = Compression::kLz4;
  auto lz = ImageStore::Open(tmp_ + "/store3", o).value();
  auto l = ImportImage(*lz, out);
  ASSERT_TRUE(l.ok());
  ASSERT_TRUE(ExportOci(*lz, l->images[0].str(), tmp_ + "/export3").ok());
  auto l2r = ImportImage(*fresh, tmp_ + "/export3");
  ASSERT_TRUE(l2r.ok()) << l2r.status().ToString();
  Image via_lz4 = fresh->Get(l2r->images[0].str()).value();
  EXPECT_EQ(via_lz4.manifest.config, img.manifest.config);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(via_lz4.manifest.layers[i].diff_id, img.manifest.layers[i].diff_id);
}

// ---------- hostile archives: each refused, naming the entry, store left empty ----------

TEST_F(StorageTest, Hostile_DotDotPath) { ExpectRefused({WriteTar({{"a/../../etc/passwd", 'f', "x"}})}, "a/../../etc/passwd"); }

TEST_F(StorageTest, Hostile_AbsolutePath) { ExpectRefused({WriteTar({{"/etc/passwd", 'f', "x"}})}, "/etc/passwd"); }

TEST_F(StorageTest, Hostile_SymlinkEscapingRoot) {
  ExpectRefused({WriteTar({{"usr", 'd'}, {"usr/evil", 'l', "../../../etc"}})}, "'usr/evil' is a symlink escaping the root");
}

TEST_F(StorageTest, Hostile_WriteThroughSymlink) {
  ExpectRefused({WriteTar({{"lnk", 'l', "/etc"}, {"lnk/passwd", 'f', "root::0:0::/:/bin/sh\n"}})}, "'lnk/passwd' is written through symlink 'lnk'");
}

TEST_F(StorageTest, Hostile_WriteThroughSymlinkOfLowerLayer) {
  std::string lower = WriteTar({{"lnk", 'l', "/etc"}});
  std::string upper = WriteTar({{"lnk/passwd", 'f', "x"}});
  ExpectRefused({lower, upper}, "'lnk/passwd' is written through symlink 'lnk' of a lower layer");
}

TEST_F(StorageTest, Hostile_HardLinkToOutside) {
  ExpectRefused({WriteTar({{"h", 'h', "", "../../etc/shadow"}})}, "h");
  ExpectRefused({WriteTar({{"h2", 'h', "", "etc/shadow"}})}, "h2");
}

TEST_F(StorageTest, Hostile_DeviceNodes) {
  ExpectRefused({WriteTar({{"dev", 'd'}, {"dev/mem", 'c'}})}, "dev/mem");
  ExpectRefused({WriteTar({{"dev", 'd'}, {"dev/sda", 'b'}})}, "dev/sda");
  // FIFOs are allowed: no device access, and some images carry them.
  auto fifo = WriteTar({{"run", 'd'}, {"run/pipe", 'p'}});
  auto r = ImportFiles(OciLayout({fifo}, ConfigFor({fifo})));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
}

TEST_F(StorageTest, Hostile_SizeBombs) {
  ImageStoreOptions o;
  o.limits.max_unpacked_bytes = 1 << 20;
  o.limits.max_entries = 50;
  Reopen(o);
  // 64 MiB of zeros gzip to ~64 KiB.
  ExpectRefused({WriteTar({{"zeros", 'f', std::string(64 << 20, '\0')}}, Filter::kGzip)}, "zeros");
  std::vector<TarEntry> many;
  for (int i = 0; i < 100; ++i) many.push_back({"f" + std::to_string(i), 'f', "x"});
  ExpectRefused({WriteTar(many)}, "f50");
  // A header claiming a huge size is refused before any data is read.
  std::string tar = WriteTar({{"ok", 'f', "fine"}});
  ExpectRefused({WriteTar({{"liar", 'f', "", "", int64_t(1) << 40}})}, "liar");
}

TEST_F(StorageTest, Hostile_TruncatedArchive) {
  std::string tar = WriteTar({{"big", 'f', Random(200 << 10, 9)}, {"after", 'f', "x"}});
  ExpectRefused({tar.substr(0, 100 << 10)}, "big");
  std::string gz = WriteTar({{"big", 'f', Random(200 << 10, 9)}}, Filter::kGzip);
  ExpectRefused({gz.substr(0, gz.size() / 2)}, "truncated");
  // The outer archive cut short.
  Files f = OciLayout({tar}, ConfigFor({tar}));
  WriteArchive(f, tmp_ + "/cut.tar");
  std::string whole;
  {
    std::ifstream in(tmp_ + "/cut.tar", std::ios::binary);
    whole.assign((std::istreambuf_iterator<char>(in)), {});
  }
  std::ofstream(tmp_ + "/cut.tar", std::ios::binary | std::ios::trunc) << whole.substr(0, whole.size() / 2);
  auto r = ImportImage(*store_, tmp_ + "/cut.tar");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  ExpectStoreEmpty();
}

TEST_F(StorageTest, Hostile_BlobDigestDoesNotMatchName) {
  std::string l = WriteTar({{"a", 'f', "real"}});
  Files f = OciLayout({l}, ConfigFor({l}));
  std::string forged = WriteTar({{"a", 'f', "fake"}});
  f["blobs/sha256/" + Hex(l)] = forged;  // same name, other bytes
  auto r = ImportFiles(f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find(Hex(l)), std::string::npos) << r.status().ToString();
  ExpectStoreEmpty();
  // A forged config blob too.
  Files g = OciLayout({l}, ConfigFor({l}));
  std::string cfg = ConfigFor({l});
  g["blobs/sha256/" + Hex(cfg)] = ConfigFor({l}, "tampered");
  r = ImportFiles(g);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not match its name"), std::string::npos) << r.status().ToString();
  ExpectStoreEmpty();
  // A layer whose content does not match the config's diff_id.
  std::string other = WriteTar({{"b", 'f', "other"}});
  r = ImportFiles(OciLayout({l}, ConfigFor({other})));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("image config says"), std::string::npos) << r.status().ToString();
  ExpectStoreEmpty();
}

TEST_F(StorageTest, Hostile_ManifestNamesMissingLayer) {
  std::string l1 = WriteTar({{"a", 'f', "1"}}), l2 = WriteTar({{"b", 'f', "2"}});
  Files f = OciLayout({l1, l2}, ConfigFor({l1, l2}));
  f.erase("blobs/sha256/" + Hex(l2));
  auto r = ImportFiles(f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find(Hex(l2)), std::string::npos) << r.status().ToString();
  ExpectStoreEmpty();
  Files d = DockerSave({l1, l2}, ConfigFor({l1, l2}), "x:1");
  d.erase(Hex(l2) + "/layer.tar");
  r = ImportFiles(d);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(Hex(l2) + "/layer.tar"), std::string::npos) << r.status().ToString();
  ExpectStoreEmpty();
}

TEST_F(StorageTest, Hostile_FailureAfterGoodLayersLeavesNothing) {
  // The first layer is fine and would be stored; the second is hostile.
  std::string good = BaseLayer();
  std::string bad = WriteTar({{"../escape", 'f', "x"}});
  ExpectRefused({good, bad}, "../escape");
}

}  // namespace
}  // namespace paddock::storage
