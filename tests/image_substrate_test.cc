// The substrates on the image store: sandboxes created from image names and
// digests (layers materialized by the LayerCache, stacked as overlay lower
// dirs), image config defaults, and container snapshots (the upper dir as a
// layer with whiteouts, forked into isolated sandboxes). Real namespaces,
// overlayfs, cgroups and a real store in a temp dir; needs root.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/image_source.h"
#include "storage/store_image_resolver.h"
#include "sandbox/manager.h"
#include "storage/image_import.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace paddock {
namespace {

class ImageSubstrateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { rootfs_ = new std::string(testing::EnsureBusyboxRootfs()); }

  void SetUp() override {
    char tmpl[] = "/var/tmp/paddock-image-sub-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    chmod(dir_.c_str(), 0755);  // sandboxes' users must be able to reach their roots
    auto store = storage::ImageStore::Open(dir_ + "/images");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    storage::LayerCacheOptions copts;
    copts.sync = false;
    auto cache = storage::LayerCache::Open(dir_ + "/state/layer-cache", store_.get(), copts);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    cache_ = std::move(cache).value();
    // As paddockd --allow-dir-images: the busybox test rootfs is also used as a
    // host directory image by the cases below.
    resolver_ = std::make_unique<storage::StoreImageResolver>(store_.get(), cache_.get(), /*allow_directories=*/true);
    SubstrateEnv env;
    env.state_dir = dir_ + "/state";
    env.init_path = testing::BuiltBinary("paddock-init");
    env.warm_pool_size = 0;  // every create builds: the test sees each build
    env.images = resolver_.get();
    fs::create_directories(env.state_dir);
    manager_ = std::make_unique<SandboxManager>(ManagerOptions{});
    manager_->RegisterSubstrate(MakeFunctionSubstrate(env));
    manager_->RegisterSubstrate(MakeContainerSubstrate(env));

    storage::ImageConfig config;
    config.env = {"IMAGE_ONLY=from-image", "SHARED=image"};
    config.cwd = "/srv";
    auto base = storage::ImportDirectory(*store_, *rootfs_, config, {"busybox:1"});
    ASSERT_TRUE(base.ok()) << base.status().ToString();
    base_ = base->image.str();
  }

  void TearDown() override {
    if (manager_) manager_->Shutdown();
    manager_.reset();
    resolver_.reset();
    cache_.reset();
    store_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Create(const std::string& image, const std::string& substrate = "container",
                     std::map<std::string, std::string> env = {}, const std::string& workdir = "") {
    SandboxSpec spec;
    spec.substrate = substrate;
    spec.image = image;
    spec.env = std::move(env);
    spec.workdir = workdir;
    spec.host_dir_image_ok = true;  // as a unix-socket client's Create
    auto info = manager_->Create(spec);
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    return info.ok() ? info->id : "";
  }

  ExecResult Sh(const std::string& id, const std::string& script) {
    auto sb = manager_->Get(id);
    EXPECT_TRUE(sb.ok()) << sb.status().ToString();
    if (!sb.ok()) return {};
    ExecRequest req;
    req.shell = script;
    auto r = (*sb)->Exec(req, nullptr);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : ExecResult{};
  }

  std::string Out(const std::string& id, const std::string& script) {
    ExecResult r = Sh(id, script);
    EXPECT_EQ(r.exit_code, 0) << script << "\nstderr: " << r.stderr_data;
    return r.stdout_data;
  }

  Result<SnapshotResult> Snap(const std::string& id, const std::string& name) {
    auto sb = manager_->Get(id);
    if (!sb.ok()) return sb.status();
    return (*sb)->Snapshot(name);
  }

  static std::string* rootfs_;
  std::string dir_, base_;
  std::unique_ptr<storage::ImageStore> store_;
  std::unique_ptr<storage::LayerCache> cache_;
  std::unique_ptr<storage::StoreImageResolver> resolver_;
  std::unique_ptr<SandboxManager> manager_;
};
std::string* ImageSubstrateTest::rootfs_ = nullptr;

TEST_F(ImageSubstrateTest, ContainerFromNameDigestAndPrefixWithConfigDefaults) {
  std::string by_name = Create("busybox:1", "container", {{"SHARED", "spec"}});
  ASSERT_FALSE(by_name.empty());
  EXPECT_EQ(Out(by_name, "cat /etc/image-marker >/dev/null && echo ok"), "ok\n");
  // Image env is a default under the spec's; image workdir is the default cwd.
  EXPECT_EQ(Out(by_name, "echo $IMAGE_ONLY $SHARED; pwd"), "from-image spec\n/srv\n");
  // The root is writable (overlay upper over the materialized layer).
  EXPECT_EQ(Out(by_name, "echo hi > /etc/new && cat /etc/new"), "hi\n");

  std::string by_digest = Create(base_, "container", {}, "/tmp");
  ASSERT_FALSE(by_digest.empty());
  EXPECT_EQ(Out(by_digest, "pwd; test -e /etc/new || echo clean"), "/tmp\nclean\n");
  std::string by_prefix = Create(base_.substr(7, 10));
  ASSERT_FALSE(by_prefix.empty());
  EXPECT_EQ(Out(by_prefix, "echo $IMAGE_ONLY"), "from-image\n");
  // The layer was unpacked once for all three.
  EXPECT_EQ(cache_->stats().unpacks, 1u);
}

TEST_F(ImageSubstrateTest, MissingImageIsNotFoundNamingIt) {
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = "nosuch:9";
  auto r = manager_->Create(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("nosuch:9"));
  spec.substrate = "function";
  r = manager_->Create(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("nosuch:9"));
  spec.image = "relative/dir";
  r = manager_->Create(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("relative/dir"));
}

TEST_F(ImageSubstrateTest, DirectoryImagesStillWork) {
  std::string id = Create(*rootfs_);
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Out(id, "cat /etc/image-marker >/dev/null && pwd"), "/work\n");
  // Not for a caller that may not name host directories (a task, a TCP client).
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = *rootfs_;
  auto refused = manager_->Create(spec);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("host directory"));
}

// Container state → snapshot → many forks: each sees the snapshot's state,
// none sees another's writes; deletions stay deleted; a file deleted and
// recreated has its new content; a directory removed and recreated is opaque
// (none of its old entries come back).
TEST_F(ImageSubstrateTest, SnapshotForksAreIsolatedAndKeepDeletions) {
  std::string src = Create("busybox:1");
  ASSERT_FALSE(src.empty());
  Out(src,
      "mkdir -p /data/sub && echo one > /data/sub/a && echo keep > /data/b && "
      "rm /etc/passwd && "                             // a lower file deleted
      "rm /etc/group && echo regrouped > /etc/group && "  // deleted, then recreated
      "rm -rf /usr && mkdir /usr && echo fresh > /usr/only && "  // opaque directory
      "mkdir -p /home/u && chown 1000:1001 /home/u && echo mine > /home/u/f && chown 1000:1001 /home/u/f && "
      "ln /data/b /data/b-link");
  auto snap = Snap(src, "task:prepared");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->name, "task:prepared");
  EXPECT_GT(snap->layer_bytes, 0u);
  // The source keeps running and writing after its snapshot.
  Out(src, "echo later > /data/later");

  // The new layer: owners mapped back to the ids the sandbox used, whiteout
  // and opaque marker as OCI entries.
  auto img = store_->Get("task:prepared");
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_EQ(img->manifest.layers.size(), 2u);
  EXPECT_EQ(img->config.cwd, "/srv");  // the base's config is kept
  auto entries = store_->LayerEntries(img->manifest.layers.back());
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  bool saw_whiteout = false, saw_opaque = false, saw_owner = false, saw_link = false;
  for (const auto& e : *entries) {
    if (e.type == storage::EntryType::kWhiteout && e.path == "etc/passwd") saw_whiteout = true;
    if (e.type == storage::EntryType::kOpaque && e.path == "usr") saw_opaque = true;
    if (e.path == "home/u/f") saw_owner = e.uid == 1000 && e.gid == 1001;
    if (e.path == "data/b-link" || e.path == "data/b") saw_link |= e.type == storage::EntryType::kHardlink;
    EXPECT_NE(e.path, "data/later");
  }
  EXPECT_TRUE(saw_whiteout);
  EXPECT_TRUE(saw_opaque);
  EXPECT_TRUE(saw_owner);
  EXPECT_TRUE(saw_link);

  constexpr int kForks = 3;
  std::vector<std::string> forks;
  for (int i = 0; i < kForks; ++i) {
    forks.push_back(Create("task:prepared"));
    ASSERT_FALSE(forks.back().empty());
  }
  for (int i = 0; i < kForks; ++i) {
    const std::string& id = forks[i];
    EXPECT_EQ(Out(id, "cat /data/sub/a /data/b /etc/group /usr/only"), "one\nkeep\nregrouped\nfresh\n");
    EXPECT_EQ(Out(id, "test -e /etc/passwd || echo gone; test -e /usr/bin || echo opaque; "
                      "test -e /data/later || echo before"),
              "gone\nopaque\nbefore\n");
    EXPECT_EQ(Out(id, "stat -c '%u:%g' /home/u/f"), "1000:1001\n");
    EXPECT_EQ(Out(id, "/bin/busybox echo tools-still-there"), "tools-still-there\n");
    Out(id, fmt::format("echo fork{} > /data/mine; echo fork{} >> /data/b; rm /data/sub/a", i, i));
  }
  for (int i = 0; i < kForks; ++i) {
    EXPECT_EQ(Out(forks[i], "cat /data/mine; cat /data/b; ls /data/sub | wc -l"),
              fmt::format("fork{}\nkeep\nfork{}\n0\n", i, i));
  }
  // A fresh fork still sees the snapshot as it was taken.
  std::string late = Create("task:prepared");
  EXPECT_EQ(Out(late, "cat /data/b; test -e /data/mine || echo none"), "keep\nnone\n");

  // A snapshot of a fork stacks a third layer.
  Out(forks[0], "rm /data/b");
  auto second = Snap(forks[0], "task:second");
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  std::string gen2 = Create("task:second");
  EXPECT_EQ(Out(gen2, "cat /data/mine; test -e /data/b || echo b-gone; cat /etc/group"),
            "fork0\nb-gone\nregrouped\n");
  auto img2 = store_->Get("task:second");
  ASSERT_TRUE(img2.ok());
  EXPECT_EQ(img2->manifest.layers.size(), 3u);
}

TEST_F(ImageSubstrateTest, SnapshotOfDirectoryImageImportsItsBase) {
  std::string src = Create(*rootfs_);
  ASSERT_FALSE(src.empty());
  Out(src, "echo x > /work/x");
  auto snap = Snap(src, "from-dir:1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  std::string fork = Create("from-dir:1");
  EXPECT_EQ(Out(fork, "cat /work/x"), "x\n");
}

TEST_F(ImageSubstrateTest, FunctionFromImageReadsLayersAndRefusesSnapshot) {
  std::string src = Create("busybox:1");
  Out(src, "echo layered > /etc/top && rm /etc/passwd");
  ASSERT_TRUE(Snap(src, "fn:1").ok());
  std::string fn = Create("fn:1", "function", {{"SHARED", "spec"}});
  ASSERT_FALSE(fn.empty());
  EXPECT_EQ(Out(fn, "cat /etc/top; test -e /etc/passwd || echo gone; echo $IMAGE_ONLY $SHARED"),
            "layered\ngone\nfrom-image spec\n");
  // The root is read-only.
  ExecResult w = Sh(fn, "echo x > /etc/top");
  EXPECT_NE(w.exit_code, 0);
  auto r = Snap(fn, "nope:1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("function sandbox"));
}

TEST_F(ImageSubstrateTest, SnapshotBadNameIsRefusedAndStoreUnchanged) {
  std::string src = Create("busybox:1");
  auto before = store_->List();
  ASSERT_TRUE(before.ok());
  auto r = Snap(src, "Bad Name!");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  auto after = store_->List();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), before->size());
}

}  // namespace
}  // namespace paddock
