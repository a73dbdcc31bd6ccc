// Materialization cache: unpack once, concurrent first use, overlay whiteouts
// (checked through a real overlay mount), LRU eviction with leases, restart.
#include <archive.h>
#include <archive_entry.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "storage/image_store.h"
#include "storage/layer_cache.h"

namespace fs = std::filesystem;

namespace paddock::storage {
namespace {

struct TarEntry {
  std::string path;
  char type = 'f';  // f file, d dir, l symlink, h hardlink, c char device
  std::string content;  // file data or link target
  int mode = -1;
  int uid = 0, gid = 0;
};

std::string WriteTar(const std::vector<TarEntry>& entries, bool gzip = false) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  size_t total = 1 << 20;
  for (auto& t : entries) total += t.content.size() + 2048;
  std::vector<char> buf(total);
  size_t used = 0;
  archive_write_open_memory(a, buf.data(), buf.size(), &used);
  for (const auto& t : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, t.path.c_str());
    archive_entry_set_mtime(e, 1700000000, 0);
    archive_entry_set_perm(e, t.mode >= 0 ? t.mode : (t.type == 'd' ? 0755 : 0644));
    archive_entry_set_uid(e, t.uid);
    archive_entry_set_gid(e, t.gid);
    switch (t.type) {
      case 'd': archive_entry_set_filetype(e, AE_IFDIR); break;
      case 'l': archive_entry_set_filetype(e, AE_IFLNK); archive_entry_set_symlink(e, t.content.c_str()); break;
      case 'h': archive_entry_set_filetype(e, AE_IFREG); archive_entry_set_hardlink(e, t.content.c_str()); break;
      case 'c': archive_entry_set_filetype(e, AE_IFCHR); break;
      case 'p': archive_entry_set_filetype(e, AE_IFIFO); break;
      default:
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_size(e, static_cast<int64_t>(t.content.size()));
    }
    EXPECT_EQ(archive_write_header(a, e), ARCHIVE_OK) << archive_error_string(a);
    if (t.type == 'f' && !t.content.empty()) archive_write_data(a, t.content.data(), t.content.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return std::string(buf.data(), used);
}

std::string ReadFile(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

class LayerCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fs::temp_directory_path() / fmt::format("layer_cache_test.{}.{}", ::getpid(), counter_++);
    fs::create_directories(tmp_);
    auto s = ImageStore::Open(tmp_ + "/store");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    cache_dir_ = tmp_ + "/cache";
  }
  void TearDown() override {
    ::umount2((tmp_ + "/mnt").c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  // Imports layers (bottom first) as one image; returns their diff_ids.
  std::vector<Digest> AddImage(const std::vector<std::string>& tars, Compression c = Compression::kZstd) {
    std::vector<Digest> ids;
    auto txn = store_->Begin();
    EXPECT_TRUE(txn.ok());
    std::vector<StoredLayer> layers;
    for (size_t i = 0; i < tars.size(); ++i) {
      auto l = (*txn)->AddLayer(SourceFromString(tars[i]), LayerHint{fmt::format("layer{}", i), {}, {}});
      EXPECT_TRUE(l.ok()) << l.status().ToString();
      if (!l.ok()) return ids;
      layers.push_back(l.value());
      ids.push_back(l->diff_id);
    }
    (void)c;
    auto img = (*txn)->AddImage(MakeOciConfig({}, ids), layers, {});
    EXPECT_TRUE(img.ok()) << img.status().ToString();
    Status st = (*txn)->Commit();
    EXPECT_TRUE(st.ok()) << st.ToString();
    return ids;
  }

  std::unique_ptr<LayerCache> OpenCache(LayerCacheOptions o = {}) {
    o.sync = false;
    auto c = LayerCache::Open(cache_dir_, store_.get(), o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  static inline int counter_ = 0;
  std::string tmp_, cache_dir_;
  std::unique_ptr<ImageStore> store_;
};

std::string BigLayer(int files, size_t each, char seed) {
  std::vector<TarEntry> e{{"data", 'd'}};
  for (int i = 0; i < files; ++i) e.push_back({fmt::format("data/f{}", i), 'f', std::string(each, char(seed + i % 7))});
  return WriteTar(e);
}

TEST_F(LayerCacheTest, UnpacksOnceAndReuses) {
  auto ids = AddImage({WriteTar({{"bin", 'd'},
                                 {"bin/tool", 'f', "#!/bin/sh\necho hi\n", 04755, 0, 0},
                                 {"bin/alias", 'l', "tool"},
                                 {"bin/hard", 'h', "bin/tool"},
                                 {"home", 'd', "", 0700, 1234, 5678},
                                 {"home/notes", 'f', "mine", 0600, 1234, 5678}})});
  ASSERT_EQ(ids.size(), 1u);
  auto cache = OpenCache();
  ASSERT_TRUE(cache);
  std::string root;
  {
    auto lease = cache->Acquire(ids[0]);
    ASSERT_TRUE(lease.ok()) << lease.status().ToString();
    root = lease->root();
    EXPECT_EQ(root, cache_dir_ + "/" + ids[0].hex() + "/root");
    EXPECT_EQ(ReadFile(root + "/bin/tool"), "#!/bin/sh\necho hi\n");
    struct stat st;
    ASSERT_EQ(::lstat((root + "/bin/tool").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 04755u);
    EXPECT_EQ(st.st_nlink, 2u);  // bin/hard
    EXPECT_EQ(st.st_mtime, 1700000000);
    ASSERT_EQ(::lstat((root + "/home/notes").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 1234u);
    EXPECT_EQ(st.st_gid, 5678u);
    ASSERT_EQ(::lstat((root + "/home").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    EXPECT_EQ(st.st_mtime, 1700000000);  // directory mtimes survive the extraction
    EXPECT_EQ(fs::read_symlink(root + "/bin/alias"), "tool");
    EXPECT_TRUE(fs::exists(cache_dir_ + "/" + ids[0].hex() + "/marker.json"));
  }
  for (int i = 0; i < 3; ++i) {
    auto lease = cache->Acquire(ids[0]);
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(lease->root(), root);
  }
  EXPECT_EQ(cache->stats().unpacks, 1u);
  EXPECT_EQ(cache->stats().hits, 3u);
  EXPECT_TRUE(fs::is_empty(cache_dir_ + "/.tmp"));

  // A restarted daemon reuses it without unpacking.
  cache.reset();
  cache = OpenCache();
  EXPECT_EQ(cache->open_report().kept, 1u);
  auto lease = cache->Acquire(ids[0]);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(cache->stats().unpacks, 0u);
  EXPECT_EQ(ReadFile(lease->root() + "/home/notes"), "mine");
}

TEST_F(LayerCacheTest, LZ4LayersUnpackToo) {
  auto s = ImageStore::Open(tmp_ + "/store", ImageStoreOptions{.compression = Compression::kLz4});
  ASSERT_TRUE(s.ok());
  store_ = std::move(s).value();
  auto ids = AddImage({BigLayer(50, 10000, 'a')});
  ASSERT_EQ(store_->FindLayer(ids[0])->compression, Compression::kLz4);
  auto cache = OpenCache();
  auto lease = cache->Acquire(ids[0]);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  EXPECT_EQ(ReadFile(lease->root() + "/data/f49"), std::string(10000, char('a' + 49 % 7)));
}

TEST_F(LayerCacheTest, ConcurrentFirstUsesWaitOnOneUnpack) {
  auto ids = AddImage({BigLayer(2000, 4096, 'k')});
  auto cache = OpenCache();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  std::vector<std::string> roots(8);
  std::vector<LayerLease> leases(8);
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      auto lease = cache->Acquire(ids[0]);
      if (!lease.ok()) return;
      // Every lease sees the complete tree.
      if (ReadFile(lease->root() + "/data/f1999") == std::string(4096, char('k' + 1999 % 7))) ++ok;
      roots[i] = lease->root();
      leases[i] = std::move(lease).value();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(cache->stats().unpacks, 1u);
  EXPECT_EQ(cache->stats().hits, 7u);  // the 7 others, after waiting or not
  for (auto& r : roots) EXPECT_EQ(r, roots[0]);
  // Two caches (two daemons) on one directory: the second finds it done.
  auto other = LayerCache::Open(cache_dir_, store_.get(), {});
  ASSERT_TRUE(other.ok());
  auto l2 = (*other)->Acquire(ids[0]);
  ASSERT_TRUE(l2.ok());
  EXPECT_EQ((*other)->stats().unpacks, 0u);
}

TEST_F(LayerCacheTest, WhiteoutsBecomeOverlayWhiteouts) {
  auto ids = AddImage({WriteTar({{"d", 'd'},
                                 {"d/gone", 'f', "old"},
                                 {"d/keep", 'f', "kept"},
                                 {"o", 'd'},
                                 {"o/x", 'f', "x"},
                                 {"o/sub", 'd'},
                                 {"o/sub/y", 'f', "y"}}),
                       WriteTar({{"d", 'd'},
                                 {"d/.wh.gone", 'f', ""},
                                 {"o", 'd'},
                                 {"o/.wh..wh..opq", 'f', ""},
                                 {"o/new", 'f', "new"}})});
  ASSERT_EQ(ids.size(), 2u);
  auto cache = OpenCache();
  auto lower = cache->Acquire(ids[0]);
  auto upper = cache->Acquire(ids[1]);
  ASSERT_TRUE(lower.ok() && upper.ok());
  // The stored form is overlayfs', not OCI's.
  struct stat st;
  ASSERT_EQ(::lstat((upper->root() + "/d/gone").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  EXPECT_FALSE(fs::exists(upper->root() + "/d/.wh.gone"));
  EXPECT_FALSE(fs::exists(upper->root() + "/o/.wh..wh..opq"));
  char v[8] = {};
  ASSERT_EQ(::getxattr((upper->root() + "/o").c_str(), "trusted.overlay.opaque", v, sizeof(v)), 1);
  EXPECT_EQ(v[0], 'y');

  std::string mnt = tmp_ + "/mnt";
  fs::create_directories(mnt);
  std::string opts = "lowerdir=" + upper->root() + ":" + lower->root();
  if (::mount("overlay", mnt.c_str(), "overlay", MS_RDONLY, opts.c_str()) != 0)
    GTEST_SKIP() << "cannot mount overlayfs here: " << std::strerror(errno);
  EXPECT_FALSE(fs::exists(mnt + "/d/gone"));
  EXPECT_EQ(ReadFile(mnt + "/d/keep"), "kept");
  EXPECT_FALSE(fs::exists(mnt + "/o/x"));
  EXPECT_FALSE(fs::exists(mnt + "/o/sub"));
  EXPECT_EQ(ReadFile(mnt + "/o/new"), "new");
  EXPECT_EQ(::umount2(mnt.c_str(), 0), 0);
}

TEST_F(LayerCacheTest, LruEvictionRespectsLeases) {
  auto a = AddImage({BigLayer(10, 100000, 'a')})[0];
  auto b = AddImage({BigLayer(10, 100000, 'b')})[0];
  auto c = AddImage({BigLayer(10, 100000, 'c')})[0];
  uint64_t size = store_->FindLayer(a)->uncompressed_size;
  auto cache = OpenCache({.max_bytes = size * 5 / 2});
  auto la = cache->Acquire(a);  // held throughout: oldest, but leased
  ASSERT_TRUE(la.ok());
  { ASSERT_TRUE(cache->Acquire(b).ok()); }
  { ASSERT_TRUE(cache->Acquire(c).ok()); }  // over the bound: b (LRU, unleased) goes
  EXPECT_TRUE(cache->Contains(a));
  EXPECT_FALSE(cache->Contains(b));
  EXPECT_TRUE(cache->Contains(c));
  EXPECT_TRUE(fs::exists(la->root() + "/data/f9"));
  EXPECT_FALSE(fs::exists(cache_dir_ + "/" + b.hex()));
  EXPECT_EQ(cache->stats().evictions, 1u);
  EXPECT_LE(cache->stats().bytes, size * 5 / 2);

  // Use ends at release: once a is released, c (released earlier) is the least
  // recently used, and b coming back evicts it.
  la->Release();
  { ASSERT_TRUE(cache->Acquire(b).ok()); }
  EXPECT_TRUE(cache->Contains(a));
  EXPECT_TRUE(cache->Contains(b));
  EXPECT_FALSE(cache->Contains(c));
  EXPECT_EQ(cache->stats().unpacks, 4u);

  // Everything leased: the bound is exceeded rather than a leased layer removed.
  auto l1 = cache->Acquire(a), l2 = cache->Acquire(b), l3 = cache->Acquire(c);
  ASSERT_TRUE(l1.ok() && l2.ok() && l3.ok());
  EXPECT_TRUE(fs::exists(l1->root() + "/data/f0") && fs::exists(l2->root() + "/data/f0") &&
              fs::exists(l3->root() + "/data/f0"));
}

TEST_F(LayerCacheTest, RestartRemovesPartialAndInvalidKeepsIntact) {
  auto a = AddImage({BigLayer(3, 1000, 'a')})[0];
  auto b = AddImage({BigLayer(3, 1000, 'b')})[0];
  auto c = AddImage({BigLayer(3, 1000, 'c')})[0];
  {
    auto cache = OpenCache();
    for (auto& d : {a, b, c}) ASSERT_TRUE(cache->Acquire(d).ok());
  }
  // A crash mid-unpack leaves a temp dir; a marker gets corrupted; c's blob is lost.
  fs::create_directories(cache_dir_ + "/.tmp/" + a.hex() + ".crashed/root/data");
  std::ofstream(cache_dir_ + "/.tmp/" + a.hex() + ".crashed/root/data/f0") << "partial";
  std::ofstream(cache_dir_ + "/" + b.hex() + "/marker.json", std::ios::trunc) << "{\"diff_id\": \"garbage";
  fs::remove(store_->blobs().BlobPath(store_->FindLayer(c)->blob));

  auto cache = OpenCache();
  EXPECT_EQ(cache->open_report().removed_partial, 1u);
  EXPECT_EQ(cache->open_report().removed_invalid, 2u);
  EXPECT_EQ(cache->open_report().kept, 1u);
  EXPECT_TRUE(fs::is_empty(cache_dir_ + "/.tmp"));
  EXPECT_TRUE(cache->Contains(a));
  EXPECT_FALSE(fs::exists(cache_dir_ + "/" + b.hex()));
  EXPECT_FALSE(fs::exists(cache_dir_ + "/" + c.hex()));
  auto la = cache->Acquire(a);
  ASSERT_TRUE(la.ok());
  EXPECT_EQ(cache->stats().unpacks, 0u);
  auto lb = cache->Acquire(b);  // unpacked again from the store
  ASSERT_TRUE(lb.ok());
  EXPECT_EQ(cache->stats().unpacks, 1u);
  EXPECT_EQ(ReadFile(lb->root() + "/data/f2"), std::string(1000, char('b' + 2)));
  auto lc = cache->Acquire(c);
  EXPECT_FALSE(lc.ok());
}

TEST_F(LayerCacheTest, CorruptBlobFailsAndLeavesNothing) {
  auto a = AddImage({BigLayer(100, 5000, 'z')})[0];
  std::string blob = store_->blobs().BlobPath(store_->FindLayer(a)->blob);
  std::string data = ReadFile(blob);
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(blob, std::ios::trunc | std::ios::binary) << data.substr(0, data.size() / 2);
  auto cache = OpenCache();
  auto lease = cache->Acquire(a);
  ASSERT_FALSE(lease.ok());
  EXPECT_EQ(lease.status().code(), Code::kDataLoss) << lease.status().ToString();
  EXPECT_FALSE(cache->Contains(a));
  EXPECT_FALSE(fs::exists(cache_dir_ + "/" + a.hex()));
  EXPECT_TRUE(fs::is_empty(cache_dir_ + "/.tmp"));
}

// A hard link to a symlink is a second name of the symlink: writing through it is
// refused at import like writing through the symlink itself.
TEST_F(LayerCacheTest, ImportRefusesWritesThroughAHardLinkToASymlink) {
  auto txn = store_->Begin();
  ASSERT_TRUE(txn.ok());
  std::string tar = WriteTar({{"s", 'l', "/etc"}, {"h", 'h', "s"}, {"h/passwd", 'f', "root::0:0::/:/bin/sh\n"}});
  auto l = (*txn)->AddLayer(SourceFromString(tar), LayerHint{"hostile", {}, {}});
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), Code::kInvalidArgument) << l.status().ToString();
  EXPECT_NE(l.status().message().find("through symlink 'h'"), std::string::npos) << l.status().message();
}

// The store is a shared filesystem: a stored blob may be replaced behind the
// import's back, and the unpack writes entries before the end of the stream proves
// the diff_id wrong. Each hostile archive, swapped in for a stored layer's blob,
// is refused at unpack with nothing written outside the layer's root and nothing
// left in the cache.
TEST_F(LayerCacheTest, TamperedBlobWithHostileEntriesWritesNothingOutside) {
  const std::string outside = tmp_ + "/outside";
  fs::create_directories(outside);
  const std::vector<std::vector<TarEntry>> hostile = {
      {{"d", 'd'}, {"d/../../escaped", 'f', "x"}},                       // .. climbing out
      {{"/" + outside.substr(1) + "/abs", 'f', "x"}},                    // absolute path
      {{"link", 'l', outside}, {"link/through", 'f', "x"}},            // write through a symlink
      {{"s", 'l', outside}, {"h", 'h', "s"}, {"h/through", 'f', "x"}},  // ... through a hard link to it
      {{"esc", 'l', "../../../.."}},                                     // symlink escaping the root
      {{"hl", 'h', "/etc/passwd"}},                                      // hard link to outside
      {{"dev", 'c', ""}},                                                // device node
  };
  for (size_t i = 0; i < hostile.size(); ++i) {
    SCOPED_TRACE(fmt::format("hostile archive {}", i));
    auto id = AddImage({BigLayer(3, 100, char('a' + i))})[0];
    std::string blob = store_->blobs().BlobPath(store_->FindLayer(id)->blob);
    std::string tar = WriteTar(hostile[i]);
    std::string z(ZSTD_compressBound(tar.size()), '\0');
    z.resize(ZSTD_compress(z.data(), z.size(), tar.data(), tar.size(), 3));
    fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
    std::ofstream(blob, std::ios::trunc | std::ios::binary) << z;
    auto cache = OpenCache();
    auto lease = cache->Acquire(id);
    ASSERT_FALSE(lease.ok()) << "a hostile layer was materialized";
    EXPECT_TRUE(lease.status().code() == Code::kInvalidArgument || lease.status().code() == Code::kDataLoss)
        << lease.status().ToString();
    EXPECT_TRUE(fs::is_empty(outside)) << fs::begin(fs::directory_iterator(outside))->path();
    EXPECT_FALSE(fs::exists(tmp_ + "/escaped"));
    EXPECT_FALSE(cache->Contains(id));
    EXPECT_FALSE(fs::exists(cache_dir_ + "/" + id.hex()));
    EXPECT_TRUE(fs::is_empty(cache_dir_ + "/.tmp"));
  }
}

// What a root filesystem needs survives the unpack: setuid/setgid after chown,
// security.* and user.* xattrs but never trusted.*, a fifo, a directory listed after
// its contents, an entry replaced by a later one of the same layer, and a parent
// the tar does not list.
TEST_F(LayerCacheTest, UnpackKeepsModesOwnersXattrsAndLaterEntriesWin) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  std::vector<char> buf(1 << 20);
  size_t used = 0;
  archive_write_open_memory(a, buf.data(), buf.size(), &used);
  auto add = [&](const char* path, mode_t type, int perm, int uid, const std::string& data,
                 std::vector<std::pair<std::string, std::string>> xattrs = {}) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, perm);
    archive_entry_set_uid(e, uid);
    archive_entry_set_gid(e, uid);
    archive_entry_set_mtime(e, 1600000000, 0);
    archive_entry_set_size(e, static_cast<int64_t>(data.size()));
    for (auto& [k, v] : xattrs) archive_entry_xattr_add_entry(e, k.c_str(), v.data(), v.size());
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK) << archive_error_string(a);
    if (!data.empty()) archive_write_data(a, data.data(), data.size());
    archive_entry_free(e);
  };
  add("usr/bin/su", AE_IFREG, 04755, 0, "su", {{"user.note", "kept"}, {"trusted.overlay.opaque", "y"}});
  add("usr/bin/wall", AE_IFREG, 02755, 1000, "wall");
  add("run/pipe", AE_IFIFO, 0620, 0, "");
  add("usr/bin", AE_IFDIR, 0711, 0, "");  // after its contents
  add("etc/motd", AE_IFREG, 0644, 0, "first");
  add("etc/motd", AE_IFREG, 0600, 0, "second");
  add("etc/dir", AE_IFREG, 0644, 0, "a file first");
  add("etc/dir", AE_IFDIR, 0750, 0, "");
  add("etc/dir/inside", AE_IFREG, 0644, 0, "in");
  add("srv", AE_IFDIR, 0755, 1000, "");
  add("srv", AE_IFDIR, 0755, 0, "");  // the later entry's owner wins
  archive_write_close(a);
  archive_write_free(a);
  auto ids = AddImage({std::string(buf.data(), used)});
  ASSERT_EQ(ids.size(), 1u);
  auto cache = OpenCache();
  auto lease = cache->Acquire(ids[0]);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  const std::string r = lease->root();
  struct stat st;
  ASSERT_EQ(::lstat((r + "/usr/bin/su").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
  ASSERT_EQ(::lstat((r + "/usr/bin/wall").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 02755u);
  EXPECT_EQ(st.st_uid, 1000u);
  EXPECT_EQ(st.st_gid, 1000u);
  char v[16] = {};
  EXPECT_EQ(::getxattr((r + "/usr/bin/su").c_str(), "user.note", v, sizeof(v)), 4);
  EXPECT_EQ(std::string(v, 4), "kept");
  EXPECT_LT(::getxattr((r + "/usr/bin/su").c_str(), "trusted.overlay.opaque", v, sizeof(v)), 0);
  ASSERT_EQ(::lstat((r + "/run/pipe").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0620u);
  ASSERT_EQ(::lstat((r + "/usr/bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0711u);
  EXPECT_EQ(st.st_mtime, 1600000000);
  ASSERT_EQ(::lstat((r + "/usr").c_str(), &st), 0);  // not in the tar: made 0755
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(ReadFile(r + "/etc/motd"), "second");
  ASSERT_EQ(::lstat((r + "/etc/motd").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(::lstat((r + "/etc/dir").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_EQ(ReadFile(r + "/etc/dir/inside"), "in");
  ASSERT_EQ(::lstat((r + "/srv").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
}


// ---- layers unpacked while they stream (a registry pull's one pass) ----

// Every entry under `root`: path, type and mode, owner, size, mtime, link
// count, device, link target, contents' digest and the overlay xattr.
std::vector<std::string> Listing(const std::string& root) {
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    const std::string path = it->path().string();
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    // A whiteout (char 0:0) is made at unpack time and overlayfs ignores its
    // mtime, so two unpacks a second apart may differ there: not compared.
    const bool whiteout = S_ISCHR(st.st_mode) && st.st_rdev == 0;
    std::string what = fmt::format("{} mode={:o} owner={}:{} mtime={} nlink={}", path.substr(root.size()), st.st_mode,
                                   st.st_uid, st.st_gid, whiteout ? 0 : st.st_mtime, S_ISDIR(st.st_mode) ? 0 : st.st_nlink);
    if (S_ISREG(st.st_mode)) what += fmt::format(" size={} sha={}", st.st_size, Sha256::Of(ReadFile(path)).hex());
    if (S_ISLNK(st.st_mode)) what += " -> " + fs::read_symlink(path).string();
    if (S_ISCHR(st.st_mode)) what += fmt::format(" dev={}:{}", major(st.st_rdev), minor(st.st_rdev));
    char v[16] = {};
    if (::lgetxattr(path.c_str(), "trusted.overlay.opaque", v, sizeof v - 1) > 0) what += fmt::format(" opaque={}", v);
    out.push_back(what);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A layer with what an image's layers hold: modes incl. setuid and sticky,
// owners, links, a FIFO, a whiteout, an opaque directory, and a file over the
// decompressor's 1 MiB chunks. Every directory is listed (one made implicitly
// gets the time of the unpack).
std::string RichLayer(bool gzip) {
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  return WriteTar({{"bin", 'd'},
                   {"bin/tool", 'f', "#!/bin/sh\necho hi\n", 04755, 0, 0},
                   {"bin/alias", 'l', "tool"},
                   {"bin/abs", 'l', "/etc/passwd"},
                   {"bin/hard", 'h', "bin/tool"},
                   {"home", 'd', "", 0700, 1234, 5678},
                   {"home/notes", 'f', "mine", 0600, 1234, 5678},
                   {"home/pipe", 'p', "", 0640, 1234, 5678},
                   {"usr", 'd'},
                   {"usr/lib", 'd'},
                   {"usr/lib/big.so", 'f', big, 0755},
                   {"etc", 'd', "", 0755},
                   {"etc/.wh.gone", 'f', ""},
                   {"opt", 'd'},
                   {"opt/.wh..wh..opq", 'f', ""},
                   {"opt/kept", 'f', "kept"},
                   {"tmp", 'd', "", 01777}},
                  gzip);
}

class StreamedLayerTest : public LayerCacheTest {
 protected:
  // A second store and cache: the pull's side.
  void SetUp() override {
    LayerCacheTest::SetUp();
    auto s = ImageStore::Open(tmp_ + "/pulled-store");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    pulled_ = std::move(s).value();
    auto c = LayerCache::Open(tmp_ + "/pulled-cache", pulled_.get(), LayerCacheOptions{.sync = false});
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    pulled_cache_ = std::move(c).value();
  }

  // What pull.cc does with one layer: unpack while ingesting, keep the
  // compressed source, commit the store, then the cache.
  Result<StoredLayer> StreamIn(const ByteSource& source, const Digest& source_digest, const Digest& diff_id) {
    PADDOCK_ASSIGN_OR_RETURN(auto stream, pulled_cache_->BeginStream(diff_id));
    if (!stream) return Error(Code::kInternal, "BeginStream gave no directory");
    PADDOCK_ASSIGN_OR_RETURN(auto txn, pulled_->Begin());
    UnpackStats stats;
    AddLayerOptions add{.keep_compressed_source = true, .unpack_into = stream->root(), .unpacked = &stats};
    PADDOCK_ASSIGN_OR_RETURN(StoredLayer layer,
                             txn->AddLayer(source, LayerHint{"pulled layer", source_digest, diff_id}, add));
    PADDOCK_RETURN_IF_ERROR(txn->AddImage(MakeOciConfig({}, {diff_id}), {layer}, {"pulled:1"}).status());
    PADDOCK_RETURN_IF_ERROR(txn->Commit());
    PADDOCK_RETURN_IF_ERROR(stream->Commit(layer, stats));
    return layer;
  }

  // Nothing of a failed stream anywhere: no cached layer, no partial tree, no
  // blob, no layer record, no staging.
  void NothingLeft() {
    for (const auto& d : fs::directory_iterator(tmp_ + "/pulled-cache"))
      EXPECT_TRUE(d.path().filename() == ".tmp" || d.path().filename() == ".locks") << d.path();
    EXPECT_TRUE(fs::is_empty(tmp_ + "/pulled-cache/.tmp"));
    for (const char* sub : {"blobs/sha256", "layers/sha256", "staging", "images"}) {
      std::string d = tmp_ + "/pulled-store/" + sub;
      EXPECT_TRUE(!fs::exists(d) || fs::is_empty(d)) << d;
    }
  }

  std::unique_ptr<ImageStore> pulled_;
  std::unique_ptr<LayerCache> pulled_cache_;
};

TEST_F(StreamedLayerTest, StreamedUnpackMakesTheTreeMaterializeMakes) {
  const std::string tar = RichLayer(false), gz = RichLayer(true);
  ASSERT_NE(gz.substr(0, 2), tar.substr(0, 2));
  const Digest diff_id = Sha256::Of(tar);

  // The old way: stored (recompressed), then materialized from the store.
  auto ids = AddImage({gz});
  ASSERT_EQ(ids, std::vector<Digest>{diff_id});
  auto cache = OpenCache();
  auto lease = cache->Acquire(diff_id);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();

  // The pull's way: one pass, the gzip blob kept as it came.
  auto layer = StreamIn(SourceFromString(gz), Sha256::Of(gz), diff_id);
  ASSERT_TRUE(layer.ok()) << layer.status().ToString();
  EXPECT_EQ(layer->compression, Compression::kGzip);
  EXPECT_EQ(layer->blob, Sha256::Of(gz));
  EXPECT_EQ(pulled_->blobs().Read(layer->blob, 1 << 30).value(), gz);  // byte for byte
  EXPECT_TRUE(pulled_cache_->Contains(diff_id));
  EXPECT_EQ(pulled_cache_->stats().unpacks, 1u);
  auto streamed = pulled_cache_->Acquire(diff_id);  // ready: no second unpack
  ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();
  EXPECT_EQ(pulled_cache_->stats().unpacks, 1u);
  EXPECT_EQ(pulled_cache_->stats().hits, 1u);
  EXPECT_TRUE(fs::is_empty(tmp_ + "/pulled-cache/.tmp"));

  const auto want = Listing(lease->root());
  ASSERT_GT(want.size(), 10u);
  EXPECT_EQ(Listing(streamed->root()), want);

  // The kept gzip blob materializes to the same tree too (an evicted layer, or
  // another node's cache over the same store), and a restarted cache keeps the
  // streamed layer (its marker names the store's blob).
  auto other = LayerCache::Open(tmp_ + "/other-cache", pulled_.get(), LayerCacheOptions{.sync = false});
  ASSERT_TRUE(other.ok());
  auto again = (*other)->Acquire(diff_id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(Listing(again->root()), want);
  streamed->Release();
  pulled_cache_.reset();
  auto reopened = LayerCache::Open(tmp_ + "/pulled-cache", pulled_.get(), LayerCacheOptions{.sync = false});
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->open_report().kept, 1u);
  EXPECT_EQ((*reopened)->open_report().removed_invalid, 0u);
}

TEST_F(StreamedLayerTest, ALayerFailingItsDigestMidStreamLeavesNothingAndTheNextPullWorks) {
  const std::string tar = RichLayer(false), gz = RichLayer(true);
  const Digest diff_id = Sha256::Of(tar), digest = Sha256::Of(gz);

  // The download stops mid-body as LayerDownload does when the bytes are not the
  // digest's: files have been written by then.
  size_t pos = 0;
  ByteSource cut = [&](void* buf, size_t n) -> Result<size_t> {
    if (pos > gz.size() / 2) return Error(Code::kDataLoss, "layer {}: does not match its digest", digest.str());
    size_t take = std::min<size_t>({n, 64 << 10, gz.size() - pos});
    std::memcpy(buf, gz.data() + pos, take);
    pos += take;
    return take;
  };
  auto r = StreamIn(cut, digest, diff_id);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("does not match its digest"));
  NothingLeft();

  // Whole, but not the bytes the digest names: found at the end, after every
  // entry was unpacked.
  r = StreamIn(SourceFromString(gz), Sha256::Of("something else"), diff_id);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("not the"));
  NothingLeft();

  // A flipped bit in the middle of the gzip stream.
  std::string bad = gz;
  bad[bad.size() / 2] ^= 0x10;
  r = StreamIn(SourceFromString(bad), digest, diff_id);
  ASSERT_FALSE(r.ok());
  NothingLeft();
  EXPECT_FALSE(pulled_cache_->Contains(diff_id));

  auto ok = StreamIn(SourceFromString(gz), digest, diff_id);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  auto lease = pulled_cache_->Acquire(diff_id);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(ReadFile(lease->root() + "/home/notes"), "mine");
}

TEST_F(StreamedLayerTest, AHostileLayerIsRefusedDuringTheStreamWithNothingLeft) {
  for (const auto& [entries, needle] : std::vector<std::pair<std::vector<TarEntry>, std::string>>{
           {{{"ok", 'd'}, {"ok/file", 'f', "fine"}, {"ok/../../escaped", 'f', "owned"}}, "escaped"},
           {{{"dev", 'd'}, {"dev/zero", 'f', "x"}, {"dev/sda", 'c'}}, "dev/sda"},
           {{{"link", 'l', "../.."}, {"link/x", 'f', "x"}}, "link"}}) {
    const std::string tar = WriteTar(entries), gz = WriteTar(entries, true);
    auto r = StreamIn(SourceFromString(gz), Sha256::Of(gz), Sha256::Of(tar));
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
    EXPECT_THAT(r.status().message(), ::testing::HasSubstr(needle));
    NothingLeft();
    EXPECT_FALSE(fs::exists(tmp_ + "/escaped"));
    EXPECT_FALSE(fs::exists(tmp_ + "/pulled-cache/escaped"));
  }
}

// One gzip member of `data` (zlib's gzip wrapper).
std::string GzipMember(std::string_view data) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&z, data.size()) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

TEST_F(StreamedLayerTest, AKeptGzipBlobOfSeveralMembersMaterializesToo) {
  // Concatenated members are one valid gzip stream; padding after the last is
  // ignored by libarchive (the ingest), so the materializer must agree.
  const std::string tar = RichLayer(false);
  const size_t cut = tar.size() / 3;
  const std::string gz = GzipMember(tar.substr(0, cut)) + GzipMember(tar.substr(cut)) + std::string(512, '\0');
  const Digest diff_id = Sha256::Of(tar);
  auto layer = StreamIn(SourceFromString(gz), Sha256::Of(gz), diff_id);
  ASSERT_TRUE(layer.ok()) << layer.status().ToString();
  ASSERT_EQ(layer->compression, Compression::kGzip);
  auto streamed = pulled_cache_->Acquire(diff_id);
  ASSERT_TRUE(streamed.ok());
  auto other = LayerCache::Open(tmp_ + "/other-cache", pulled_.get(), LayerCacheOptions{.sync = false});
  ASSERT_TRUE(other.ok());
  auto again = (*other)->Acquire(diff_id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(Listing(again->root()), Listing(streamed->root()));
  std::string tar_back;
  ASSERT_TRUE(pulled_->StreamLayerTar(*layer, [&](const void* d, size_t n) {
    tar_back.append(static_cast<const char*>(d), n);
    return Status::Ok();
  }).ok());
  EXPECT_EQ(tar_back, tar);
}

TEST_F(StreamedLayerTest, ALayerCachedOrBeingUnpackedIsNotStreamedAgain) {
  const std::string tar = RichLayer(false), gz = RichLayer(true);
  const Digest diff_id = Sha256::Of(tar);
  auto first = pulled_cache_->BeginStream(diff_id);
  ASSERT_TRUE(first.ok() && *first);
  // Another stream of the same layer while the first holds its lock: none.
  auto second = pulled_cache_->BeginStream(diff_id);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(*second);
  first->reset();
  EXPECT_TRUE(fs::is_empty(tmp_ + "/pulled-cache/.tmp"));
  ASSERT_TRUE(StreamIn(SourceFromString(gz), Sha256::Of(gz), diff_id).ok());
  auto third = pulled_cache_->BeginStream(diff_id);  // cached now
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(*third);
}

// Usable at once, durable later: a streamed layer committed into a syncing
// cache is leasable before its marker exists; while it settles nothing evicts
// it (here or from another cache over the same directory); the marker comes
// after the sync, and then the layer is an ordinary, evictable one.
TEST_F(StreamedLayerTest, AStreamedLayerIsLeasableBeforeItIsDurableAndNeverEvictedWhileSettling) {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  LayerCacheOptions o{.max_bytes = 1, .sync = true};  // anything unleased and settled is evicted
  o.before_settle = [&] {  // timing injection: hold the syncer
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return open; });
  };
  auto c = LayerCache::Open(tmp_ + "/settle-cache", pulled_.get(), o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  pulled_cache_ = std::move(c).value();
  const std::string tar = RichLayer(false), gz = RichLayer(true);
  const Digest diff_id = Sha256::Of(tar);
  const std::string layer_dir = tmp_ + "/settle-cache/" + diff_id.hex();
  auto layer = StreamIn(SourceFromString(gz), Sha256::Of(gz), diff_id);
  ASSERT_TRUE(layer.ok()) << layer.status().ToString();

  EXPECT_EQ(pulled_cache_->stats().settling, 1u);
  EXPECT_TRUE(pulled_cache_->Contains(diff_id));
  EXPECT_TRUE(fs::is_directory(layer_dir + "/root"));
  EXPECT_FALSE(fs::exists(layer_dir + "/marker.json"));  // not durable yet
  ASSERT_TRUE(pulled_cache_->Trim().ok());               // over the bound, unleased: still kept
  EXPECT_TRUE(fs::is_directory(layer_dir + "/root"));
  auto lease = pulled_cache_->Acquire(diff_id);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  EXPECT_EQ(ReadFile(lease->root() + "/home/notes"), "mine");
  EXPECT_EQ(pulled_cache_->stats().unpacks, 1u);
  {
    // Another cache over the directory (as another process would open it)
    // neither removes the marker-less tree nor takes it.
    auto other = LayerCache::Open(tmp_ + "/settle-cache", pulled_.get(), LayerCacheOptions{.sync = false});
    ASSERT_TRUE(other.ok());
    EXPECT_EQ((*other)->open_report().removed_invalid, 0u);
    EXPECT_FALSE((*other)->Contains(diff_id));
    EXPECT_TRUE(fs::is_directory(layer_dir + "/root"));
  }

  {
    std::lock_guard<std::mutex> l(mu);
    open = true;
  }
  cv.notify_all();
  for (int i = 0; i < 500 && pulled_cache_->stats().settling > 0; ++i) usleep(10000);
  EXPECT_EQ(pulled_cache_->stats().settling, 0u);
  EXPECT_TRUE(fs::exists(layer_dir + "/marker.json"));
  ASSERT_TRUE(pulled_cache_->Trim().ok());  // leased: kept
  EXPECT_TRUE(fs::is_directory(layer_dir + "/root"));
  // The lease holds the layer's lock shared now, as any lease does: another
  // cache cannot take it exclusively.
  EXPECT_EQ(::access(layer_dir.c_str(), F_OK), 0);
  lease->Release();  // last lease of a settled layer over the bound: evicted
  EXPECT_FALSE(fs::exists(layer_dir));
  EXPECT_EQ(pulled_cache_->stats().evictions, 1u);
}

// The cache's destruction waits for the syncer: every committed streamed
// layer has its marker, and a reopened cache keeps it.
TEST_F(StreamedLayerTest, ASettlingLayerIsDurableOnceTheCacheIsGone) {
  auto c = LayerCache::Open(tmp_ + "/settle-cache", pulled_.get(), LayerCacheOptions{.sync = true});
  ASSERT_TRUE(c.ok());
  pulled_cache_ = std::move(c).value();
  const std::string tar = RichLayer(false), gz = RichLayer(true);
  const Digest diff_id = Sha256::Of(tar);
  ASSERT_TRUE(StreamIn(SourceFromString(gz), Sha256::Of(gz), diff_id).ok());
  pulled_cache_.reset();
  EXPECT_TRUE(fs::exists(tmp_ + "/settle-cache/" + diff_id.hex() + "/marker.json"));
  auto reopened = LayerCache::Open(tmp_ + "/settle-cache", pulled_.get(), LayerCacheOptions{.sync = true});
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->open_report().kept, 1u);
  auto lease = (*reopened)->Acquire(diff_id);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ((*reopened)->stats().unpacks, 0u);
}

// A crash after the layer was handed out but before its marker was durable:
// the restarted cache removes the tree and unpacks the layer again from the
// store. The crash is a child process that dies (timing injection) as its
// syncer starts.
TEST_F(StreamedLayerTest, ACrashBeforeTheMarkerRedoesTheLayerAfterRestart) {
  const std::string tar = RichLayer(false), gz = RichLayer(true);
  const Digest diff_id = Sha256::Of(tar);
  const std::string dir = tmp_ + "/crash-cache";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    LayerCacheOptions o{.sync = true};
    o.before_settle = [] { _exit(0); };
    auto c = LayerCache::Open(dir, pulled_.get(), o);
    if (!c.ok()) _exit(2);
    pulled_cache_ = std::move(c).value();
    if (!StreamIn(SourceFromString(gz), Sha256::Of(gz), diff_id).ok()) _exit(3);
    if (!pulled_cache_->Acquire(diff_id).ok()) _exit(4);  // handed out before the marker
    for (;;) pause();  // the syncer ends the process
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_TRUE(fs::is_directory(dir + "/" + diff_id.hex() + "/root"));
  ASSERT_FALSE(fs::exists(dir + "/" + diff_id.hex() + "/marker.json"));

  auto store = ImageStore::Open(tmp_ + "/pulled-store");  // what the child committed
  ASSERT_TRUE(store.ok());
  auto cache = LayerCache::Open(dir, store->get(), LayerCacheOptions{.sync = true});
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ((*cache)->open_report().removed_invalid, 1u);
  EXPECT_EQ((*cache)->open_report().kept, 0u);
  auto lease = (*cache)->Acquire(diff_id);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  EXPECT_EQ((*cache)->stats().unpacks, 1u);  // redone from the store
  EXPECT_EQ(ReadFile(lease->root() + "/home/notes"), "mine");
}

}  // namespace
}  // namespace paddock::storage
