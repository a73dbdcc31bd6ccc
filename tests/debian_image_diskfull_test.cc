// A full disk during import: the store lives on a small tmpfs mounted by the test,
// the Debian python3 image (two real layers) is imported with too little space
// left, first so that the first layer cannot be staged, then so that the first
// fits and the second does not, then so that both are staged but the commit's
// small files would not fit. Each time: RESOURCE_EXHAUSTED naming what was
// being written, no image, name or layer record, staging empty; after space is
// freed the same store imports the image and gc/verify find it consistent.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include <gtest/gtest.h>

#include "storage/image_import.h"
#include "storage/image_store.h"
#include "tests/support/fill_fs.h"
#include "tests/support/debian_image.h"

namespace fs = std::filesystem;

namespace paddock::storage {
namespace {

class DebianDiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = testing::EnsureDebianImage();
    ASSERT_TRUE(a.ok()) << "the Debian python3 test image could not be built: " << a.status().ToString();
    archive_ = *a;
    tmp_ = fmt::format("/var/tmp/paddock-debian-diskfull-{}", getpid());
    fs::remove_all(tmp_);
    mnt_ = tmp_ + "/fs";
    fs::create_directories(mnt_);
    ASSERT_EQ(::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=1g,mode=0755"), 0) << strerror(errno);
    mounted_ = true;
    // What the image needs when stored: learn it from an import into a roomy store.
    auto ref = ImageStore::Open(mnt_ + "/reference").value();
    auto r = ImportImage(*ref, archive_);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    Image img = ref->Get(r->images[0].str()).value();
    ASSERT_EQ(img.manifest.layers.size(), 2u);
    layer_bytes_[0] = img.manifest.layers[0].size;
    layer_bytes_[1] = img.manifest.layers[1].size;
    // What staging takes on the tmpfs: the layer blobs and their indexes, in pages.
    for (const StoredLayer& l : img.manifest.layers)
      for (uint64_t n : {l.size, ref->blobs().Size(l.index).value()}) staged_pages_bytes_ += (n + 4095) / 4096 * 4096;
    total_ = r->bytes_committed;
    fs::remove_all(mnt_ + "/reference");
    // Then shrink the tmpfs to what the image needs plus a margin.
    std::string opts = fmt::format("size={}", total_ + (32ull << 20));
    ASSERT_EQ(::mount(nullptr, mnt_.c_str(), nullptr, MS_REMOUNT, opts.c_str()), 0) << strerror(errno);
    root_ = mnt_ + "/store";
    store_ = ImageStore::Open(root_).value();
  }
  void TearDown() override {
    store_.reset();
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
    fs::remove_all(tmp_);
  }

  uint64_t FreeBytes() { return testing::FreeBytesAt(mnt_); }
  void FillLeaving(uint64_t leave) { ASSERT_TRUE(testing::FillLeaving(mnt_, leave)) << "free: " << FreeBytes(); }
  void FreeSpace() { fs::remove(mnt_ + "/filler"); }

  size_t CountFiles(const std::string& sub) {
    size_t n = 0;
    if (!fs::exists(root_ + "/" + sub)) return 0;
    for (auto& e : fs::recursive_directory_iterator(root_ + "/" + sub))
      if (e.is_regular_file()) ++n;
    return n;
  }
  void ExpectFailedCleanly(const Result<ImportResult>& r, const std::string& stage, bool staging = true) {
    ASSERT_FALSE(r.ok()) << stage << ": import succeeded on a full disk";
    std::cout << "  out of space in the " << stage << ": " << r.status().ToString() << "\n";
    EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << stage << ": " << r.status().ToString();
    const std::string& m = r.status().message();
    if (staging) {
      EXPECT_NE(m.find("No space left on device"), std::string::npos) << m;
      EXPECT_NE(m.find("layer blobs/sha256/"), std::string::npos) << "does not name the layer: " << m;
      EXPECT_NE(m.find("staging"), std::string::npos) << "does not name the file being written: " << m;
    } else {
      EXPECT_NE(m.find("not enough space left in " + root_ + " to commit"), std::string::npos) << m;
    }
    EXPECT_NE(m.find(archive_), std::string::npos) << "does not name the archive: " << m;
    // Nothing half-visible: no image, no name, no layer record, nothing staged.
    EXPECT_EQ(CountFiles("images"), 0u) << stage;
    EXPECT_EQ(CountFiles("refs"), 0u) << stage;
    EXPECT_EQ(CountFiles("layers"), 0u) << stage;
    EXPECT_EQ(CountFiles("blobs"), 0u) << stage;
    EXPECT_TRUE(fs::is_empty(root_ + "/staging")) << stage;
    auto list = store_->List();
    ASSERT_TRUE(list.ok());
    EXPECT_TRUE(list->empty()) << stage;
    EXPECT_FALSE(store_->Resolve("debian-python3:12").ok()) << stage;
  }

  std::string archive_, tmp_, mnt_, root_;
  bool mounted_ = false;
  uint64_t layer_bytes_[2] = {0, 0};
  uint64_t total_ = 0;
  uint64_t staged_pages_bytes_ = 0;
  std::unique_ptr<ImageStore> store_;
};

TEST_F(DebianDiskFullTest, ImportOutOfSpaceLeavesTheStoreConsistentAndALaterImportSucceeds) {
  // 1. Space for a fraction of the first layer.
  FillLeaving(layer_bytes_[0] / 3);
  auto r = ImportImage(*store_, archive_, {{"debian-python3:12"}});
  ExpectFailedCleanly(r, "first layer");
  FreeSpace();

  // 2. Space for the first layer (and its index), not the second.
  FillLeaving(layer_bytes_[0] + layer_bytes_[1] / 3);
  r = ImportImage(*store_, archive_, {{"debian-python3:12"}});
  ExpectFailedCleanly(r, "second layer");
  FreeSpace();

  // 3. Room to stage both layers but not for the commit's small files: refused
  //    before anything becomes visible.
  FillLeaving(staged_pages_bytes_ + (96 << 10));
  r = ImportImage(*store_, archive_, {{"debian-python3:12"}});
  ExpectFailedCleanly(r, "commit", /*staging=*/false);
  FreeSpace();

  // 4. Space freed: the same store takes the image, and it is consistent.
  r = ImportImage(*store_, archive_, {{"debian-python3:12"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->layers_new, 2u);
  Image img = store_->Get("debian-python3:12").value();
  EXPECT_EQ(img.digest, r->images[0]);
  const std::vector<Digest> blobs = store_->blobs().List().value();
  EXPECT_EQ(blobs.size(), 6u);  // 2 layers + 2 indexes + config + manifest
  for (const Digest& d : blobs) EXPECT_TRUE(store_->blobs().Verify(d).ok()) << d.str();
  for (const StoredLayer& l : img.manifest.layers) {
    Status st = store_->StreamLayerTar(l, [](const void*, size_t) { return Status::Ok(); });
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  GcOptions now;
  now.grace = std::chrono::seconds(0);
  auto gc = store_->Gc(now);
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_EQ(gc->blobs_removed, 0u);  // every blob is referenced: nothing leaked by the failed imports
  EXPECT_EQ(gc->staging_removed, 0u);
  EXPECT_TRUE(store_->Get("debian-python3:12").ok());
}

}  // namespace
}  // namespace paddock::storage
