// Free space for commits, checked and held in one step (BlobStore::Reserve, used by
// ImageTransaction::Commit): on a small tmpfs mounted by the test, reservations
// never promise more than is free, staging of another import keeps out of room a
// commit holds, and two concurrent imports of which only one fits end with one
// image (or none, if both ran out while staging) and a consistent store, never a
// half-committed one.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "storage/image_import.h"
#include "storage/image_store.h"
#include "tests/support/fill_fs.h"

namespace fs = std::filesystem;

namespace paddock::storage {
namespace {

class StoreRoomTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fmt::format("/var/tmp/paddock-store-room-{}", ::getpid());
    fs::remove_all(tmp_);
    mnt_ = tmp_ + "/fs";
    fs::create_directories(mnt_);
    ASSERT_EQ(::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=24m,mode=0755"), 0) << std::strerror(errno);
    mounted_ = true;
    root_ = mnt_ + "/store";
    auto s = ImageStore::Open(root_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
  }
  void TearDown() override {
    store_.reset();
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  uint64_t FreeBytes() { return testing::FreeBytesAt(mnt_); }
  void FillLeaving(uint64_t leave) { ASSERT_TRUE(testing::FillLeaving(mnt_, leave)) << "free: " << FreeBytes(); }
  // A directory (on the real disk) holding `bytes` of random data, which zstd
  // cannot shrink: its layer takes about that much in the store.
  std::string RandomDir(const std::string& name, size_t bytes) {
    std::string dir = tmp_ + "/src-" + name;
    fs::create_directories(dir);
    std::mt19937_64 rng(std::hash<std::string>{}(name));
    std::string data(bytes, '\0');
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
      uint64_t v = rng();
      std::memcpy(&data[i], &v, 8);
    }
    std::ofstream(dir + "/data", std::ios::binary) << data;
    return dir;
  }
  size_t CountFiles(const std::string& sub) {
    size_t n = 0;
    std::error_code ec;
    for (auto& e : fs::recursive_directory_iterator(root_ + "/" + sub, ec))
      if (e.is_regular_file()) ++n;
    return n;
  }
  // Every listed image reads back with verified blobs; nothing staged, no temp
  // file, no record beyond what the listed images use.
  void ExpectConsistent(size_t images) {
    auto list = store_->List();
    ASSERT_TRUE(list.ok()) << list.status().ToString();
    EXPECT_EQ(list->size(), images);
    size_t layers = 0;
    for (const auto& s : *list) {
      auto img = store_->Get(s.digest.str());
      ASSERT_TRUE(img.ok()) << img.status().ToString();
      for (const auto& l : img->manifest.layers) {
        EXPECT_TRUE(store_->blobs().Verify(l.blob).ok());
        EXPECT_TRUE(store_->blobs().Verify(l.index).ok());
        ++layers;
      }
    }
    EXPECT_EQ(CountFiles("staging"), 0u);
    EXPECT_EQ(CountFiles("layers"), layers);
    EXPECT_EQ(CountFiles("images"), images);
    EXPECT_EQ(CountFiles("refs/names"), images);
    EXPECT_EQ(store_->blobs().reserved_bytes(), 0u);
  }

  std::string tmp_, mnt_, root_;
  bool mounted_ = false;
  std::unique_ptr<ImageStore> store_;
};

TEST_F(StoreRoomTest, ReservationsNeverPromiseMoreThanIsFree) {
  FillLeaving(1 << 20);
  BlobStore& blobs = store_->blobs();
  auto a = blobs.Reserve(700 << 10, 10, "commit");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = blobs.Reserve(700 << 10, 10, "commit");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kResourceExhausted);
  EXPECT_NE(b.status().message().find("not enough space left in " + root_ + " to commit"), std::string::npos)
      << b.status().message();
  EXPECT_NE(b.status().message().find("held by other commits in progress"), std::string::npos)
      << b.status().message();
  a->Release();
  EXPECT_TRUE(blobs.Reserve(700 << 10, 10, "commit").ok());  // released with it

  // Many at once: 1 MiB free, 300 KiB each, so exactly three are granted.
  std::vector<SpaceReservation> held(8);
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      auto r = blobs.Reserve(300 << 10, 1, "commit");
      if (r.ok()) {
        held[i] = std::move(r).value();
        ++granted;
      } else {
        EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 3);
  EXPECT_EQ(blobs.reserved_bytes(), 3u * (300 << 10));
  held.clear();
  EXPECT_EQ(blobs.reserved_bytes(), 0u);
}

TEST_F(StoreRoomTest, StagingKeepsOutOfRoomACommitHolds) {
  std::string src = RandomDir("big", 2 << 20);
  FillLeaving(3 << 20);
  // As while another import's commit is in progress.
  auto commit = store_->blobs().Reserve(2 << 20, 16, "commit");
  ASSERT_TRUE(commit.ok()) << commit.status().ToString();
  auto r = ImportDirectory(*store_, src, {}, {"big:1"});
  ASSERT_FALSE(r.ok()) << "staging took the room a commit holds";
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
  EXPECT_NE(r.status().message().find("held by commits in progress"), std::string::npos) << r.status().message();
  EXPECT_GE(FreeBytes(), uint64_t{2} << 20);  // the commit's room is still there
  commit->Release();
  ExpectConsistent(0);
  // The room was real: with the commit done, the same import fits.
  auto again = ImportDirectory(*store_, src, {}, {"big:1"});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ExpectConsistent(1);
}

TEST_F(StoreRoomTest, TwoConcurrentImportsWhereOnlyOneFits) {
  const size_t kBytes = 3 << 20;
  std::string a = RandomDir("a", kBytes), b = RandomDir("b", kBytes);
  FillLeaving(kBytes + kBytes / 2);
  std::vector<Result<DirectoryImportResult>> results(2, Error(Code::kUnknown, "not run"));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      ++ready;
      while (ready.load() < 2) std::this_thread::yield();
      results[i] = ImportDirectory(*store_, i == 0 ? a : b, {}, {i == 0 ? "a:1" : "b:1"});
    });
  for (auto& t : threads) t.join();
  int ok = 0;
  for (auto& r : results) {
    if (r.ok()) {
      ++ok;
      continue;
    }
    EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
    std::cout << "  refused: " << r.status().ToString() << "\n";
  }
  // Only one fits; both may have run out while staging side by side.
  EXPECT_LE(ok, 1);
  ExpectConsistent(static_cast<size_t>(ok));
  if (ok == 0) {
    // Nothing was left behind by either: one of them fits now.
    auto r = ImportDirectory(*store_, a, {}, {"a:1"});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ExpectConsistent(1);
  }
}

}  // namespace
}  // namespace paddock::storage
