// Issue 14: the demo's Debian 12 python3 image (scripts/make-debian-image.sh,
// cached in BUILD/test-images like debian_image_test's) goes through a
// registry: one paddockd imports the OCI archive and pushes it to Debian's
// docker-registry on loopback; a second paddockd with a fresh store creates a
// container straight from the registry reference (pulled on first use) and
// python3 in it prints 6*7. A pull by a third, explicit, comes back as the same
// image; a push of it to another repository mounts every blob.
// Skipped (with the reason) only when docker-registry is not installed
// (scripts/install-deps.sh installs it); an image that cannot be built fails.
#include <sys/types.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/daemon_process.h"
#include "tests/support/debian_image.h"
#include "tests/support/docker_registry.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace paddock {
namespace {

class DebianRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists("/usr/bin/docker-registry")) GTEST_SKIP() << "docker-registry is not installed";
    auto archive = testing::EnsureDebianImage();
    ASSERT_TRUE(archive.ok()) << "the Debian python3 test image could not be built: " << archive.status().ToString();
    archive_ = *archive;
    work_ = fs::temp_directory_path() / ("paddock-debian-registry-" + std::to_string(getpid()));
    fs::create_directories(work_);
    port_ = testing::StartDockerRegistry(work_, "plain", "", &registry_pid_);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    testing::StopDockerRegistry(registry_pid_);
    if (!work_.empty()) fs::remove_all(work_);
  }
  static testing::DaemonOptions Options() {
    testing::DaemonOptions o;
    o.allow_dir_images = false;
    return o;
  }
  static json Json(testing::DaemonProcess& d, std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    auto r = d.Cli(args);
    EXPECT_EQ(r.code, 0) << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }
  std::string Ref(const std::string& repo_tag) const { return "127.0.0.1:" + std::to_string(port_) + "/" + repo_tag; }

  std::string archive_, work_;
  int port_ = 0;
  pid_t registry_pid_ = 0;
};

TEST_F(DebianRegistryTest, PushedByOneDaemonAndRunFromTheRegistryReferenceByAnother) {
  testing::DaemonProcess first(Options());
  ASSERT_EQ(first.Start(), "");
  auto imported = first.Cli({"image", "import", archive_, "--name", "debian-python3:12"});
  ASSERT_EQ(imported.code, 0) << imported.err;
  const std::string ref = Ref("demo/debian-python3:12");
  json pushed = Json(first, {"image", "push", "debian-python3:12", ref});
  EXPECT_EQ(pushed["blobs_total"], 3);  // config, minbase, python3
  EXPECT_EQ(pushed["blobs_uploaded"], 3);
  EXPECT_GT(pushed["bytes_uploaded"].get<uint64_t>(), 10u << 20);
  // The minbase layer is larger than the default 16 MiB chunk: sent in chunks.
  EXPECT_GE(pushed["blobs_chunked"].get<uint64_t>(), 1u);

  // A fresh daemon: the sandbox is created from the registry reference itself.
  testing::DaemonProcess second(Options());
  ASSERT_EQ(second.Start(), "");
  auto c = second.Cli({"sandbox", "create", "--substrate", "container", "--image", ref});
  ASSERT_EQ(c.code, 0) << c.err << second.LogTail();
  const std::string id = c.out.substr(0, c.out.find('\n'));
  auto py = second.Cli({"sandbox", "exec", id, "--", "python3", "-c", "print(6*7)"});
  EXPECT_EQ(py.code, 0) << py.err;
  EXPECT_EQ(py.out, "42\n") << py.err;
  second.Cli({"sandbox", "destroy", id});
  // The image it pulled is the one pushed (same config and layers: same id).
  json ls = Json(second, {"image", "inspect", ref});
  EXPECT_EQ(ls["digest"], pushed["image"]) << ls.dump();

  // The pull recorded where its blobs live: a push to another repository of
  // the registry mounts all three, uploading nothing.
  json again = Json(second, {"image", "push", ref, Ref("demo/copy:12")});
  EXPECT_EQ(again["blobs_mounted"], 3);
  EXPECT_EQ(again["blobs_uploaded"], 0);
  EXPECT_EQ(again["manifest_digest"], pushed["manifest_digest"]);
}

}  // namespace
}  // namespace paddock
