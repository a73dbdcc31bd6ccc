// Copying an image between stores by its id (storage/image_copy.h), as a fleet
// node does from its front: only missing blobs are asked for, the copy has the
// same image id (zstd and lz4 stores alike), and bytes that are not what their
// digest says (other, longer or shorter) are refused with nothing left behind.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <cstring>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "storage/image_copy.h"
#include "storage/image_import.h"
#include "storage/image_store.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace paddock::storage {
namespace {

// Blobs read from another store's files as they are, with optional faults.
class StoreFetcher final : public BlobFetcher {
 public:
  explicit StoreFetcher(ImageStore& from) : from_(from) {}
  Result<ByteSource> Open(const Digest& digest, uint64_t size, uint64_t max_bytes) override {
    asked.push_back(digest.str());
    std::ifstream in(from_.blobs().BlobPath(digest), std::ios::binary);
    if (!in) return Error(Code::kNotFound, "no blob {}", digest.str());
    auto data = std::make_shared<std::string>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (digest.str() == corrupt && !data->empty()) (*data)[data->size() / 2] ^= 0x5a;
    if (digest.str() == lengthen) data->append("extra bytes");
    if (digest.str() == shorten) data->resize(data->size() / 2);
    auto pos = std::make_shared<size_t>(0);
    return ByteSource([data, pos](void* buf, size_t n) -> Result<size_t> {
      size_t take = std::min(n, data->size() - *pos);
      std::memcpy(buf, data->data() + *pos, take);
      *pos += take;
      return take;
    });
  }
  std::vector<std::string> asked;
  std::string corrupt, lengthen, shorten;

 private:
  ImageStore& from_;
};

class ImageCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    dir_ = fs::temp_directory_path() / ("paddock-image-copy-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<ImageStore> Open(const std::string& name, Compression c = Compression::kZstd) {
    ImageStoreOptions o;
    o.compression = c;
    auto s = ImageStore::Open(dir_ + "/" + name, o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return std::move(s).value();
  }
  Digest Import(ImageStore& store, const std::string& name, std::vector<std::string> env = {}) {
    ImageConfig cfg;
    cfg.env = std::move(env);
    auto r = ImportDirectory(store, rootfs_, cfg, {name});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r->image;
  }
  size_t Staged(ImageStore& store) {
    size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(store.root() + "/staging")) n += e.is_regular_file();
    return n;
  }
  std::string rootfs_, dir_;
};

TEST_F(ImageCopyTest, CopiesOnlyWhatIsMissingUnderTheSameId) {
  auto src = Open("src");
  auto dst = Open("dst");
  Digest id = Import(*src, "busybox:1");
  StoreFetcher from(*src);
  auto r = CopyImage(*dst, id, from, {"busybox:1"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->already_present);
  EXPECT_EQ(r->layers_fetched, 1u);
  auto copy = dst->Get(id.str());
  ASSERT_TRUE(copy.ok()) << copy.status().ToString();
  EXPECT_EQ(copy->digest, id);
  EXPECT_TRUE(copy->names.empty());  // held by id; the node's names stay its own
  EXPECT_EQ(from.asked.size(), 3u);  // manifest, config, layer
  ASSERT_TRUE(dst->FindLayer(copy->manifest.layers[0].diff_id).ok());

  // Already there: nothing is asked for.
  from.asked.clear();
  auto again = CopyImage(*dst, id, from, {});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->already_present);
  EXPECT_TRUE(from.asked.empty());

  // Another image on the same layer: only its manifest and config travel.
  Digest other = Import(*src, "busybox:env", {"X=1"});
  ASSERT_FALSE(other == id);
  auto shared = CopyImage(*dst, other, from, {});
  ASSERT_TRUE(shared.ok()) << shared.status().ToString();
  EXPECT_EQ(shared->layers_fetched, 0u);
  EXPECT_EQ(from.asked.size(), 2u);
  EXPECT_EQ(Staged(*dst), 0u);
}

TEST_F(ImageCopyTest, AnLz4StoresImageKeepsItsIdInAZstdStore) {
  auto src = Open("src", Compression::kLz4);
  auto dst = Open("dst", Compression::kZstd);
  Digest id = Import(*src, "busybox:1");
  StoreFetcher from(*src);
  auto r = CopyImage(*dst, id, from, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto copy = dst->Get(id.str());
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->manifest.layers[0].compression, Compression::kLz4);
  std::string tar;
  ASSERT_TRUE(dst->StreamLayerTar(copy->manifest.layers[0], [&](const void* d, size_t n) {
                   tar.append(static_cast<const char*>(d), n);
                   return Status::Ok();
                 }).ok());
  EXPECT_EQ(tar.size(), copy->manifest.layers[0].uncompressed_size);
}

TEST_F(ImageCopyTest, BytesThatAreNotTheirDigestLeaveNothingBehind) {
  auto src = Open("src");
  Digest id = Import(*src, "busybox:1");
  auto image = src->Get(id.str());
  ASSERT_TRUE(image.ok());
  const StoredLayer layer = image->manifest.layers[0];
  for (std::string fault : {"corrupt layer", "longer layer", "shorter layer", "corrupt config", "corrupt manifest"}) {
    SCOPED_TRACE(fault);
    auto dst = Open("dst-" + std::to_string(fault.size()) + fault.substr(0, 4));
    StoreFetcher from(*src);
    if (fault == "corrupt layer") from.corrupt = layer.blob.str();
    if (fault == "longer layer") from.lengthen = layer.blob.str();
    if (fault == "shorter layer") from.shorten = layer.blob.str();
    if (fault == "corrupt config") from.corrupt = image->manifest.config.str();
    if (fault == "corrupt manifest") from.corrupt = id.str();
    auto r = CopyImage(*dst, id, from, {"busybox:1"});
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("busybox:1 (" + id.str() + ")"));
    if (fault.find("layer") != std::string::npos) {
      EXPECT_THAT(r.status().message(), HasSubstr(layer.blob.str()));
    }
    if (fault != "corrupt layer") {
      EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
    }
    EXPECT_FALSE(dst->Get(id.str()).ok());
    EXPECT_FALSE(dst->blobs().Has(layer.blob));
    EXPECT_FALSE(dst->FindLayer(layer.diff_id).ok());
    EXPECT_EQ(Staged(*dst), 0u);
    // Without the fault the same store takes it.
    StoreFetcher clean(*src);
    auto ok = CopyImage(*dst, id, clean, {});
    ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  }
}

}  // namespace
}  // namespace paddock::storage
