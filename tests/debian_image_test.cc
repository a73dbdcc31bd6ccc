// The Debian 12 minbase + python3 image (scripts/make-debian-image.sh: debootstrap,
// then umoci writes a two-layer OCI layout tar) imported into a real store:
// stable digests and dedup, export round trip, materialized layers, python3 running
// in a real container sandbox, and a full disk during import.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "sandbox/container/container_substrate.h"
#include "sandbox/image_source.h"
#include "storage/store_image_resolver.h"
#include "sandbox/manager.h"
#include "storage/digest.h"
#include "storage/image_import.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"
#include "tests/support/debian_image.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;

namespace paddock::storage {
namespace {

class DebianImageTest : public ::testing::Test {
 protected:
  // Builds (or reuses) the image and imports it once into a store shared by the
  // tests: an import of ~130 MB of layers takes seconds on 2 shared cores.
  static void SetUpTestSuite() {
    archive_ = new Result<std::string>(testing::EnsureDebianImage());
    shared_dir_ = new std::string(fmt::format("/var/tmp/paddock-debian-image-test-{}", getpid()));
    fs::remove_all(*shared_dir_);
    if (!archive_->ok()) return;
    // Stores, cache and exports live on a tmpfs of the test's own: unmounting it is
    // the cleanup (removing ~10k unpacked files from a loaded disk takes many seconds).
    fs::create_directories(*shared_dir_);
    if (::mount("tmpfs", shared_dir_->c_str(), "tmpfs", 0, "size=2g,mode=0755") != 0) {
      *archive_ = ErrnoError("mounting a tmpfs on " + *shared_dir_);
      return;
    }
    auto s = ImageStore::Open(*shared_dir_ + "/shared-store");
    if (!s.ok()) {
      *archive_ = s.status();
      return;
    }
    store_ = s->release();
    first_ = new Result<ImportResult>(ImportImage(*store_, **archive_, {{"debian-python3:12"}}));
  }
  static void TearDownTestSuite() {
    delete cache_leases_;  // leases before their cache, the cache before its store
    delete cache_;
    delete store_;
    delete first_;
    delete archive_;
    ::umount2(shared_dir_->c_str(), MNT_DETACH);
    fs::remove_all(*shared_dir_);
    delete shared_dir_;
    cache_leases_ = nullptr;
    cache_ = nullptr;
    store_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(archive_->ok()) << "the Debian python3 test image could not be built: "
                                << archive_->status().ToString();
    ASSERT_TRUE(first_->ok()) << "importing " << **archive_ << ": " << first_->status().ToString();
    tmp_ = fmt::format("{}/test-{}", *shared_dir_, ++counter_);
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override {
    for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) ::umount2(it->c_str(), MNT_DETACH);
    fs::remove_all(tmp_);
  }

  std::unique_ptr<ImageStore> OpenStore(const std::string& root) {
    auto s = ImageStore::Open(root);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : nullptr;
  }
  size_t CountFiles(const std::string& dir) {
    size_t n = 0;
    if (!fs::exists(dir)) return 0;
    for (auto& e : fs::recursive_directory_iterator(dir))
      if (e.is_regular_file()) ++n;
    return n;
  }

  // The image's layers materialized by a LayerCache (once per suite), bottom first.
  const std::vector<LayerLease>& Layers() {
    if (!cache_leases_) {
      cache_leases_ = new std::vector<LayerLease>();
      auto cache = LayerCache::Open(*shared_dir_ + "/cache", store_);
      EXPECT_TRUE(cache.ok()) << cache.status().ToString();
      if (!cache.ok()) return *cache_leases_;
      cache_ = cache->release();
      const Image img = store_->Get("debian-python3:12").value();
      for (const StoredLayer& l : img.manifest.layers) {
        auto lease = cache_->Acquire(l.diff_id);
        EXPECT_TRUE(lease.ok()) << lease.status().ToString();
        if (lease.ok()) cache_leases_->push_back(std::move(lease).value());
      }
    }
    return *cache_leases_;
  }

  // Stacks the image's materialized layers with overlayfs (lowerdir=top:bottom) on
  // a read-only mount point.
  void Merge() {
    const auto& layers = Layers();
    ASSERT_EQ(layers.size(), 2u);
    merged_ = tmp_ + "/merged";
    fs::create_directories(merged_);
    std::string opts = fmt::format("lowerdir={}:{}", layers[1].root(), layers[0].root());
    ASSERT_EQ(::mount("overlay", merged_.c_str(), "overlay", MS_RDONLY, opts.c_str()), 0) << strerror(errno);
    mounts_.push_back(merged_);
  }

  static Result<std::string>* archive_;
  static std::string* shared_dir_;
  static ImageStore* store_;
  static Result<ImportResult>* first_;
  static LayerCache* cache_;
  static std::vector<LayerLease>* cache_leases_;
  static int counter_;
  std::string tmp_, merged_;
  std::vector<std::string> mounts_;
};
Result<std::string>* DebianImageTest::archive_;
std::string* DebianImageTest::shared_dir_;
ImageStore* DebianImageTest::store_;
Result<ImportResult>* DebianImageTest::first_;
LayerCache* DebianImageTest::cache_;
std::vector<LayerLease>* DebianImageTest::cache_leases_;
int DebianImageTest::counter_ = 0;

TEST_F(DebianImageTest, ImportIsStableAndTheSecondImportWritesNothing) {
  const ImportResult& first = first_->value();
  ASSERT_EQ(first.images.size(), 1u);
  EXPECT_EQ(first.layers_total, 2u);
  EXPECT_EQ(first.layers_new, 2u);
  EXPECT_GT(first.bytes_committed, 10u << 20);

  Image img = store_->Get("debian-python3:12").value();
  EXPECT_EQ(img.digest, first.images[0]);
  ASSERT_EQ(img.manifest.layers.size(), 2u);
  EXPECT_FALSE(img.manifest.layers[0].diff_id == img.manifest.layers[1].diff_id);
  EXPECT_EQ(img.config.cmd, std::vector<std::string>{"/usr/bin/python3"});
  const std::vector<Digest> blobs_before = store_->blobs().List().value();
  EXPECT_EQ(blobs_before.size(), 6u);  // 2 layers + 2 indexes + config + manifest

  // The same archive again: same digest, every layer recognised, not a byte written.
  auto second = ImportImage(*store_, **archive_, {{"debian-python3:12"}});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->images[0], first.images[0]);
  EXPECT_EQ(second->layers_total, 2u);
  EXPECT_EQ(second->layers_new, 0u);
  EXPECT_EQ(second->bytes_committed, 0u);
  EXPECT_EQ(store_->blobs().List().value(), blobs_before);
  for (const Digest& d : blobs_before) EXPECT_TRUE(store_->blobs().Verify(d).ok()) << d.str();
}

// Layer sharing with real layers: an image of the minbase layer alone (the umoci
// archive's first layer, with its config cut down to that layer) goes in first;
// the full image then adds only its python3 layer.
TEST_F(DebianImageTest, SharedBaseLayerIsStoredOnceAndOnlyTheTopLayerIsWritten) {
  const std::string dir = tmp_ + "/minbase-oci";
  fs::create_directories(dir);
  ASSERT_EQ(std::system(fmt::format("tar -xf '{}' -C '{}'", **archive_, dir).c_str()), 0);
  auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  auto blob = [&](const std::string& digest) { return dir + "/blobs/sha256/" + digest.substr(7); };
  nlohmann::json index = nlohmann::json::parse(read(dir + "/index.json"));
  nlohmann::json manifest = nlohmann::json::parse(read(blob(index["manifests"][0]["digest"])));
  nlohmann::json config = nlohmann::json::parse(read(blob(manifest["config"]["digest"])));
  ASSERT_EQ(manifest["layers"].size(), 2u);
  config["rootfs"]["diff_ids"] = nlohmann::json::array({config["rootfs"]["diff_ids"][0]});
  config.erase("history");
  const std::string config_text = config.dump();
  const Digest config_digest = Sha256::Of(config_text);
  manifest["config"]["digest"] = config_digest.str();
  manifest["config"]["size"] = config_text.size();
  manifest["layers"] = nlohmann::json::array({manifest["layers"][0]});
  const std::string manifest_text = manifest.dump();
  const Digest manifest_digest = Sha256::Of(manifest_text);
  index["manifests"][0]["digest"] = manifest_digest.str();
  index["manifests"][0]["size"] = manifest_text.size();
  std::ofstream(blob(config_digest.str()), std::ios::binary) << config_text;
  std::ofstream(blob(manifest_digest.str()), std::ios::binary) << manifest_text;
  std::ofstream(dir + "/index.json", std::ios::binary) << index.dump();

  auto store = OpenStore(tmp_ + "/sharing");
  auto base = ImportImage(*store, dir, {{"debian-minbase:12"}});
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  EXPECT_EQ(base->layers_new, 1u);
  auto full = ImportImage(*store, **archive_, {{"debian-python3:12"}});
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_EQ(full->layers_total, 2u);
  EXPECT_EQ(full->layers_new, 1u);
  Image b = store->Get("debian-minbase:12").value(), f = store->Get("debian-python3:12").value();
  ASSERT_EQ(f.manifest.layers.size(), 2u);
  EXPECT_EQ(f.manifest.layers[0].blob, b.manifest.layers[0].blob);  // one stored copy of minbase
  // Written: the python3 layer, its index, the config and the manifest; nothing of minbase.
  const StoredLayer& top = f.manifest.layers[1];
  const uint64_t expected = top.size + store->blobs().Size(top.index).value() +
                            store->blobs().Size(f.manifest.config).value() + store->blobs().Size(f.digest).value();
  EXPECT_EQ(full->bytes_committed, expected);
  EXPECT_LT(full->bytes_committed, b.manifest.layers[0].size);
  EXPECT_EQ(store->blobs().List().value().size(), 4u + 4u);  // base: layer+index+config+manifest; full adds 4
}

TEST_F(DebianImageTest, ExportThenImportGivesTheSameDigests) {
  Image img = store_->Get("debian-python3:12").value();

  std::string out = tmp_ + "/export";
  Status st = ExportOci(*store_, "debian-python3:12", out);
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto back = ImportImage(*store_, out);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->images[0], img.digest);
  EXPECT_EQ(back->bytes_committed, 0u);

  // A fresh store computes the same image digest from the exported layout.
  auto fresh = OpenStore(tmp_ + "/fresh");
  auto f = ImportImage(*fresh, out);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->images[0], img.digest);
  EXPECT_EQ(f->layers_new, 2u);
  Image img2 = fresh->Get(img.digest.str()).value();
  EXPECT_EQ(img2.manifest.config, img.manifest.config);
  ASSERT_EQ(img2.manifest.layers.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(img2.manifest.layers[i].diff_id, img.manifest.layers[i].diff_id);
    EXPECT_EQ(img2.manifest.layers[i].blob, img.manifest.layers[i].blob);  // zstd blobs exported as stored
  }
}

TEST_F(DebianImageTest, MaterializedLayersHoldPython3OnTopOfMinbase) {
  Merge();
  if (HasFatalFailure()) return;
  const std::string base = Layers()[0].root(), top = Layers()[1].root();
  // minbase: a shell and apt, no python; the python3 layer brings the interpreter.
  EXPECT_TRUE(fs::exists(base + "/usr/bin/dash"));
  EXPECT_TRUE(fs::exists(base + "/usr/bin/apt-get"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(base + "/usr/bin/python3")));
  EXPECT_TRUE(fs::is_symlink(top + "/usr/bin/python3"));
  EXPECT_TRUE(fs::is_regular_file(top + "/usr/bin/python3.11"));
  EXPECT_FALSE(fs::exists(top + "/usr/bin/dash"));  // not repeated in the upper layer
  // The stored index says the same without unpacking.
  auto entries = store_->LayerEntries(store_->Get("debian-python3:12")->manifest.layers[1]).value();
  bool indexed = false;
  for (const auto& e : entries) indexed |= e.path == "usr/bin/python3.11";
  EXPECT_TRUE(indexed);
  // Stacked, the merged tree is a whole system: the interpreter and its stdlib.
  EXPECT_TRUE(fs::exists(merged_ + "/usr/bin/python3"));  // resolves python3 -> python3.11
  EXPECT_TRUE(fs::exists(merged_ + "/usr/lib/python3.11/os.py"));
  EXPECT_TRUE(fs::exists(merged_ + "/bin/sh"));
  // Trimmed: no package lists or man pages.
  EXPECT_TRUE(fs::is_empty(merged_ + "/usr/share/man") || !fs::exists(merged_ + "/usr/share/man"));
  EXPECT_EQ(CountFiles(merged_ + "/var/lib/apt/lists"), 0u);
}

// Through the real path: the container substrate resolves the image by name with
// the store-backed resolver, mounts the cached layers as overlay lower dirs (one
// idmapped view each) and runs python3 from them.
TEST_F(DebianImageTest, Python3PrintsFortyTwoInAContainerSandbox) {
  ASSERT_EQ(Layers().size(), 2u);  // the suite's cache, shared with the resolver
  storage::StoreImageResolver resolver(store_, cache_);
  SubstrateEnv env;
  env.state_dir = tmp_ + "/state";
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 0;
  env.images = &resolver;
  fs::create_directories(env.state_dir);
  SandboxManager manager(ManagerOptions{});
  manager.RegisterSubstrate(MakeContainerSubstrate(env));
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = "debian-python3:12";
  auto info = manager.Create(spec);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto sb = manager.Get(info->id).value();
  ExecRequest req;
  req.argv = {"/usr/bin/python3", "-c", "print(6*7)"};
  req.timeout_ms = 60000;
  auto res = sb->Exec(req, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->exit_code, 0) << res->stderr_data;
  EXPECT_EQ(res->stdout_data, "42\n") << res->stderr_data;
  // The distribution is the Debian one we built, the image config's env applies,
  // and the stdlib is importable (files owned by root inside, via the idmapped views).
  req.argv = {"/bin/sh", "-c",
              ". /etc/os-release && echo $VERSION_CODENAME $LANG && stat -c %u /usr/lib/python3.11/os.py && "
              "python3 -c 'import json, sqlite3; print(json.dumps([1]))'"};
  res = sb->Exec(req, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->stdout_data, "bookworm C.UTF-8\n0\n[1]\n") << res->stderr_data;
  sb.reset();
  EXPECT_TRUE(manager.Destroy(info->id).ok());
  manager.Shutdown();
}

// The same layers stacked by hand with overlayfs and given as the absolute-path image
// form (a root filesystem directory): the development form runs it too.
TEST_F(DebianImageTest, Python3RunsFromTheMergedLayersAsADirectoryImage) {
  Merge();
  if (HasFatalFailure()) return;
  SubstrateEnv env;
  env.state_dir = tmp_ + "/state";
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 0;
  fs::create_directories(env.state_dir);
  SandboxManager manager(ManagerOptions{});
  manager.RegisterSubstrate(MakeContainerSubstrate(env));
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = merged_;
  auto info = manager.Create(spec);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto sb = manager.Get(info->id).value();
  ExecRequest req;
  req.argv = {"/usr/bin/python3", "-c", "print(6*7)"};
  req.timeout_ms = 60000;
  auto res = sb->Exec(req, nullptr);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->stdout_data, "42\n") << res->stderr_data;
  sb.reset();
  EXPECT_TRUE(manager.Destroy(info->id).ok());
  manager.Shutdown();
}

struct ShellResult {
  int status = -1;
  std::string out;  // stdout and stderr
};
ShellResult Shell(const std::string& cmd) {
  ShellResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// The script as a user runs it: --help, bad arguments, and an unreachable mirror,
// which must be a clear error (exit 1), never an empty or partial image.
TEST(MakeDebianImageScript, HelpBadArgumentsAndUnreachableMirror) {
  const std::string script = std::string(PADDOCK_SOURCE_DIR) + "/scripts/make-debian-image.sh";
  ShellResult help = Shell(script + " --help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("usage: scripts/make-debian-image.sh"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--mirror URL"), std::string::npos) << help.out;

  ShellResult bad = Shell(script + " --bogus");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.out.find("unknown argument '--bogus'"), std::string::npos) << bad.out;

  std::string dir = fmt::format("/var/tmp/paddock-make-debian-image-{}", getpid());
  fs::remove_all(dir);
  // Port 9 (discard) on loopback: refused at once.
  ShellResult down = Shell(fmt::format("{} --mirror http://127.0.0.1:9/debian --out {}/x.tar", script, dir));
  EXPECT_EQ(down.status, 1) << down.out;
  EXPECT_NE(down.out.find("the Debian mirror http://127.0.0.1:9/debian is unreachable"), std::string::npos)
      << down.out;
  EXPECT_FALSE(fs::exists(dir + "/x.tar"));
  EXPECT_FALSE(fs::exists(dir + "/x.tar.stamp"));
  fs::remove_all(dir);
}

// A second builder waits on the first one's lock and then reuses its result: with
// the lock held here, the script waits (it never reaches the mirror, which is
// unreachable on purpose); once a complete cache appears and the lock is released,
// it prints the path and exits 0.
TEST(MakeDebianImageScript, ConcurrentBuilderWaitsOnTheLockAndReusesTheResult) {
  auto real = testing::EnsureDebianImage();
  ASSERT_TRUE(real.ok()) << real.status().ToString();
  std::string recipe;
  {
    std::ifstream stamp(*real + ".stamp");
    std::getline(stamp, recipe);
  }
  ASSERT_FALSE(recipe.empty());
  const std::string script = std::string(PADDOCK_SOURCE_DIR) + "/scripts/make-debian-image.sh";
  std::string dir = fmt::format("/var/tmp/paddock-make-debian-image-lock-{}", getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string out = dir + "/x.tar";
  int lock = ::open((out + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(lock, 0);
  ASSERT_EQ(::flock(lock, LOCK_EX), 0);
  std::string cmd = fmt::format("({} --mirror http://127.0.0.1:9/debian --out {} > {}/stdout 2> {}/stderr; echo $? > {}/rc) &",
                                script, out, dir, dir, dir);
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto slurp = [](const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  bool waiting = false;
  for (int i = 0; i < 300 && !waiting; ++i) {
    waiting = slurp(dir + "/stderr").find("another build of " + out + " is running; waiting") != std::string::npos;
    if (!waiting) ::usleep(20000);
  }
  EXPECT_TRUE(waiting) << slurp(dir + "/stderr");
  EXPECT_FALSE(fs::exists(dir + "/rc"));  // still waiting
  {
    std::ofstream(out) << "built by the first builder";
    std::ofstream(out + ".stamp") << recipe << "\n";
  }
  ::flock(lock, LOCK_UN);
  ::close(lock);
  for (int i = 0; i < 500 && slurp(dir + "/rc").empty(); ++i) ::usleep(20000);
  EXPECT_EQ(slurp(dir + "/rc"), "0\n") << slurp(dir + "/stderr");
  EXPECT_EQ(slurp(dir + "/stdout"), out + "\n");
  EXPECT_NE(slurp(dir + "/stderr").find("built by a concurrent run; reusing"), std::string::npos)
      << slurp(dir + "/stderr");
  EXPECT_EQ(slurp(out), "built by the first builder");  // not rebuilt
  fs::remove_all(dir);
}

}  // namespace
}  // namespace paddock::storage
