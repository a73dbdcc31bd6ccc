// `paddock image pull` against real registries and a hostile one
// (storage/registry/, the Images.Pull RPC, the CLI):
//   * Debian's docker-registry (distribution 2.8) on a free loopback port, fed by
//     Debian's skopeo from an OCI layout umoci made from the busybox test rootfs:
//     OCI + gzip, Docker schema 2 and zstd layers are pulled, a container sandbox
//     is created from the pulled name and runs `echo ok`; a second pull fetches
//     no layer; a missing tag is NOT_FOUND naming the reference;
//   * MiniRegistry, a small HTTP server in this file (a thread with a listening
//     socket) that serves what each case tells it: an image index (platform
//     choice, a redirect to the blob), a layer whose bytes do not match its
//     digest, one longer than declared, 401/429/503, a manifest over 4 MiB and a
//     redirect loop. Each failure is a clear error naming the reference and
//     leaves the store as it was (`image ls` empty, nothing in staging/).
// Skipped (with the reason) only when docker-registry, skopeo or umoci are not
// installed (scripts/install-deps.sh installs them).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "paddock/client.h"
#include "storage/digest.h"
#include "storage/registry/http_get.h"
#include "storage/registry/on_demand_pull.h"
#include "storage/registry/retry.h"
#include "storage/registry/pull.h"
#include "storage/registry/reference.h"
#include "tests/rollout_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/docker_registry.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using nlohmann::json;

namespace paddock {
namespace {

std::string Sh(const std::string& cmd) {
  auto r = testing::RunProgram({"/bin/sh", "-c", cmd});
  EXPECT_EQ(r.code, 0) << cmd << "\n" << r.out << r.err;
  return r.out;
}

std::string MissingTools() {
  for (const char* t : {"/usr/bin/docker-registry", "/usr/bin/skopeo", "/usr/bin/umoci"})
    if (access(t, X_OK) != 0) return std::string(t) + " is not installed (scripts/install-deps.sh installs it)";
  return "";
}

// ---- parsing, without a daemon ---------------------------------------------

TEST(RegistryReference, ParsesHostsRepositoriesTagsAndDigests) {
  namespace reg = storage::registry;
  auto r = reg::ParseReference("127.0.0.1:5000/test/busybox:1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->registry, "127.0.0.1:5000");
  EXPECT_EQ(r->repository, "test/busybox");
  EXPECT_EQ(r->tag, "1");
  EXPECT_EQ(r->DefaultName(), "127.0.0.1:5000/test/busybox:1");
  r = reg::ParseReference("debian");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->str(), "docker.io/library/debian:latest");
  EXPECT_EQ(r->ApiHost(), "registry-1.docker.io");
  r = reg::ParseReference("localhost/a/b");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->registry, "localhost");
  EXPECT_EQ(r->tag, "latest");
  const std::string hex(64, 'a');
  r = reg::ParseReference("reg.example/x@sha256:" + hex);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->ManifestRef(), "sha256:" + hex);
  EXPECT_EQ(r->DefaultName(), "");  // by digest only: no name
  for (const char* bad : {"", "Upper/case", "reg.example/x:", "reg.example/x@sha256:12", "reg.example/x@md5:" ,
                          "reg.example//x", "reg.example/x:t@g", "a b"})
    EXPECT_FALSE(reg::ParseReference(bad).ok()) << bad;
}

TEST(RegistryReference, StoreNamesAndRegistryReferencesAreToldApart) {
  namespace reg = storage::registry;
  const std::string hex(64, 'b');
  for (const char* ref : {"127.0.0.1:5000/swe/django:4.2", "localhost/a/b", "reg.example/x", "reg:5000/x"})
    EXPECT_TRUE(reg::NamesRegistryImage(ref)) << ref;
  EXPECT_TRUE(reg::NamesRegistryImage("debian@sha256:" + hex));
  // No host part: store names, however they look.
  for (const char* name : {"py:3", "py", "localhost", "library/debian", "swe/django:4.2", "sha256:abcd", "abcd1234"})
    EXPECT_FALSE(reg::NamesRegistryImage(name)) << name;
}

TEST(RegistryRetry, RetryAfterAndWhatIsRetried) {
  namespace reg = storage::registry;
  EXPECT_EQ(reg::ParseRetryAfter("1"), std::chrono::milliseconds(1000));
  EXPECT_EQ(reg::ParseRetryAfter("120"), std::chrono::milliseconds(120000));
  EXPECT_FALSE(reg::ParseRetryAfter("").has_value());
  EXPECT_FALSE(reg::ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT").has_value());
  reg::RetryPolicy p;
  p.first_backoff = std::chrono::milliseconds(1);
  reg::Retrier r(p, nullptr);
  EXPECT_FALSE(r.WaitBeforeRetry({false, std::nullopt}));            // permanent: never
  EXPECT_FALSE(r.WaitBeforeRetry({true, std::chrono::seconds(60)}));  // asks for longer than the cap
  EXPECT_TRUE(r.WaitBeforeRetry({true, std::nullopt}));
  EXPECT_TRUE(r.WaitBeforeRetry({true, std::nullopt}));
  EXPECT_TRUE(r.WaitBeforeRetry({true, std::nullopt}));
  EXPECT_FALSE(r.WaitBeforeRetry({true, std::nullopt}));  // 4 attempts made
  EXPECT_EQ(r.attempts(), 4);
  bool cancel = true;
  reg::Retrier c(p, [&] { return cancel; });
  EXPECT_FALSE(c.WaitBeforeRetry({true, std::nullopt}));  // a cancelled call stops retrying
}

TEST(RegistryReference, UrlsPlatformsAndPlainHttpPolicy) {
  namespace reg = storage::registry;
  auto base = reg::Url::Parse("http://127.0.0.1:5000/v2/x/blobs/sha256:1");
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(base->port, 5000);
  auto rel = reg::Url::Parse("/s3/obj?sig=1", &*base);
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(rel->str(), "http://127.0.0.1:5000/s3/obj?sig=1");
  auto abs = reg::Url::Parse("https://[::1]:8443/a", &*base);
  ASSERT_TRUE(abs.ok());
  EXPECT_EQ(abs->host, "::1");
  EXPECT_EQ(abs->Authority(), "[::1]:8443");
  EXPECT_FALSE(reg::Url::Parse("ftp://x/").ok());
  EXPECT_FALSE(reg::Url::Parse("http://user@x/").ok());
  EXPECT_FALSE(reg::Url::Parse("http://x:99999/").ok());

  auto U = [](const char* text) {
    auto r = reg::Url::Parse(text);
    EXPECT_TRUE(r.ok()) << text;
    return r.ok() ? *r : reg::Url{};
  };
  reg::HttpGetOptions o;
  EXPECT_TRUE(reg::PlainHttpAllowed(U("http://127.0.0.9:1/"), o));
  EXPECT_TRUE(reg::PlainHttpAllowed(U("http://localhost/"), o));
  EXPECT_FALSE(reg::PlainHttpAllowed(U("http://10.0.0.7:5000/"), o));
  o.insecure_hosts.insert("10.0.0.7:5000");
  EXPECT_TRUE(reg::PlainHttpAllowed(U("http://10.0.0.7:5000/"), o));
  EXPECT_FALSE(reg::PlainHttpAllowed(U("http://10.0.0.7:5001/"), o));

  auto p = reg::ParsePlatform("linux/arm64/v8");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->variant, "v8");
  EXPECT_FALSE(reg::ParsePlatform("linux").ok());
  EXPECT_FALSE(reg::ParsePlatform("linux//").ok());
}

// ---- MiniRegistry: serves canned answers, one request per connection -------

struct Route {
  int status = 200;
  std::string content_type = "application/octet-stream";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  bool send_length = true;  // false: no Content-Length, the body ends at close
  int drip_ms = 0;           // > 0: the body one byte at a time, this far apart
  int stall_ms = 0;          // > 0: nothing for this long after the head
  size_t cut_after = std::string::npos;  // close the connection after this many body bytes
  bool ranges = false;       // answer "Range: bytes=N-" with 206 and the rest of the body
};

class MiniRegistry {
 public:
  MiniRegistry() {
    fd_ = testing::ListenOnLoopback(&port_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~MiniRegistry() {
    stop_ = true;
    thread_.join();
    for (auto& t : connections_) t.join();
    close(fd_);
  }
  int port() const { return port_; }
  std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  void Set(const std::string& path, Route r) {
    std::lock_guard<std::mutex> l(mu_);
    routes_[path] = std::move(r);
  }
  int Hits(const std::string& path) {
    std::lock_guard<std::mutex> l(mu_);
    return hits_[path];
  }
  // Served for the next request of `path` instead of its route (once each, in order).
  void Push(const std::string& path, Route r) {
    std::lock_guard<std::mutex> l(mu_);
    once_[path].push_back(std::move(r));
  }
  // The Range headers requests of `path` carried, in order.
  std::vector<std::string> Ranges(const std::string& path) {
    std::lock_guard<std::mutex> l(mu_);
    return ranges_[path];
  }

 private:
  void Loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      // A thread per connection: a dripping or stalled answer holds up no other.
      connections_.emplace_back([this, c] {
        Handle(c);
        close(c);
      });
    }
  }
  void Handle(int c) {
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) return;
      req.append(buf, static_cast<size_t>(n));
    }
    size_t sp1 = req.find(' '), sp2 = req.find(' ', sp1 + 1);
    std::string path = req.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string range;  // "N" of "Range: bytes=N-"
    if (size_t at = req.find("\r\nRange: bytes="); at != std::string::npos)
      range = req.substr(at + 15, req.find('-', at + 15) - (at + 15));
    Route r;
    {
      std::lock_guard<std::mutex> l(mu_);
      hits_[path]++;
      if (!range.empty()) ranges_[path].push_back("bytes=" + range + "-");
      auto it = routes_.find(path);
      if (auto q = once_.find(path); q != once_.end() && !q->second.empty()) {
        r = q->second.front();
        q->second.erase(q->second.begin());
      } else if (it == routes_.end()) {
        r.status = 404;
        r.content_type = "application/json";
        r.body = R"({"errors":[{"code":"NAME_UNKNOWN","message":"no such thing"}]})";
      } else {
        r = it->second;
      }
    }
    if (r.ranges && !range.empty() && r.status == 200) {
      size_t from = std::stoul(range);
      const size_t total = r.body.size();
      r.status = 206;
      r.body = r.body.substr(std::min(from, total));
      r.headers.emplace_back("Content-Range", "bytes " + std::to_string(from) + "-" + std::to_string(total - 1) + "/" +
                                                  std::to_string(total));
    }
    std::string head = "HTTP/1.1 " + std::to_string(r.status) + " X\r\nContent-Type: " + r.content_type + "\r\n";
    if (r.send_length) head += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
    for (const auto& [k, v] : r.headers) head += k + ": " + v + "\r\n";
    head += "Connection: close\r\n\r\n";
    auto send_all = [&](const std::string& data) {
      size_t off = 0;
      while (off < data.size()) {
        ssize_t n = send(c, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += static_cast<size_t>(n);
      }
      return true;
    };
    if (!send_all(head)) return;
    for (int waited = 0; waited < r.stall_ms && !stop_; waited += 10) usleep(10 * 1000);
    if (r.drip_ms > 0) {
      for (char ch : r.body) {
        if (stop_ || !send_all(std::string(1, ch))) return;
        usleep(r.drip_ms * 1000);
      }
    } else if (!send_all(r.body.substr(0, r.cut_after))) {
      return;
    }
    shutdown(c, SHUT_WR);
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::thread> connections_;  // touched by thread_ only, until joined
  std::mutex mu_;
  std::map<std::string, Route> routes_;
  std::map<std::string, std::vector<Route>> once_;
  std::map<std::string, std::vector<std::string>> ranges_;
  std::map<std::string, int> hits_;
};

// ---- the suite: one docker-registry and one OCI layout for all cases --------

struct Layout {
  std::string dir;
  json manifest;         // the image manifest (gzip layers)
  std::string manifest_bytes;
  std::string config;    // config blob
  std::vector<std::string> layers;  // layer blobs, bottom first
};

class RegistryPullTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!MissingTools().empty()) return;
    work_ = new std::string(fs::temp_directory_path() / ("paddock-registry-test-" + std::to_string(getpid())));
    fs::create_directories(*work_);
    std::string rootfs = testing::EnsureBusyboxRootfs();
    // An OCI layout written by umoci (not by Paddock): the busybox rootfs, then a
    // second layer with one file, and config defaults.
    std::string L = *work_ + "/oci", B = *work_ + "/bundle";
    Sh("umoci init --layout " + L + " && umoci new --image " + L + ":busybox && umoci unpack --image " + L +
       ":busybox " + B + " >/dev/null && cp -a " + rootfs + "/. " + B + "/rootfs/ && umoci repack --refresh-bundle "
       "--image " + L + ":busybox " + B + " && echo pulled > " + B + "/rootfs/etc/pulled && umoci repack --image " +
       L + ":busybox " + B + " && umoci config --image " + L + ":busybox --config.env GREETING=hi");
    layout_ = new Layout{L, {}, {}, {}, {}};
    auto blob = [&](const std::string& digest) { return testing::ReadWholeFile(L + "/blobs/sha256/" + digest.substr(7)); };
    json index = json::parse(testing::ReadWholeFile(L + "/index.json"));
    layout_->manifest_bytes = blob(index["manifests"][0]["digest"]);
    layout_->manifest = json::parse(layout_->manifest_bytes);
    layout_->config = blob(layout_->manifest["config"]["digest"]);
    for (const auto& l : layout_->manifest["layers"]) layout_->layers.push_back(blob(l["digest"]));

    // docker-registry on a free loopback port, its storage in the work dir.
    port_ = StartRegistry("plain", "", &registry_pid_);
    ASSERT_GT(port_, 0);
    // Pushed by skopeo: OCI manifest with gzip layers, Docker schema 2, zstd layers.
    const std::string dst = "docker://127.0.0.1:" + std::to_string(port_);
    Sh("skopeo copy -q --dest-tls-verify=false oci:" + L + ":busybox " + dst + "/test/busybox:1");
    Sh("skopeo copy -q --dest-tls-verify=false --format v2s2 oci:" + L + ":busybox " + dst + "/test/busydocker:1");
    Sh("skopeo copy -q --dest-compress --dest-compress-format zstd oci:" + L + ":busybox oci:" + *work_ +
       "/ociz:busybox && skopeo copy -q --dest-tls-verify=false oci:" + *work_ + "/ociz:busybox " + dst +
       "/test/busyzstd:1");
  }
  // docker-registry on a free loopback port (tests/support/docker_registry.h),
  // `yaml` being lines under http: (TLS) or ""; its port, or 0.
  static int StartRegistry(const std::string& tag, const std::string& yaml, pid_t* pid) {
    return testing::StartDockerRegistry(*work_, tag, yaml, pid);
  }
  static void StopRegistry(pid_t pid) { testing::StopDockerRegistry(pid); }
  static void TearDownTestSuite() {
    StopRegistry(registry_pid_);
    if (work_) fs::remove_all(*work_);
    delete work_;
    delete layout_;
  }

  void SetUp() override {
    if (std::string why = MissingTools(); !why.empty()) GTEST_SKIP() << why;
    testing::DaemonOptions o;
    o.allow_dir_images = false;
    daemon_.emplace(o);
    ASSERT_EQ(daemon_->Start(), "");
  }

  // A new daemon with an empty store, for cases that must fetch again.
  void FreshDaemon() {
    daemon_.reset();
    testing::DaemonOptions o;
    o.allow_dir_images = false;
    daemon_.emplace(o);
    ASSERT_EQ(daemon_->Start(), "");
  }

  std::string Ref(const std::string& repo_tag) const { return "127.0.0.1:" + std::to_string(port_) + "/" + repo_tag; }
  testing::ProgramResult Cli(std::vector<std::string> args) { return daemon_->Cli(std::move(args)); }
  json PullJson(const std::string& ref, std::vector<std::string> more = {}) {
    std::vector<std::string> args{"--json", "image", "pull", ref};
    args.insert(args.end(), more.begin(), more.end());
    auto r = Cli(args);
    EXPECT_EQ(r.code, 0) << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }
  // A container from `image` runs echo ok (and sees the image's second layer).
  void RunsEchoOk(const std::string& image) {
    auto c = Cli({"sandbox", "create", "--substrate", "container", "--image", image});
    ASSERT_EQ(c.code, 0) << c.err;
    std::string id = c.out.substr(0, c.out.find('\n'));
    auto e = Cli({"sandbox", "exec", id, "--", "echo", "ok"});
    EXPECT_EQ(e.code, 0) << e.err;
    EXPECT_EQ(e.out, "ok\n");
    auto f = Cli({"sandbox", "exec", id, "--shell", "cat /etc/pulled; echo $GREETING"});
    EXPECT_EQ(f.out, "pulled\nhi\n") << f.err;
    Cli({"sandbox", "destroy", id});
  }
  // The store holds no image, and no pull left anything staged.
  void StoreIsEmpty() {
    json ls = json::parse(Cli({"--json", "image", "ls"}).out, nullptr, false);
    ASSERT_FALSE(ls.is_discarded());
    EXPECT_TRUE(ls["images"].empty()) << ls.dump();
    std::string staging = daemon_->state_dir() + "/images/staging";
    EXPECT_TRUE(!fs::exists(staging) || fs::is_empty(staging)) << staging;
    std::string records = daemon_->state_dir() + "/images/layers/sha256";
    EXPECT_TRUE(!fs::exists(records) || fs::is_empty(records)) << records;
    // Nor in the layer cache, which a pull unpacks into as layers stream.
    std::string cache = daemon_->state_dir() + "/layer-cache";
    if (fs::exists(cache))
      for (const auto& d : fs::directory_iterator(cache))
        EXPECT_TRUE(d.path().filename() == ".locks" || (d.path().filename() == ".tmp" && fs::is_empty(d.path())))
            << d.path();
  }
  // A failing pull: exit 1, the status code, and every fragment in the message.
  void PullFails(const std::string& ref, const std::string& code, const std::vector<std::string>& fragments,
                 std::vector<std::string> more = {}) {
    std::vector<std::string> args{"--json", "image", "pull", ref};
    args.insert(args.end(), more.begin(), more.end());
    auto r = Cli(args);
    EXPECT_EQ(r.code, 1) << r.out;
    json j = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out << r.err;
    EXPECT_EQ(j["error"]["code"], code) << ref << ": " << r.out;
    for (const auto& f : fragments) EXPECT_THAT(j["error"]["message"].get<std::string>(), HasSubstr(f)) << ref;
  }

  // MiniRegistry routes for the layout's image under `repo`; `layer` replaces
  // how layer `index` is served when given.
  void ServeImage(MiniRegistry& m, const std::string& repo, std::optional<Route> layer = std::nullopt,
                  size_t index = 0) {
    const auto& man = layout_->manifest;
    m.Set("/v2/" + repo + "/manifests/1", {200, "application/vnd.oci.image.manifest.v1+json", layout_->manifest_bytes});
    m.Set("/v2/" + repo + "/blobs/" + man["config"]["digest"].get<std::string>(), {200, "application/octet-stream", layout_->config});
    for (size_t i = 0; i < layout_->layers.size(); ++i)
      m.Set("/v2/" + repo + "/blobs/" + man["layers"][i]["digest"].get<std::string>(),
            i == index && layer ? *layer : Route{200, "application/octet-stream", layout_->layers[i]});
  }

  static std::string* work_;
  static Layout* layout_;
  static int port_;
  static pid_t registry_pid_;
  std::optional<testing::DaemonProcess> daemon_;
};
std::string* RegistryPullTest::work_ = nullptr;
Layout* RegistryPullTest::layout_ = nullptr;
int RegistryPullTest::port_ = 0;
pid_t RegistryPullTest::registry_pid_ = 0;

TEST_F(RegistryPullTest, PullHasHelp) {
  auto r = Cli({"image", "pull", "--help"});
  EXPECT_EQ(r.code, 0) << r.err;
  for (const char* s : {"--name", "--insecure-registry", "--platform", "--ca-file"}) EXPECT_THAT(r.out, HasSubstr(s));
}

TEST_F(RegistryPullTest, PulledFromDockerRegistryRunsAndASecondPullFetchesNoLayer) {
  const std::string ref = Ref("test/busybox:1");
  json first = PullJson(ref);
  EXPECT_EQ(first["layers_total"], 2);
  EXPECT_EQ(first["layers_new"], 2);
  EXPECT_EQ(first["names"], json::array({ref}));
  EXPECT_GT(first["bytes_fetched"].get<uint64_t>(), 1000u);
  EXPECT_EQ(first["manifest_digest"], storage::Sha256::Of(layout_->manifest_bytes).str());
  // Unpacked into the layer cache while downloading, and stored as the
  // registry's gzip blobs (same digests), before any sandbox asked for them.
  json ins = json::parse(Cli({"--json", "image", "inspect", ref}).out);
  ASSERT_EQ(ins["layers"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(ins["layers"][i]["compression"], "gzip");
    EXPECT_EQ(ins["layers"][i]["blob"], layout_->manifest["layers"][i]["digest"]);
    EXPECT_EQ(ins["layers"][i]["materialized"], true);
    const std::string hex = ins["layers"][i]["diff_id"].get<std::string>().substr(7);
    EXPECT_TRUE(fs::exists(daemon_->state_dir() + "/layer-cache/" + hex + "/marker.json")) << hex;
  }
  RunsEchoOk(ref);

  json again = PullJson(ref);
  EXPECT_EQ(again["layers_new"], 0);
  EXPECT_EQ(again["bytes_fetched"], 0);
  EXPECT_EQ(again["image"], first["image"]);
  json ls = json::parse(Cli({"--json", "image", "ls"}).out);
  ASSERT_EQ(ls["images"].size(), 1u);
  EXPECT_EQ(ls["images"][0]["names"], json::array({ref}));

  // Without --json: progress on stderr, the image id and name on stdout.
  auto text = Cli({"image", "pull", ref, "--name", "bb:pulled"});
  EXPECT_EQ(text.code, 0) << text.err;
  EXPECT_THAT(text.out, HasSubstr("bb:pulled"));
  EXPECT_THAT(text.err, HasSubstr("2 layers, 0 to fetch"));
  RunsEchoOk("bb:pulled");

  PullFails(Ref("test/busybox:nope"), "NOT_FOUND", {"manifest nope", Ref("test/busybox:nope"), "MANIFEST_UNKNOWN"});
}

TEST_F(RegistryPullTest, DockerSchema2AndZstdLayersShareTheStoredLayers) {
  json docker = PullJson(Ref("test/busydocker:1"));
  EXPECT_EQ(docker["layers_new"], 2);
  RunsEchoOk(Ref("test/busydocker:1"));
  // The same tars compressed with zstd: same diff_ids, nothing fetched.
  json zstd = PullJson(Ref("test/busyzstd:1"));
  EXPECT_EQ(zstd["layers_new"], 0);
  EXPECT_EQ(zstd["image"], docker["image"]);
  RunsEchoOk(Ref("test/busyzstd:1"));
}

TEST_F(RegistryPullTest, TlsRegistryIsVerifiedAgainstTheCaFile) {
  // A CA and a server certificate for 127.0.0.1 made here with the openssl CLI,
  // and a second, unrelated CA.
  const std::string d = *work_ + "/tls";
  fs::create_directories(d);
  Sh("cd " + d + " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
     "-subj /CN=paddock-test-ca 2>/dev/null && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr "
     "-subj /CN=127.0.0.1 2>/dev/null && printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && openssl x509 -req "
     "-in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null && "
     "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other "
     "2>/dev/null");
  pid_t pid = 0;
  int port = StartRegistry("tls", "  tls:\\n    certificate: " + d + "/srv.pem\\n    key: " + d + "/srv.key\\n", &pid);
  ASSERT_GT(port, 0);
  const std::string ref = "127.0.0.1:" + std::to_string(port) + "/test/busybox:tls";
  Sh("skopeo copy -q --dest-tls-verify=false oci:" + layout_->dir + ":busybox docker://" + ref);

  PullFails(ref, "PERMISSION_DENIED", {"TLS certificate verification failed for 127.0.0.1"},
            {"--ca-file", d + "/other.pem"});
  StoreIsEmpty();
  json j = PullJson(ref, {"--ca-file", d + "/ca.pem"});
  EXPECT_EQ(j["layers_new"], 2);
  RunsEchoOk(ref);
  StopRegistry(pid);
}

TEST_F(RegistryPullTest, IndexPicksThePlatformAndBlobRedirectsAreFollowed) {
  MiniRegistry m;
  ServeImage(m, "multi");
  const std::string man_digest = storage::Sha256::Of(layout_->manifest_bytes).str();
  json index = {{"schemaVersion", 2},
                {"mediaType", "application/vnd.oci.image.index.v1+json"},
                {"manifests",
                 {{{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                   {"digest", "sha256:" + std::string(64, 'a')},
                   {"size", 10},
                   {"platform", {{"os", "linux"}, {"architecture", "arm64"}}}},
                  {{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                   {"digest", man_digest},
                   {"size", layout_->manifest_bytes.size()},
                   {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}}}}};
  m.Set("/v2/multi/manifests/1", {200, "application/vnd.oci.image.index.v1+json", index.dump()});
  m.Set("/v2/multi/manifests/" + man_digest, {200, "application/vnd.oci.image.manifest.v1+json", layout_->manifest_bytes});
  // The first layer lives elsewhere: a relative redirect, then an absolute one.
  const std::string l0 = layout_->manifest["layers"][0]["digest"];
  m.Set("/v2/multi/blobs/" + l0, {307, "text/plain", "", {{"Location", "/storage/a"}}});
  m.Set("/storage/a", {302, "text/plain", "", {{"Location", "http://" + m.host() + "/storage/b"}}});
  m.Set("/storage/b", {200, "application/octet-stream", layout_->layers[0]});

  const std::string ref = m.host() + "/multi:1";
  PullFails(ref, "NOT_FOUND", {"no image for linux/s390x", "linux/arm64, linux/amd64"}, {"--platform", "linux/s390x"});
  json j = PullJson(ref, {"--name", "multi:1"});
  EXPECT_EQ(j["layers_new"], 2);
  EXPECT_EQ(j["manifest_digest"], man_digest);
  EXPECT_EQ(m.Hits("/storage/b"), 1);
  EXPECT_EQ(m.Hits("/v2/multi/manifests/sha256:" + std::string(64, 'a')), 0);
  RunsEchoOk("multi:1");
}

TEST_F(RegistryPullTest, ALayerWhoseBytesDoNotMatchItsDigestIsRefusedAndNothingIsStored) {
  MiniRegistry m;
  // Real gzip bytes of the right length, from another layer: the tar is valid,
  // only the digest check can catch it.
  std::string wrong = layout_->layers[0];
  wrong[wrong.size() / 2] ^= 0x01;
  ServeImage(m, "bad", Route{200, "application/octet-stream", wrong});
  const std::string ref = m.host() + "/bad:1";
  auto r = Cli({"image", "pull", ref});
  EXPECT_EQ(r.code, 1);
  // Either the digest check or the gzip CRC catches a flipped bit; both name the layer.
  EXPECT_THAT(r.err, HasSubstr(ref));
  EXPECT_THAT(r.err, HasSubstr(layout_->manifest["layers"][0]["digest"].get<std::string>()));
  StoreIsEmpty();

  // The second layer's bytes served for the first: a valid layer, wrong digest.
  ServeImage(m, "swapped", Route{200, "application/octet-stream", layout_->layers[1]});
  json man = layout_->manifest;
  man["layers"][0]["size"] = layout_->layers[1].size();
  m.Set("/v2/swapped/manifests/1", {200, "application/vnd.oci.image.manifest.v1+json", man.dump()});
  PullFails(m.host() + "/swapped:1", "DATA_LOSS", {"does not match its digest", "nothing was stored",
                                      m.host() + "/swapped:1"});
  StoreIsEmpty();

  // Longer than declared, with no Content-Length to give it away first.
  ServeImage(m, "long", Route{200, "application/octet-stream", layout_->layers[0] + std::string(4096, 'x'), {}, false});
  PullFails(m.host() + "/long:1", "DATA_LOSS", {"longer than the", "bytes its manifest declares"});
  // With one, it is refused before any byte is read.
  ServeImage(m, "announced", Route{200, "application/octet-stream", layout_->layers[0] + "x"});
  PullFails(m.host() + "/announced:1", "DATA_LOSS", {"is announced as"});
  // Shorter: the connection closes early.
  ServeImage(m, "short", Route{200, "application/octet-stream", layout_->layers[0].substr(0, 1000), {}, false});
  PullFails(m.host() + "/short:1", "DATA_LOSS", {"ended after 1000 of its"});
  StoreIsEmpty();

  // The registry is fine again: the next pull works.
  ServeImage(m, "bad");
  json j = PullJson(m.host() + "/bad:1");
  EXPECT_EQ(j["layers_new"], 2);
}

TEST_F(RegistryPullTest, SlowRegistriesMeetTheDeadlineOrTheIdleTimeout) {
  daemon_.reset();
  testing::DaemonOptions o;
  o.allow_dir_images = false;
  o.args = {"--registry-timeout-ms", "1500", "--registry-idle-timeout-ms", "700"};
  daemon_.emplace(o);
  ASSERT_EQ(daemon_->Start(), "");
  MiniRegistry m;
  // A byte every 50 ms never trips the idle timeout; the request's deadline ends it.
  Route drip{200, "application/vnd.oci.image.manifest.v1+json", layout_->manifest_bytes};
  drip.drip_ms = 50;
  m.Set("/v2/drip/manifests/1", drip);
  auto t0 = std::chrono::steady_clock::now();
  PullFails(m.host() + "/drip:1", "DEADLINE_EXCEEDED", {m.host() + "/drip:1", "the request's deadline passed"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(6));
  // Headers, then silence.
  Route stall{200, "application/vnd.oci.image.manifest.v1+json", layout_->manifest_bytes};
  stall.stall_ms = 3000;
  m.Set("/v2/stall/manifests/1", stall);
  PullFails(m.host() + "/stall:1", "DEADLINE_EXCEEDED", {"nothing received for 700 ms while reading the body"});
  // A dripping layer: its deadline is the request's plus its size at 256 KiB/s.
  Route slow{200, "application/octet-stream", layout_->layers[1]};
  slow.drip_ms = 50;
  ServeImage(m, "slowlayer", slow, 1);
  PullFails(m.host() + "/slowlayer:1", "DEADLINE_EXCEEDED",
            {"layer " + layout_->manifest["layers"][1]["digest"].get<std::string>(), "deadline passed"});
  StoreIsEmpty();
}

TEST_F(RegistryPullTest, ACancelledPullLeavesNothingBehind) {
  MiniRegistry m;
  // The first layer arrives whole (and is staged); the second drips for seconds.
  Route slow{200, "application/octet-stream", layout_->layers[1]};
  slow.drip_ms = 100;
  ServeImage(m, "cancel", slow, 1);
  const std::string blob = "/v2/cancel/blobs/" + layout_->manifest["layers"][1]["digest"].get<std::string>();
  pid_t cli = testing::SpawnProgram({testing::BuiltBinary("paddock"), "image", "pull", m.host() + "/cancel:1"},
                                    daemon_->dir() + "/cancelled-pull.log", {"PADDOCK_SOCKET=" + daemon_->socket_path()});
  ASSERT_GT(cli, 0);
  for (int i = 0; i < 200 && m.Hits(blob) == 0; ++i) usleep(50 * 1000);
  ASSERT_EQ(m.Hits(blob), 1) << testing::ReadWholeFile(daemon_->dir() + "/cancelled-pull.log");
  usleep(300 * 1000);
  kill(cli, SIGKILL);  // the client goes away mid-download: the call is cancelled
  waitpid(cli, nullptr, 0);
  const std::string staging = daemon_->state_dir() + "/images/staging";
  bool clean = false;
  for (int i = 0; i < 100 && !clean; ++i) {
    clean = !fs::exists(staging) || fs::is_empty(staging);
    if (!clean) usleep(50 * 1000);
  }
  EXPECT_TRUE(clean) << "a cancelled pull left files in " << staging;
  StoreIsEmpty();
  EXPECT_THAT(daemon_->LogTail(), HasSubstr("cancelled"));
}

TEST_F(RegistryPullTest, TcpClientsReachNeitherLoopbackNorPlainHttpRegistries) {
  daemon_.reset();
  testing::DaemonOptions o;
  o.allow_dir_images = false;
  daemon_.emplace(o);
  const std::string token_file = daemon_->dir() + "/token";
  std::ofstream(token_file) << "registry-test-token";
  chmod(token_file.c_str(), 0600);
  const int tcp_port = testing::FreeLoopbackPort();
  ASSERT_EQ(daemon_->Start({"--listen-tcp", "127.0.0.1:" + std::to_string(tcp_port), "--token-file", token_file}), "");
  client::ClientOptions co;
  co.tcp_target = "127.0.0.1:" + std::to_string(tcp_port);
  co.token = "registry-test-token";
  auto tcp = client::Client::Connect(co);
  ASSERT_TRUE(tcp.ok()) << tcp.status().message();

  auto r = tcp->ImagePull(Ref("test/busybox:1"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("a loopback address, which only clients on paddockd's unix socket"));
  r = tcp->ImagePull("localhost:" + std::to_string(port_) + "/test/busybox:1", {});
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  client::ImagePullOptions insecure;
  insecure.insecure_registries = {"10.0.0.7:5000"};
  r = tcp->ImagePull("10.0.0.7:5000/x:1", insecure);
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("--insecure-registry is only for clients on paddockd's unix socket"));
  client::ImagePullOptions ca;
  ca.ca_file = "/etc/ssl/certs/ca-certificates.crt";
  r = tcp->ImagePull("registry.example/x:1", ca);
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  // The same pull over the unix socket works.
  EXPECT_EQ(PullJson(Ref("test/busybox:1"))["layers_new"], 2);
}

TEST_F(RegistryPullTest, RegistryErrorsAreMappedAndNamed) {
  MiniRegistry m;
  m.Set("/v2/auth/manifests/1", {401, "application/json",
                                 R"({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]})",
                                 {{"WWW-Authenticate", "Basic realm=\"registry\""}}});
  PullFails(m.host() + "/auth:1", "UNAUTHENTICATED", {m.host() + "/auth:1", "asks for credentials (Basic)",
                                   "none were given", "UNAUTHORIZED"});
  m.Set("/v2/denied/manifests/1", {403, "application/json", ""});
  PullFails(m.host() + "/denied:1", "PERMISSION_DENIED", {"refuses access"});
  // Longer than the retry policy waits (10 s): returned at once.
  m.Set("/v2/busy/manifests/1", {429, "application/json", "", {{"Retry-After", "70"}}});
  PullFails(m.host() + "/busy:1", "RESOURCE_EXHAUSTED", {"rate limiting", "retry after 70 s"});
  EXPECT_EQ(m.Hits("/v2/busy/manifests/1"), 1);
  m.Set("/v2/down/manifests/1", {503, "text/plain", "down"});
  PullFails(m.host() + "/down:1", "UNAVAILABLE", {"HTTP 503", "try again later", "after 4 attempts"});
  EXPECT_EQ(m.Hits("/v2/down/manifests/1"), 4);
  m.Set("/v2/huge/manifests/1", {200, "application/vnd.oci.image.manifest.v1+json", std::string(5 << 20, ' ')});
  PullFails(m.host() + "/huge:1", "DATA_LOSS", {"over the limit of 4194304 bytes"});
  m.Set("/v2/notjson/manifests/1", {200, "application/vnd.oci.image.manifest.v1+json", "<html>"});
  PullFails(m.host() + "/notjson:1", "INVALID_ARGUMENT", {"is not a JSON object"});
  m.Set("/v2/loop/manifests/1", {302, "text/plain", "", {{"Location", "/v2/loop/manifests/1"}}});
  PullFails(m.host() + "/loop:1", "UNAVAILABLE", {"more than 5 redirects"});
  // Plain HTTP only to loopback and named hosts; TLS elsewhere (the redirect
  // target is refused before any connection is made).
  m.Set("/v2/away/manifests/1", {302, "text/plain", "", {{"Location", "http://registry.example:5000/v2/x"}}});
  PullFails(m.host() + "/away:1", "PERMISSION_DENIED", {"refusing plain HTTP to registry.example:5000"});
  PullFails("Bad/Ref", "INVALID_ARGUMENT", {"image reference 'Bad/Ref'"});
  m.Set("/v2/bighead/manifests/1", {200, "application/json", "{}", {{"X-Filler", std::string(100 << 10, 'a')}}});
  PullFails(m.host() + "/bighead:1", "DATA_LOSS", {"the response headers are over 65536 bytes"});
  StoreIsEmpty();
}

TEST_F(RegistryPullTest, AHostileLayerIsRefusedNamingTheEntry) {
  // An uncompressed layer (plain tar media type) whose entry climbs out of the root.
  const std::string tar_path = daemon_->dir() + "/hostile.tar";
  Sh("python3 -c \"import tarfile, io; t = tarfile.open('" + tar_path + "', 'w'); "
     "i = tarfile.TarInfo('../escaped'); d = b'owned'; i.size = len(d); t.addfile(i, io.BytesIO(d)); t.close()\"");
  const std::string tar = testing::ReadWholeFile(tar_path);
  ASSERT_FALSE(tar.empty());
  const std::string digest = storage::Sha256::Of(tar).str();
  json config = {{"architecture", "amd64"}, {"os", "linux"}, {"config", json::object()},
                 {"rootfs", {{"type", "layers"}, {"diff_ids", {digest}}}}};
  const std::string config_bytes = config.dump();
  json manifest = {{"schemaVersion", 2},
                   {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                   {"config", {{"mediaType", "application/vnd.oci.image.config.v1+json"},
                               {"digest", storage::Sha256::Of(config_bytes).str()},
                               {"size", config_bytes.size()}}},
                   {"layers", {{{"mediaType", "application/vnd.oci.image.layer.v1.tar"},
                                {"digest", digest},
                                {"size", tar.size()}}}}};
  MiniRegistry m;
  m.Set("/v2/hostile/manifests/1", {200, "application/vnd.oci.image.manifest.v1+json", manifest.dump()});
  m.Set("/v2/hostile/blobs/" + storage::Sha256::Of(config_bytes).str(), {200, "application/octet-stream", config_bytes});
  m.Set("/v2/hostile/blobs/" + digest, {200, "application/octet-stream", tar});
  PullFails(m.host() + "/hostile:1", "INVALID_ARGUMENT", {m.host() + "/hostile:1", "layer " + digest, "../escaped"});
  StoreIsEmpty();
}

// ---- retries and resumed layers --------------------------------------------

TEST_F(RegistryPullTest, TransientFailuresAreRetriedAndPermanentOnesAreNot) {
  MiniRegistry m;
  ServeImage(m, "flaky");
  const std::string manifest = "/v2/flaky/manifests/1";
  m.Push(manifest, {503, "text/plain", "busy"});
  m.Push(manifest, {503, "text/plain", "busy"});
  // A rate limit on the config: its Retry-After is waited for.
  const std::string config = "/v2/flaky/blobs/" + layout_->manifest["config"]["digest"].get<std::string>();
  m.Push(config, {429, "application/json", "", {{"Retry-After", "1"}}});
  // A gateway error and a connection that drops before any byte, on the layers.
  const std::string l1 = "/v2/flaky/blobs/" + layout_->manifest["layers"][1]["digest"].get<std::string>();
  m.Push(l1, {502, "text/plain", "bad gateway"});
  Route dropped{200, "application/octet-stream", layout_->layers[1]};
  dropped.cut_after = 0;
  m.Push(l1, dropped);
  auto t0 = std::chrono::steady_clock::now();
  json j = PullJson(m.host() + "/flaky:1");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1000));  // the Retry-After
  EXPECT_EQ(j["layers_new"], 2);
  EXPECT_EQ(m.Hits(manifest), 3);
  EXPECT_EQ(m.Hits(config), 2);
  EXPECT_EQ(m.Hits(l1), 3);
  RunsEchoOk(m.host() + "/flaky:1");

  // 404 is an answer, not a failure to get one: asked once.
  PullFails(m.host() + "/flaky:nope", "NOT_FOUND", {"manifest nope", m.host() + "/flaky:nope"});
  EXPECT_EQ(m.Hits("/v2/flaky/manifests/nope"), 1);
  m.Set("/v2/denied/manifests/1", {403, "application/json", ""});
  PullFails(m.host() + "/denied:1", "PERMISSION_DENIED", {"refuses access"});
  EXPECT_EQ(m.Hits("/v2/denied/manifests/1"), 1);
}

TEST_F(RegistryPullTest, ALayerCutHalfWayIsResumedWithARangeRequest) {
  MiniRegistry m;
  const std::string digest = layout_->manifest["layers"][0]["digest"];
  const std::string& bytes = layout_->layers[0];
  const size_t half = bytes.size() / 2;
  Route whole{200, "application/octet-stream", bytes};
  whole.ranges = true;
  ServeImage(m, "cut", whole, 0);
  Route cut = whole;
  cut.cut_after = half;
  m.Push("/v2/cut/blobs/" + digest, cut);
  json j = PullJson(m.host() + "/cut:1");
  EXPECT_EQ(j["layers_new"], 2);
  EXPECT_EQ(m.Hits("/v2/cut/blobs/" + digest), 2);
  EXPECT_THAT(m.Ranges("/v2/cut/blobs/" + digest), ::testing::ElementsAre("bytes=" + std::to_string(half) + "-"));
  RunsEchoOk(m.host() + "/cut:1");

  // A server that ignores the range sends the whole blob again: the part
  // already had is skipped, and the image is the same. (A fresh daemon: the
  // first one has the layer.)
  FreshDaemon();
  Route plain{200, "application/octet-stream", bytes};
  ServeImage(m, "norange", plain, 0);
  Route plain_cut = plain;
  plain_cut.cut_after = half;
  m.Push("/v2/norange/blobs/" + digest, plain_cut);
  json k = PullJson(m.host() + "/norange:1");
  EXPECT_EQ(k["image"], j["image"]);
  EXPECT_EQ(m.Hits("/v2/norange/blobs/" + digest), 2);
  EXPECT_EQ(m.Ranges("/v2/norange/blobs/" + digest).size(), 1u);

  // Cut on every attempt: bounded, then a clear error; nothing stored.
  FreshDaemon();
  ServeImage(m, "alwayscut", plain_cut, 0);
  PullFails(m.host() + "/alwayscut:1", "UNAVAILABLE",
            {"layer " + digest, "closed the connection before the end of the body", "after 3 resumed downloads"});
  EXPECT_EQ(m.Hits("/v2/alwayscut/blobs/" + digest), 4);
  StoreIsEmpty();
}

TEST_F(RegistryPullTest, NewLayersAreFetchedInParallelAndProgressSumsThem) {
  MiniRegistry m;
  // Each layer's answer waits 1.5 s after its head: one after the other would
  // take 3 s or more.
  ServeImage(m, "par");
  for (size_t i = 0; i < layout_->layers.size(); ++i) {
    Route slow{200, "application/octet-stream", layout_->layers[i]};
    slow.stall_ms = 1500;
    m.Set("/v2/par/blobs/" + layout_->manifest["layers"][i]["digest"].get<std::string>(), slow);
  }
  auto t0 = std::chrono::steady_clock::now();
  auto r = Cli({"image", "pull", m.host() + "/par:1"});
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LT(took, std::chrono::milliseconds(2900));
  EXPECT_THAT(r.err, HasSubstr("2 layers, 2 to fetch"));
  EXPECT_THAT(r.err, HasSubstr("2 layers, 2 fetched"));
  RunsEchoOk(m.host() + "/par:1");
}

// ---- pull on first use -----------------------------------------------------

TEST_F(RegistryPullTest, ConcurrentCreatesNamingARegistryReferenceShareOnePull) {
  MiniRegistry m;
  // A slow first layer keeps the pull in flight while all creates arrive.
  Route slow{200, "application/octet-stream", layout_->layers[0]};
  slow.stall_ms = 1500;
  ServeImage(m, "onuse", slow, 0);
  const std::string ref = m.host() + "/onuse:1";
  const std::string manifest = "/v2/onuse/manifests/1";
  constexpr int kCreates = 8;
  std::vector<testing::ProgramResult> created(kCreates);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCreates; ++i)
    threads.emplace_back([&, i] { created[i] = Cli({"sandbox", "create", "--substrate", "container", "--image", ref}); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(m.Hits(manifest), 1);
  for (auto& c : created) {
    ASSERT_EQ(c.code, 0) << c.err;
    std::string id = c.out.substr(0, c.out.find('\n'));
    auto e = Cli({"sandbox", "exec", id, "--", "echo", "ok"});
    EXPECT_EQ(e.out, "ok\n") << e.err;
    Cli({"sandbox", "destroy", id});
  }
  EXPECT_THAT(daemon_->LogTail(64 << 10), HasSubstr("pulled " + ref + " on first use"));
  // Served from the store now: nothing is fetched.
  RunsEchoOk(ref);
  EXPECT_EQ(m.Hits(manifest), 1);
  json ls = json::parse(Cli({"--json", "image", "ls"}).out);
  ASSERT_EQ(ls["images"].size(), 1u);
  EXPECT_EQ(ls["images"][0]["names"], json::array({ref}));

  // A reference the registry lacks: NOT_FOUND naming it; not cached, so it is asked again.
  for (int i = 0; i < 2; ++i) {
    auto c = Cli({"--json", "sandbox", "create", "--substrate", "container", "--image", m.host() + "/nope:1"});
    EXPECT_NE(c.code, 0);
    EXPECT_THAT(c.out + c.err, HasSubstr("NOT_FOUND"));
    EXPECT_THAT(c.out + c.err, HasSubstr(m.host() + "/nope:1"));
  }
  EXPECT_EQ(m.Hits("/v2/nope/manifests/1"), 2);
  // A name without a host part stays a store name: nothing is asked of any registry.
  auto c = Cli({"sandbox", "create", "--substrate", "container", "--image", "onuse:1"});
  EXPECT_NE(c.code, 0);
  EXPECT_THAT(c.err, HasSubstr("image ls"));
}

TEST_F(RegistryPullTest, TcpClientsCreatesPullUnderTheirPullRules) {
  daemon_.reset();
  testing::DaemonOptions o;
  o.allow_dir_images = false;
  daemon_.emplace(o);
  const std::string token_file = daemon_->dir() + "/token";
  std::ofstream(token_file) << "registry-test-token";
  chmod(token_file.c_str(), 0600);
  const int tcp_port = testing::FreeLoopbackPort();
  ASSERT_EQ(daemon_->Start({"--listen-tcp", "127.0.0.1:" + std::to_string(tcp_port), "--token-file", token_file,
                            "--insecure-registry", "10.0.0.7:5000"}),
            "");
  client::ClientOptions co;
  co.tcp_target = "127.0.0.1:" + std::to_string(tcp_port);
  co.token = "registry-test-token";
  auto tcp = client::Client::Connect(co);
  ASSERT_TRUE(tcp.ok()) << tcp.status().message();
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = Ref("test/busybox:1");
  auto r = tcp->Create(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("a loopback address, which only clients on paddockd's unix socket"));
  // The daemon's --insecure-registry is not for TCP clients either: their
  // pull speaks TLS to it (which fails however the host answers, if at all).
  spec.image = "10.0.0.7:5000/x:1";
  r = tcp->Create(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("10.0.0.7:5000/x:1"));
  EXPECT_TRUE(r.status().message().find("TLS") != std::string::npos ||
              r.status().message().find("https://10.0.0.7:5000") != std::string::npos ||
              r.status().message().find("cannot connect") != std::string::npos)
      << r.status().message();
  EXPECT_THAT(daemon_->LogTail(64 << 10), ::testing::Not(HasSubstr("http://10.0.0.7")));
  // Once a unix-socket client has pulled it, the name is in the store and any client may use it.
  RunsEchoOk(Ref("test/busybox:1"));
  spec.image = Ref("test/busybox:1");
  r = tcp->Create(spec);
  ASSERT_TRUE(r.ok()) << r.status().message();
}

TEST_F(RegistryPullTest, ARolloutTaskNamingARegistryReferenceRuns) {
  if (!fs::exists("/usr/local/share/paddock/deepseek-v3-tokenizer.json") && !getenv("PADDOCK_TOKENIZER"))
    GTEST_SKIP() << "no V4 tokenizer installed (scripts/install-deps.sh)";
  const std::string ref = Ref("test/busydocker:1");
  const std::string dir = daemon_->dir() + "/rollout";
  fs::create_directories(dir);
  std::ofstream(dir + "/tasks.jsonl") << testing::CountingTasks(ref, 2, 1);
  std::ofstream(dir + "/script.json") << testing::CountingScript(1);
  auto r = Cli({"run", dir + "/tasks.jsonl", "--policy", "scripted", "--policy-script", dir + "/script.json",
                "--id", "pull-run", "--out", dir + "/out"});
  ASSERT_EQ(r.code, 0) << r.out << r.err << daemon_->LogTail();
  auto lines = testing::ReadWholeFile(dir + "/out/pull-run/episodes.jsonl");
  int rewarded = 0;
  std::istringstream in(lines);
  for (std::string line; std::getline(in, line);) {
    json l = json::parse(line, nullptr, false);
    if (!l.is_discarded() && l.value("reward", 0.0) == 1.0) ++rewarded;
  }
  EXPECT_EQ(rewarded, 2) << lines.substr(0, 2000);
  EXPECT_THAT(daemon_->LogTail(64 << 10), HasSubstr("pulled " + ref + " on first use"));
}

}  // namespace
}  // namespace paddock
