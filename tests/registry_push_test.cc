// `paddock image push` and registry auth (storage/registry/push.h, auth.h,
// credentials.h; the Images.Push RPC; the CLI's --creds-file):
//   * docker config parsing and WWW-Authenticate challenges, without a daemon;
//   * Debian's docker-registry on loopback, plain: a pushed image comes back
//     through skopeo + umoci as the same file tree Paddock materialises; a second
//     push sends no blob; a push to another repository mounts every blob; a
//     container's snapshot pushed by one paddockd is pulled by a second one (its
//     own state dir) and a sandbox from it sees the snapshot's file; an lz4
//     store's layers go out as plain tars and come back with their diff_ids;
//   * docker-registry with TLS (a test CA) and htpasswd (bcrypt) auth: push and
//     pull with the right credentials work; wrong or no credentials are
//     UNAUTHENTICATED naming the reference, and nothing is stored;
//   * FakeRegistry, a small server in this file, for the bearer token flow
//     (challenge → token with basic credentials → retry), a token server that
//     refuses, a token the registry refuses, an oversized token answer, a blob
//     redirect to another host (no Authorization follows it) and a plain-HTTP
//     realm on a non-loopback host (no credentials sent); a push through it asks
//     for push scope once and sends no Authorization to an upload location on
//     another host;
//   * an image pulled by a store that never pushed it is mounted, not
//     uploaded, when pushed to another repository (pulls record blob sources);
//   * chunked uploads (PATCH): a 3.5 MiB layer in 1 MiB chunks to
//     docker-registry, pulled back by another daemon byte-identical; against
//     FakeRegistry with injected faults, a chunk broken half way is resumed
//     from the upload's status (only the missing half sent again), a registry
//     refusing PATCH gets the blob in one PUT, and endless failures are bounded;
//   * a TCP client's push obeys the loopback and plain-HTTP rules of pulls.
// Skipped (with the reason) only when docker-registry, skopeo, umoci or htpasswd
// are not installed (scripts/install-deps.sh installs them).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "paddock/client.h"
#include "storage/digest.h"
#include "storage/image_import.h"
#include "storage/image_store.h"
#include "storage/registry/auth.h"
#include "storage/registry/push.h"
#include "storage/registry/credentials.h"
#include "tests/support/daemon_process.h"
#include "tests/support/docker_registry.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using nlohmann::json;

namespace paddock {
namespace {

namespace reg = storage::registry;

std::string Sh(const std::string& cmd) {
  auto r = testing::RunProgram({"/bin/sh", "-c", cmd});
  EXPECT_EQ(r.code, 0) << cmd << "\n" << r.out << r.err;
  return r.out;
}

std::string MissingTools() {
  for (const char* t : {"/usr/bin/docker-registry", "/usr/bin/skopeo", "/usr/bin/umoci", "/usr/bin/htpasswd"})
    if (access(t, X_OK) != 0) return std::string(t) + " is not installed (scripts/install-deps.sh installs it)";
  return "";
}

// ---- without a daemon -------------------------------------------------------

TEST(RegistryCredentials, DockerConfigEntriesAreFoundByRegistry) {
  const std::string cfg = json{{"auths",
                                {{"127.0.0.1:5000", {{"auth", reg::Base64Encode("alice:pa:ss")}}},
                                 {"https://reg.example/v2/", {{"username", "bob"}, {"password", "pw"}}},
                                 {"https://index.docker.io/v1/", {{"auth", reg::Base64Encode("hub:tok")}}},
                                 {"empty.example", json::object()}}},
                               {"credsStore", "desktop"}}
                              .dump();
  auto a = reg::FindCredentials(cfg, "127.0.0.1:5000", "cfg.json");
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->creds.username, "alice");
  EXPECT_EQ(a->creds.password, "pa:ss");  // split at the first ':'
  auto b = reg::FindCredentials(cfg, "reg.example", "cfg.json");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->creds.username, "bob");
  auto hub = reg::FindCredentials(cfg, "docker.io", "cfg.json");
  ASSERT_TRUE(hub.ok());
  EXPECT_EQ(hub->creds.password, "tok");
  // Left to a credential helper: anonymous, with a note naming the helper.
  auto helper = reg::FindCredentials(cfg, "empty.example", "cfg.json");
  ASSERT_TRUE(helper.ok());
  EXPECT_TRUE(helper->creds.empty());
  EXPECT_THAT(helper->note, HasSubstr("docker-credential-desktop"));
  auto none = reg::FindCredentials(R"({"auths":{}})", "other.example", "cfg.json");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->creds.empty());
  EXPECT_EQ(none->note, "");
  // Malformed: INVALID_ARGUMENT naming the file, never the secret.
  auto bad = reg::FindCredentials(R"({"auths":{"h:1":{"auth":"bm9jb2xvbg=="}}})", "h:1", "/x/cfg.json");
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("/x/cfg.json"));
  EXPECT_FALSE(reg::FindCredentials("[1]", "h", "f").ok());
  EXPECT_EQ(reg::RegistryOfReference("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000");
  EXPECT_EQ(reg::RegistryOfReference("library/debian"), "docker.io");
  EXPECT_EQ(reg::RegistryOfReference("localhost/x"), "localhost");
  EXPECT_EQ(reg::Base64Decode(reg::Base64Encode("a")).value(), "a");
  EXPECT_EQ(reg::Base64Decode(reg::Base64Encode("ab")).value(), "ab");
  EXPECT_EQ(reg::Base64Encode("user:pass"), "dXNlcjpwYXNz");
}

TEST(RegistryCredentials, ChallengesAreParsed) {
  auto c = reg::ParseChallenge(
      R"(Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push")");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->scheme, "bearer");
  EXPECT_EQ(c->params["realm"], "https://auth.example/token");
  EXPECT_EQ(c->params["service"], "registry.example");
  EXPECT_EQ(c->params["scope"], "repository:a/b:pull,push");
  auto b = reg::ParseChallenge("Basic realm=\"a \\\"quoted\\\" realm\"");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->scheme, "basic");
  EXPECT_EQ(b->params["realm"], "a \"quoted\" realm");
  EXPECT_FALSE(reg::ParseChallenge("").ok());
  EXPECT_FALSE(reg::ParseChallenge("Bearer realm=\"unterminated").ok());
  auto u = reg::Url::Parse("http://10.0.0.7:5000/");
  EXPECT_FALSE(reg::MaySendCredentials(*u));
  EXPECT_TRUE(reg::MaySendCredentials(reg::Url::Parse("http://127.0.0.1:5000/").value()));
  EXPECT_TRUE(reg::MaySendCredentials(reg::Url::Parse("https://10.0.0.7/").value()));
}

// ---- FakeRegistry: a handler per request, one request per connection --------

struct FakeRequest {
  std::string method, target;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
};
struct FakeResponse {
  int status = 200;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

class FakeRegistry {
 public:
  explicit FakeRegistry(std::function<FakeResponse(const FakeRequest&)> handler) : handler_(std::move(handler)) {
    fd_ = testing::ListenOnLoopback(&port_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeRegistry() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }
  std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  std::vector<FakeRequest> Requests() {
    std::lock_guard<std::mutex> l(mu_);
    return requests_;
  }

 private:
  void Loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      Handle(c);  // one at a time: a client makes one request per connection
      close(c);
    }
  }
  void Handle(int c) {
    std::string data;
    char buf[16384];
    size_t head_end;
    while ((head_end = data.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) return;
      data.append(buf, static_cast<size_t>(n));
    }
    FakeRequest req;
    std::string head = data.substr(0, head_end);
    size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
    req.method = head.substr(0, sp1);
    req.target = head.substr(sp1 + 1, sp2 - sp1 - 1);
    size_t pos = head.find("\r\n");
    while (pos != std::string::npos && pos < head.size()) {
      size_t next = head.find("\r\n", pos + 2);
      std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string k = line.substr(0, colon);
        for (char& ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        size_t v = line.find_first_not_of(' ', colon + 1);
        req.headers[k] = v == std::string::npos ? "" : line.substr(v);
      }
      pos = next;
    }
    req.body = data.substr(head_end + 4);
    size_t want = req.headers.count("content-length") ? std::stoul(req.headers["content-length"]) : 0;
    while (req.body.size() < want) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) break;
      req.body.append(buf, static_cast<size_t>(n));
    }
    FakeResponse resp = handler_(req);
    {
      std::lock_guard<std::mutex> l(mu_);
      requests_.push_back(req);
    }
    std::string out = "HTTP/1.1 " + std::to_string(resp.status) + " X\r\nContent-Length: " +
                      std::to_string(req.method == "HEAD" ? 0 : resp.body.size()) + "\r\n";
    for (const auto& [k, v] : resp.headers) out += k + ": " + v + "\r\n";
    out += "Connection: close\r\n\r\n";
    if (req.method != "HEAD") out += resp.body;
    size_t off = 0;
    while (off < out.size()) {
      ssize_t n = send(c, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
    shutdown(c, SHUT_WR);
  }

  std::function<FakeResponse(const FakeRequest&)> handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<FakeRequest> requests_;
};

// ---- the suite: two docker-registries, a TLS CA, an htpasswd file -----------

class RegistryPushTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!MissingTools().empty()) return;
    work_ = new std::string(fs::temp_directory_path() / ("paddock-push-test-" + std::to_string(getpid())));
    fs::create_directories(*work_ + "/docker-config");
    // The CLI reads the user's docker config by default: an empty one here, so a
    // developer's own ~/.docker/config.json plays no part.
    setenv("DOCKER_CONFIG", (*work_ + "/docker-config").c_str(), 1);
    const std::string d = *work_ + "/tls";
    fs::create_directories(d);
    Sh("cd " + d + " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
       "-subj /CN=paddock-test-ca 2>/dev/null && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr "
       "-subj /CN=127.0.0.1 2>/dev/null && printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && openssl x509 -req "
       "-in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null");
    // docker-registry's htpasswd auth takes bcrypt entries only.
    Sh("htpasswd -Bbn paddock s3cret > " + *work_ + "/htpasswd");
    WriteCreds("right.json", "paddock", "s3cret");
    WriteCreds("wrong.json", "paddock", "nope");
    plain_port_ = StartRegistry("plain", "", &plain_pid_);
    auth_port_ = StartRegistry("auth",
                               "  tls:\\n    certificate: " + d + "/srv.pem\\n    key: " + d +
                                   "/srv.key\\nauth:\\n  htpasswd:\\n    realm: paddock-test\\n    path: " + *work_ +
                                   "/htpasswd\\n",
                               &auth_pid_);
  }
  static void WriteCreds(const std::string& name, const std::string& user, const std::string& pass) {
    // Filled in per registry port by Creds(); kept as user:pass here.
    std::ofstream(*work_ + "/" + name + ".userpass") << user << ":" << pass;
  }
  // A docker config file with `which`'s user:pass for 127.0.0.1:<port>.
  static std::string Creds(const std::string& which, int port) {
    std::string up = testing::ReadWholeFile(*work_ + "/" + which + ".userpass");
    std::string path = *work_ + "/" + which + "-" + std::to_string(port);
    std::ofstream(path) << json{{"auths", {{"127.0.0.1:" + std::to_string(port), {{"auth", reg::Base64Encode(up)}}}}}}.dump();
    return path;
  }
  static int StartRegistry(const std::string& tag, const std::string& yaml, pid_t* pid) {
    return testing::StartDockerRegistry(*work_, tag, yaml, pid);
  }
  static void StopRegistry(pid_t pid) { testing::StopDockerRegistry(pid); }
  static void TearDownTestSuite() {
    StopRegistry(plain_pid_);
    StopRegistry(auth_pid_);
    if (work_) fs::remove_all(*work_);
    delete work_;
    work_ = nullptr;
  }

  void SetUp() override {
    if (std::string why = MissingTools(); !why.empty()) GTEST_SKIP() << why;
    daemon_.emplace(Options());
    ASSERT_EQ(daemon_->Start(), "");
  }
  static testing::DaemonOptions Options() {
    testing::DaemonOptions o;
    o.allow_dir_images = false;
    return o;
  }

  static std::string Plain(const std::string& repo_tag) {
    return "127.0.0.1:" + std::to_string(plain_port_) + "/" + repo_tag;
  }
  static std::string Authed(const std::string& repo_tag) {
    return "127.0.0.1:" + std::to_string(auth_port_) + "/" + repo_tag;
  }
  testing::ProgramResult Cli(std::vector<std::string> args) { return daemon_->Cli(std::move(args)); }
  json Json(testing::DaemonProcess& d, std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    auto r = d.Cli(args);
    EXPECT_EQ(r.code, 0) << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }
  json Json(std::vector<std::string> args) { return Json(*daemon_, std::move(args)); }
  // A failing command with --json: exit 1, the status code, every fragment.
  void Fails(std::vector<std::string> args, const std::string& code, const std::vector<std::string>& fragments) {
    args.insert(args.begin(), "--json");
    auto r = Cli(args);
    EXPECT_EQ(r.code, 1) << r.out;
    json j = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out << r.err;
    EXPECT_EQ(j["error"]["code"], code) << r.out;
    for (const auto& f : fragments) EXPECT_THAT(j["error"]["message"].get<std::string>(), HasSubstr(f)) << r.out;
  }
  // The busybox rootfs as a one-layer image named `name`.
  void ImportBusybox(const std::string& name) {
    auto r = Cli({"image", "import-dir", testing::EnsureBusyboxRootfs(), "--name", name, "--env", "GREETING=hi"});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  // Creates a container sandbox from `image`; its id.
  std::string Create(testing::DaemonProcess& d, const std::string& image) {
    auto c = d.Cli({"sandbox", "create", "--substrate", "container", "--image", image});
    EXPECT_EQ(c.code, 0) << c.err;
    return c.out.substr(0, c.out.find('\n'));
  }
  void StoreIsEmpty(testing::DaemonProcess& d) {
    json ls = json::parse(d.Cli({"--json", "image", "ls"}).out, nullptr, false);
    ASSERT_FALSE(ls.is_discarded());
    EXPECT_TRUE(ls["images"].empty()) << ls.dump();
  }

  static std::string* work_;
  static int plain_port_, auth_port_;
  static pid_t plain_pid_, auth_pid_;
  std::optional<testing::DaemonProcess> daemon_;
};
std::string* RegistryPushTest::work_ = nullptr;
int RegistryPushTest::plain_port_ = 0;
int RegistryPushTest::auth_port_ = 0;
pid_t RegistryPushTest::plain_pid_ = 0;
pid_t RegistryPushTest::auth_pid_ = 0;

TEST_F(RegistryPushTest, PushHasHelp) {
  auto r = Cli({"image", "push", "--help"});
  EXPECT_EQ(r.code, 0) << r.err;
  for (const char* s : {"--insecure-registry", "--ca-file", "--creds-file", "image", "ref"})
    EXPECT_THAT(r.out, HasSubstr(s));
  auto p = Cli({"image", "pull", "--help"});
  EXPECT_THAT(p.out, HasSubstr("--creds-file"));
}

TEST_F(RegistryPushTest, PushedImageComesBackAsTheTreePaddockMaterialisesAndRepushesSendNothing) {
  ImportBusybox("bb:1");
  const std::string ref = Plain("push/busybox:1");
  json first = Json({"image", "push", "bb:1", ref});
  EXPECT_EQ(first["blobs_total"], 2);  // config + one layer
  EXPECT_EQ(first["blobs_uploaded"], 2);
  EXPECT_GT(first["bytes_uploaded"].get<uint64_t>(), 100000u);

  // Back through tools that are not Paddock: skopeo to an OCI layout, umoci unpack.
  const std::string oci = daemon_->dir() + "/back", bundle = daemon_->dir() + "/bundle";
  // Recompressed to gzip on the way: Debian's umoci (0.4.7) does not read zstd layers.
  Sh("skopeo copy -q --src-tls-verify=false --dest-compress --dest-compress-format gzip docker://" + ref + " oci:" +
     oci + ":1");
  Sh("umoci unpack --image " + oci + ":1 " + bundle + " >/dev/null");
  EXPECT_THAT(testing::ReadWholeFile(bundle + "/config.json"), HasSubstr("GREETING=hi"));
  // The same tree as the layer Paddock unpacks for a sandbox.
  const std::string id = Create(*daemon_, "bb:1");
  json ins = Json({"image", "inspect", "bb:1"});
  const std::string diff_hex = ins["layers"][0]["diff_id"].get<std::string>().substr(7);
  const std::string materialised = daemon_->state_dir() + "/layer-cache/" + diff_hex + "/root";
  ASSERT_TRUE(fs::exists(materialised)) << materialised;
  auto diff = testing::RunProgram({"/usr/bin/diff", "-r", "--no-dereference", bundle + "/rootfs", materialised});
  EXPECT_EQ(diff.code, 0) << diff.out << diff.err;
  // Types and modes too (diff compares contents only).
  auto listing = [](const std::string& dir) {
    return Sh("cd " + dir + " && find . -mindepth 1 -printf '%P %y %m %U:%G\\n' | LC_ALL=C sort");
  };
  EXPECT_EQ(listing(bundle + "/rootfs"), listing(materialised));
  Cli({"sandbox", "destroy", id});

  // Again: every blob is there, nothing is sent; the manifest is the same.
  json again = Json({"image", "push", "bb:1", ref});
  EXPECT_EQ(again["blobs_present"], 2);
  EXPECT_EQ(again["blobs_uploaded"], 0);
  EXPECT_EQ(again["bytes_uploaded"], 0);
  EXPECT_EQ(again["manifest_digest"], first["manifest_digest"]);
  // Another repository of the same registry: mounted, not uploaded.
  json other = Json({"image", "push", "bb:1", Plain("elsewhere/busybox:2")});
  EXPECT_EQ(other["blobs_mounted"], 2);
  EXPECT_EQ(other["blobs_uploaded"], 0);
  // The registry serves it under the new name.
  daemon_->Cli({"image", "rm", "bb:1"});
  json pulled = Json({"image", "pull", Plain("elsewhere/busybox:2")});
  EXPECT_EQ(pulled["image"], first["image"]);
  EXPECT_EQ(pulled["manifest_digest"], first["manifest_digest"]);

  Fails({"image", "push", "nosuch:1", ref}, "NOT_FOUND", {"nosuch"});
  Fails({"image", "push", "bb:1", "Bad/Ref"}, "INVALID_ARGUMENT", {"Bad/Ref"});
}

// A store keeping lz4 layers pushes them as plain tars (digest = diff_id),
// streamed through StreamLayerTar: the library, without a daemon.
TEST_F(RegistryPushTest, Lz4LayersArePushedAsPlainTars) {
  storage::ImageStoreOptions so;
  so.compression = storage::Compression::kLz4;
  auto store = storage::ImageStore::Open(daemon_->dir() + "/lz4-store", so);
  ASSERT_TRUE(store.ok()) << store.status().message();
  storage::ImageConfig config;
  config.env = {"GREETING=lz4"};
  auto imported = storage::ImportDirectory(**store, testing::EnsureBusyboxRootfs(), config, {"bb:lz4"});
  ASSERT_TRUE(imported.ok()) << imported.status().message();
  auto ref = reg::ParseReference(Plain("lz4/busybox:1"));
  ASSERT_TRUE(ref.ok());
  std::vector<std::string> phases;
  auto pushed = reg::PushImage(**store, "bb:lz4", *ref, {}, [&](const reg::PushProgress& p) { phases.push_back(p.phase); });
  ASSERT_TRUE(pushed.ok()) << pushed.status().message();
  EXPECT_EQ(pushed->blobs_uploaded, 2u);
  EXPECT_EQ(phases.back(), "pushed");
  auto img = (*store)->Get("bb:lz4");
  ASSERT_TRUE(img.ok());
  // Pulled by a daemon (zstd store): the same diff_id and config come back.
  json pulled = Json({"image", "pull", Plain("lz4/busybox:1"), "--name", "back:1"});
  json ins = Json({"image", "inspect", "back:1"});
  EXPECT_EQ(ins["layers"][0]["diff_id"], img->manifest.layers[0].diff_id.str());
  EXPECT_EQ(pulled["manifest_digest"], pushed->manifest_digest.str());
  const std::string id = Create(*daemon_, "back:1");
  EXPECT_EQ(Cli({"sandbox", "exec", id, "--shell", "echo $GREETING"}).out, "lz4\n");
  Cli({"sandbox", "destroy", id});
}

TEST_F(RegistryPushTest, ASnapshotPushedByOneDaemonIsPulledAndRunByAnother) {
  ImportBusybox("bb:1");
  const std::string id = Create(*daemon_, "bb:1");
  auto e = Cli({"sandbox", "exec", id, "--shell", "mkdir -p /work && echo prepared > /work/state"});
  ASSERT_EQ(e.code, 0) << e.err;
  json snap = Json({"sandbox", "snapshot", id, "--name", "bb:prepared"});
  const std::string ref = Plain("snap/prepared:1");
  json pushed = Json({"image", "push", "bb:prepared", ref});
  EXPECT_EQ(pushed["blobs_total"], 3);  // config, base layer, snapshot layer

  testing::DaemonProcess second(Options());
  ASSERT_EQ(second.Start(), "");
  json pulled = Json(second, {"image", "pull", ref, "--name", "prepared:1"});
  EXPECT_EQ(pulled["layers_new"], 2);
  EXPECT_EQ(pulled["manifest_digest"], pushed["manifest_digest"]);
  const std::string fork = Create(second, "prepared:1");
  auto cat = second.Cli({"sandbox", "exec", fork, "--shell", "cat /work/state; echo $GREETING"});
  EXPECT_EQ(cat.out, "prepared\nhi\n") << cat.err;
  second.Cli({"sandbox", "destroy", fork});
  Cli({"sandbox", "destroy", id});
}

// Issue 14: a pull records where each blob came from (blob_sources.h), so a
// store that never pushed the image mounts its blobs into another repository of
// the same registry instead of uploading them again.
TEST_F(RegistryPushTest, APulledImagePushedToAnotherRepositoryIsMountedNotUploaded) {
  ImportBusybox("bb:1");
  json first = Json({"image", "push", "bb:1", Plain("mount/from:1")});
  ASSERT_EQ(first["blobs_uploaded"], 2);

  testing::DaemonProcess second(Options());  // its own store: no push records
  ASSERT_EQ(second.Start(), "");
  json pulled = Json(second, {"image", "pull", Plain("mount/from:1"), "--name", "pulled:1"});
  EXPECT_EQ(pulled["layers_new"], 1);
  json pushed = Json(second, {"image", "push", "pulled:1", Plain("mount/to:1")});
  EXPECT_EQ(pushed["blobs_total"], 2);
  EXPECT_EQ(pushed["blobs_present"], 0);  // mount/to is a new repository
  EXPECT_EQ(pushed["blobs_mounted"], 2);  // config and layer
  EXPECT_EQ(pushed["blobs_uploaded"], 0);
  EXPECT_EQ(pushed["bytes_uploaded"], 0);
  EXPECT_EQ(pushed["manifest_digest"], first["manifest_digest"]);
  // The registry really has it under the new repository: a third store pulls it.
  testing::DaemonProcess third(Options());
  ASSERT_EQ(third.Start(), "");
  json back = Json(third, {"image", "pull", Plain("mount/to:1")});
  EXPECT_EQ(back["image"], first["image"]);
  EXPECT_EQ(back["layers_new"], 1);
}

// Chunked uploads against the real docker-registry: a layer of 3.5 MiB of
// random bytes (incompressible) in 1 MiB chunks, through the CLI's
// --chunk-size; a second daemon pulls it and a sandbox reads the file back
// with the same sha256.
TEST_F(RegistryPushTest, BigBlobGoesInChunksAndComesBackByteIdentical) {
  const std::string dir = daemon_->dir() + "/big-rootfs";
  fs::create_directories(dir);
  Sh("cp -a " + testing::EnsureBusyboxRootfs() + "/. " + dir + " && head -c 3670016 /dev/urandom > " + dir + "/big");
  const std::string want = Sh("sha256sum " + dir + "/big | cut -d' ' -f1");
  ASSERT_EQ(Cli({"image", "import-dir", dir, "--name", "big:1"}).code, 0);
  const std::string ref = Plain("chunks/big:1");
  json pushed = Json({"image", "push", "big:1", ref, "--chunk-size", "1M"});
  EXPECT_EQ(pushed["blobs_uploaded"], 2);
  EXPECT_EQ(pushed["blobs_chunked"], 1);  // the layer; the config is smaller than a chunk
  EXPECT_EQ(pushed["chunk_resumes"], 0);
  EXPECT_GT(pushed["bytes_uploaded"].get<uint64_t>(), 3670016u);

  testing::DaemonProcess second(Options());
  ASSERT_EQ(second.Start(), "");
  json pulled = Json(second, {"image", "pull", ref, "--name", "big:back"});
  EXPECT_EQ(pulled["image"], pushed["image"]);  // same config and diff_ids
  EXPECT_EQ(pulled["manifest_digest"], pushed["manifest_digest"]);
  const std::string id = Create(second, "big:back");
  auto sum = second.Cli({"sandbox", "exec", id, "--shell", "sha256sum /big | cut -d' ' -f1"});
  EXPECT_EQ(sum.out, want) << sum.err;
  second.Cli({"sandbox", "destroy", id});

  // Bad chunk sizes are refused before anything is sent.
  Fails({"image", "push", "big:1", ref, "--chunk-size", "1K"}, "INVALID_ARGUMENT", {"--chunk-size", "64K"});
  Fails({"image", "push", "big:1", ref, "--chunk-size", "lots"}, "INVALID_ARGUMENT", {"--chunk-size"});
}

// An upload endpoint in FakeRegistry for the chunked-upload protocol, with
// FAULT INJECTION (this is a test server that misbehaves on purpose): with
// `fail_patch` set, the PATCH of that number keeps only the first half of its
// body and answers 503, as a registry whose connection broke mid-chunk would
// leave it; with `refuse_patch`, every PATCH is answered 405 (a registry that
// takes no chunks).
struct UploadFake {
  std::mutex mu;
  std::map<std::string, std::string> uploads;  // upload id → bytes so far
  std::map<std::string, std::string> blobs;    // digest → bytes, once PUT
  int posts = 0, patches = 0, status_gets = 0, next_id = 0;
  uint64_t patch_bytes = 0;
  int fail_patch = 0;
  bool refuse_patch = false;

  static std::string Range(const std::string& b) {
    return "0-" + std::to_string(b.empty() ? 0 : b.size() - 1);
  }
  FakeResponse operator()(const FakeRequest& r) {
    std::lock_guard<std::mutex> l(mu);
    const std::string uploads_path = "/v2/fake/blobs/uploads/";
    std::string path = r.target.substr(0, r.target.find('?'));
    std::string query = r.target.find('?') == std::string::npos ? "" : r.target.substr(r.target.find('?') + 1);
    if (r.method == "HEAD") return {404, "", {}};
    if (r.method == "POST" && path == uploads_path) {
      ++posts;
      std::string id = "u" + std::to_string(++next_id);
      uploads[id];
      return {202, "", {{"Location", uploads_path + id + "?step=0"}, {"Range", "0-0"}}};
    }
    if (path.rfind(uploads_path, 0) == 0) {
      std::string id = path.substr(uploads_path.size());
      if (!uploads.count(id)) return {404, R"({"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]})", {}};
      std::string& have = uploads[id];
      if (r.method == "GET") {
        ++status_gets;
        return {204, "", {{"Location", uploads_path + id + "?step=s"}, {"Range", Range(have)}}};
      }
      if (r.method == "PATCH") {
        ++patches;
        patch_bytes += r.body.size();
        if (refuse_patch) return {405, R"({"errors":[{"code":"UNSUPPORTED"}]})", {}};
        auto cr = r.headers.find("content-range");
        if (cr == r.headers.end() || r.headers.at("content-type") != "application/octet-stream") return {400, "", {}};
        uint64_t start = std::stoull(cr->second), end = std::stoull(cr->second.substr(cr->second.find('-') + 1));
        if (start != have.size() || end - start + 1 != r.body.size()) return {416, "", {{"Range", Range(have)}}};
        if (patches == fail_patch) {  // the injected fault
          have += r.body.substr(0, r.body.size() / 2);
          return {503, "", {}};
        }
        have += r.body;
        return {202, "", {{"Location", uploads_path + id + "?step=" + std::to_string(patches)}, {"Range", Range(have)}}};
      }
      if (r.method == "PUT") {
        have += r.body;
        std::string digest = query.substr(query.find("digest=") + 7);
        if (storage::Sha256::Of(have).str() != digest) return {400, R"({"errors":[{"code":"DIGEST_INVALID"}]})", {}};
        blobs[digest] = have;
        uploads.erase(id);
        return {201, "", {{"Docker-Content-Digest", digest}}};
      }
    }
    if (r.method == "PUT" && path.rfind("/v2/fake/manifests/", 0) == 0)
      return {201, "", {{"Docker-Content-Digest", storage::Sha256::Of(r.body).str()}}};
    return {400, "", {}};
  }
};

class ChunkedPushTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("paddock-chunk-test-" + std::to_string(getpid()));
    auto store = storage::ImageStore::Open(dir_ + "/store", {});
    ASSERT_TRUE(store.ok()) << store.status().message();
    store_ = std::move(*store);
    storage::ImageConfig config;
    auto imported = storage::ImportDirectory(*store_, testing::EnsureBusyboxRootfs(), config, {"bb:1"});
    ASSERT_TRUE(imported.ok()) << imported.status().message();
    auto img = store_->Get("bb:1");
    ASSERT_TRUE(img.ok());
    layer_ = img->manifest.layers[0].blob;
    layer_size_ = img->manifest.layers[0].size;
    ASSERT_GT(layer_size_, 3 * kChunk) << "the busybox layer should span several chunks";
  }
  void TearDown() override { fs::remove_all(dir_); }
  Result<reg::PushResult> Push(FakeRegistry& fake) {
    auto ref = reg::ParseReference(fake.host() + "/fake:1");
    if (!ref.ok()) return ref.status();
    reg::PushOptions o;
    o.chunk_size = kChunk;
    return reg::PushImage(*store_, "bb:1", *ref, o);
  }
  static constexpr uint64_t kChunk = 64 << 10;
  std::string dir_;
  std::unique_ptr<storage::ImageStore> store_;
  storage::Digest layer_;
  uint64_t layer_size_ = 0;
};

TEST_F(ChunkedPushTest, AFailedChunkIsResumedWhereTheRegistryStands) {
  UploadFake up;
  up.fail_patch = 2;  // the second chunk breaks half way
  FakeRegistry fake([&](const FakeRequest& r) { return up(r); });
  auto pushed = Push(fake);
  ASSERT_TRUE(pushed.ok()) << pushed.status().message();
  EXPECT_EQ(pushed->blobs_uploaded, 2u);
  EXPECT_EQ(pushed->blobs_chunked, 1u);
  EXPECT_EQ(pushed->chunk_resumes, 1u);
  std::lock_guard<std::mutex> l(up.mu);
  // The layer arrived whole (the fake checked its digest at the final PUT).
  ASSERT_TRUE(up.blobs.count(layer_.str()));
  EXPECT_EQ(up.blobs[layer_.str()].size(), layer_size_);
  EXPECT_EQ(up.posts, 2);        // config and layer: the upload was not started over
  EXPECT_EQ(up.status_gets, 1);  // asked where it stood once
  // Only the half the registry lacked was sent again.
  EXPECT_EQ(up.patch_bytes, layer_size_ + kChunk / 2);
  EXPECT_EQ(static_cast<uint64_t>(up.patches), (layer_size_ + kChunk - 1) / kChunk + 1);
}

TEST_F(ChunkedPushTest, ARegistryRefusingChunksGetsTheBlobWhole) {
  UploadFake up;
  up.refuse_patch = true;
  FakeRegistry fake([&](const FakeRequest& r) { return up(r); });
  auto pushed = Push(fake);
  ASSERT_TRUE(pushed.ok()) << pushed.status().message();
  EXPECT_EQ(pushed->blobs_uploaded, 2u);
  EXPECT_EQ(pushed->blobs_chunked, 0u);
  EXPECT_EQ(pushed->chunk_fallbacks, 1u);
  std::lock_guard<std::mutex> l(up.mu);
  ASSERT_TRUE(up.blobs.count(layer_.str()));
  EXPECT_EQ(up.blobs[layer_.str()].size(), layer_size_);
  EXPECT_EQ(up.patches, 1);  // one refused PATCH, then a new upload and one PUT
  EXPECT_EQ(up.posts, 3);
}

TEST_F(ChunkedPushTest, ABrokenChunkThatNeverRecoversFailsNamingTheBlob) {
  UploadFake up;
  FakeRegistry fake([&](const FakeRequest& r) {
    if (r.method == "PATCH") {  // fault injection: every chunk fails
      std::lock_guard<std::mutex> l(up.mu);
      ++up.patches;
      return FakeResponse{503, "", {}};
    }
    return up(r);
  });
  auto pushed = Push(fake);
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(pushed.status().code(), Code::kUnavailable) << pushed.status().message();
  EXPECT_THAT(pushed.status().message(), HasSubstr(layer_.str()));
  EXPECT_THAT(pushed.status().message(), HasSubstr("attempts"));
  std::lock_guard<std::mutex> l(up.mu);
  EXPECT_EQ(up.patches, reg::RetryPolicy{}.max_attempts);  // bounded
}

TEST_F(RegistryPushTest, HtpasswdRegistryOverTlsWantsTheRightCredentials) {
  ImportBusybox("bb:1");
  const std::string ca = *work_ + "/tls/ca.pem";
  const std::string ref = Authed("auth/busybox:1");
  // No credentials, wrong ones: UNAUTHENTICATED naming the reference.
  Fails({"image", "push", "bb:1", ref, "--ca-file", ca}, "UNAUTHENTICATED",
        {ref, "asks for credentials (Basic)", "none were given", "--creds-file"});
  Fails({"image", "push", "bb:1", ref, "--ca-file", ca, "--creds-file", Creds("wrong.json", auth_port_)},
        "UNAUTHENTICATED", {ref, "rejected the credentials for user 'paddock'"});
  json pushed = Json({"image", "push", "bb:1", ref, "--ca-file", ca, "--creds-file", Creds("right.json", auth_port_)});
  EXPECT_EQ(pushed["blobs_uploaded"], 2);

  // Pulls into a fresh daemon, whose store has none of the layers.
  daemon_.reset();
  daemon_.emplace(Options());
  ASSERT_EQ(daemon_->Start(), "");
  Fails({"image", "pull", ref, "--ca-file", ca}, "UNAUTHENTICATED", {ref, "none were given"});
  Fails({"image", "pull", ref, "--ca-file", ca, "--creds-file", Creds("wrong.json", auth_port_)}, "UNAUTHENTICATED",
        {ref, "rejected the credentials"});
  StoreIsEmpty(*daemon_);
  const std::string staging = daemon_->state_dir() + "/images/staging";
  EXPECT_TRUE(!fs::exists(staging) || fs::is_empty(staging));
  // The user's docker config (DOCKER_CONFIG) is read when no --creds-file is given.
  fs::copy_file(Creds("right.json", auth_port_), *work_ + "/docker-config/config.json",
                fs::copy_options::overwrite_existing);
  json pulled = Json({"image", "pull", ref, "--ca-file", ca});
  fs::remove(*work_ + "/docker-config/config.json");
  EXPECT_EQ(pulled["layers_new"], 1);
  const std::string id = Create(*daemon_, ref);
  auto e = Cli({"sandbox", "exec", id, "--shell", "echo $GREETING"});
  EXPECT_EQ(e.out, "hi\n") << e.err;
  Cli({"sandbox", "destroy", id});
  // A missing --creds-file is an error of its own, before any request.
  Fails({"image", "pull", ref, "--creds-file", *work_ + "/nope.json"}, "NOT_FOUND", {"nope.json"});
  // The password is never in the daemon's log.
  EXPECT_THAT(daemon_->LogTail(), ::testing::Not(HasSubstr("s3cret")));
}

TEST_F(RegistryPushTest, DaemonCredsFileServesUnixSocketPulls) {
  ImportBusybox("bb:1");
  const std::string ca = *work_ + "/tls/ca.pem";
  const std::string ref = Authed("daemon/busybox:1");
  Json({"image", "push", "bb:1", ref, "--ca-file", ca, "--creds-file", Creds("right.json", auth_port_)});
  testing::DaemonOptions o = Options();
  o.args = {"--registry-creds-file", Creds("right.json", auth_port_)};
  testing::DaemonProcess second(o);
  ASSERT_EQ(second.Start(), "");
  json pulled = Json(second, {"image", "pull", ref, "--ca-file", ca});
  EXPECT_EQ(pulled["layers_new"], 1);
}

// The bearer flow against FakeRegistry serving an image Paddock exported.
TEST_F(RegistryPushTest, BearerTokenChallengeIsMetAndItsFailuresAreClean) {
  ImportBusybox("bb:1");
  const std::string out = *work_ + "/bearer-export";
  ASSERT_EQ(Cli({"image", "export", "bb:1", out}).code, 0);
  // The pulls below go to a fresh daemon, whose store has none of the layers.
  daemon_.reset();
  daemon_.emplace(Options());
  ASSERT_EQ(daemon_->Start(), "");
  json index = json::parse(testing::ReadWholeFile(out + "/index.json"));
  const std::string man_digest = index["manifests"][0]["digest"];
  auto blob = [&](const std::string& d) { return testing::ReadWholeFile(out + "/blobs/sha256/" + d.substr(7)); };
  const std::string manifest = blob(man_digest);
  json man = json::parse(manifest);
  const std::string layer_digest = man["layers"][0]["digest"];

  std::mutex mu;
  std::string token_answer = R"({"token":"T-good"})";  // what the token endpoint says
  int token_status = 200;
  std::string accepted = "Bearer T-good";               // what the registry takes
  std::string redirect_host;                            // the layer is served from here when set
  int port = 0;
  FakeRegistry fake([&](const FakeRequest& r) -> FakeResponse {
    std::lock_guard<std::mutex> l(mu);
    const std::string self = "127.0.0.1:" + std::to_string(port);
    if (r.target.rfind("/token", 0) == 0) {
      auto it = r.headers.find("authorization");
      if (it == r.headers.end() || it->second != "Basic " + reg::Base64Encode("paddock:s3cret"))
        return {401, R"({"details":"bad credentials"})"};
      return {token_status, token_answer, {{"Content-Type", "application/json"}}};
    }
    if (r.target.rfind("/storage/", 0) == 0) return {200, blob(layer_digest)};
    auto it = r.headers.find("authorization");
    if (it == r.headers.end() || it->second != accepted)
      return {401, R"({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]})",
              {{"WWW-Authenticate", "Bearer realm=\"http://" + self +
                                        "/token\",service=\"fake\",scope=\"repository:secret/bb:pull\""}}};
    const std::string v2 = "/v2/secret/bb/";
    if (r.target == v2 + "manifests/1")
      return {200, manifest, {{"Content-Type", "application/vnd.oci.image.manifest.v1+json"}}};
    if (r.target == v2 + "blobs/" + man["config"]["digest"].get<std::string>())
      return {200, blob(man["config"]["digest"])};
    if (r.target == v2 + "blobs/" + layer_digest) {
      if (!redirect_host.empty()) return {307, "", {{"Location", "http://" + redirect_host + "/storage/layer"}}};
      return {200, blob(layer_digest)};
    }
    return {404, R"({"errors":[{"code":"NOT_FOUND"}]})"};
  });
  port = fake.port();
  const std::string ref = fake.host() + "/secret/bb:1";
  const std::string creds = daemon_->dir() + "/fake-creds.json";
  std::ofstream(creds) << json{{"auths", {{fake.host(), {{"username", "paddock"}, {"password", "s3cret"}}}}}}.dump();
  const std::string wrong = daemon_->dir() + "/fake-wrong.json";
  std::ofstream(wrong) << json{{"auths", {{fake.host(), {{"username", "paddock"}, {"password", "x"}}}}}}.dump();

  // The token server refuses the credentials.
  Fails({"image", "pull", ref, "--creds-file", wrong}, "UNAUTHENTICATED",
        {ref, "the token server " + fake.host() + " refused the credentials for user 'paddock'"});
  // The registry refuses the token it was given.
  accepted = "Bearer T-other";
  Fails({"image", "pull", ref, "--creds-file", creds}, "UNAUTHENTICATED", {ref, "rejected the token issued"});
  accepted = "Bearer T-good";
  // A token answer over 64 KiB, and one without a token.
  token_answer = R"({"token":")" + std::string(70 << 10, 'a') + R"("})";
  Fails({"image", "pull", ref, "--creds-file", creds}, "DATA_LOSS", {ref, "over the limit of 65536 bytes"});
  token_answer = R"({"nothing":1})";
  Fails({"image", "pull", ref, "--creds-file", creds}, "DATA_LOSS", {ref, "without a token"});
  StoreIsEmpty(*daemon_);

  // Right credentials: challenge → token (asked once, with service and scope) → the pull.
  token_answer = R"({"access_token":"T-good"})";
  size_t before = fake.Requests().size();
  // The layer is redirected to another host (localhost, not 127.0.0.1): no Authorization follows it.
  redirect_host = "localhost:" + std::to_string(port);
  json pulled = Json({"image", "pull", ref, "--creds-file", creds});
  EXPECT_EQ(pulled["layers_new"], 1);
  auto reqs = fake.Requests();
  int token_requests = 0;
  for (size_t i = before; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    if (r.target.rfind("/token", 0) == 0) {
      ++token_requests;
      EXPECT_THAT(r.target, HasSubstr("service=fake"));
      EXPECT_THAT(r.target, HasSubstr("scope=repository%3Asecret%2Fbb%3Apull"));
    }
    if (r.target.rfind("/storage/", 0) == 0) {
      EXPECT_EQ(r.headers.count("authorization"), 0u) << r.target;
    }
  }
  EXPECT_EQ(token_requests, 1);  // cached for the pull's later requests
  // Without credentials the token server says no: UNAUTHENTICATED, not a crash.
  Fails({"image", "pull", ref}, "UNAUTHENTICATED", {ref, "refused an anonymous token"});
}

// A push through the token flow: the token is asked for with push scope, once,
// and an upload location on another host gets no Authorization.
TEST_F(RegistryPushTest, BearerPushAsksForPushScopeOnce) {
  ImportBusybox("bb:1");
  std::mutex mu;
  std::map<std::string, std::string> blobs;  // digest → bytes, as received
  std::string manifest;
  int port = 0;
  FakeRegistry fake([&](const FakeRequest& r) -> FakeResponse {
    std::lock_guard<std::mutex> l(mu);
    const std::string self = "127.0.0.1:" + std::to_string(port);
    if (r.target.rfind("/token", 0) == 0) {
      if (r.target.find("scope=repository%3Ateam%2Fbb%3Apull%2Cpush") == std::string::npos)
        return {200, R"({"token":"T-pull-only"})"};
      return {200, R"({"token":"T-push"})"};
    }
    // Uploads land on "another host" (localhost): they must come without Authorization.
    if (r.target.rfind("/upload/", 0) == 0) {
      if (r.headers.count("authorization")) return {403, "credentials sent to the upload host"};
      std::string digest = r.target.substr(r.target.find("digest=") + 7);
      if (storage::Sha256::Of(r.body).str() != digest) return {400, "digest mismatch"};
      blobs[digest] = r.body;
      return {201, "", {{"Docker-Content-Digest", digest}}};
    }
    auto it = r.headers.find("authorization");
    if (it == r.headers.end() || it->second != "Bearer T-push")
      return {401, "", {{"WWW-Authenticate", "Bearer realm=\"http://" + self +
                                                 "/token\",service=\"fake\",scope=\"repository:team/bb:pull\""}}};
    const std::string v2 = "/v2/team/bb/";
    if (r.method == "HEAD" && r.target.rfind(v2 + "blobs/", 0) == 0)
      return {blobs.count(r.target.substr(v2.size() + 6)) ? 200 : 404, ""};
    if (r.method == "POST" && r.target == v2 + "blobs/uploads/")
      return {202, "", {{"Location", "http://localhost:" + std::to_string(port) + "/upload/1?_state=x"}}};
    if (r.method == "PUT" && r.target == v2 + "manifests/1") {
      manifest = r.body;
      return {201, ""};
    }
    return {404, ""};
  });
  port = fake.port();
  const std::string creds = daemon_->dir() + "/creds.json";
  std::ofstream(creds) << json{{"auths", {{fake.host(), {{"username", "u"}, {"password", "p"}}}}}}.dump();
  json pushed = Json({"image", "push", "bb:1", fake.host() + "/team/bb:1", "--creds-file", creds});
  EXPECT_EQ(pushed["blobs_uploaded"], 2);
  int token_requests = 0;
  for (const auto& r : fake.Requests()) token_requests += r.target.rfind("/token", 0) == 0;
  EXPECT_EQ(token_requests, 1);
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(blobs.size(), 2u);
  EXPECT_EQ(storage::Sha256::Of(manifest).str(), pushed["manifest_digest"]);
  json m = json::parse(manifest, nullptr, false);
  ASSERT_FALSE(m.is_discarded());
  EXPECT_EQ(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
  EXPECT_TRUE(blobs.count(m["config"]["digest"].get<std::string>()));
  EXPECT_TRUE(blobs.count(m["layers"][0]["digest"].get<std::string>()));
}

TEST_F(RegistryPushTest, CredentialsNeverGoOverPlainHttpToOtherHosts) {
  // A loopback registry whose realm is a plain-HTTP, non-loopback host: with
  // credentials, nothing is sent there.
  FakeRegistry fake([](const FakeRequest&) -> FakeResponse {
    return {401, "", {{"WWW-Authenticate", "Bearer realm=\"http://registry.example/token\",service=\"x\""}}};
  });
  const std::string ref = fake.host() + "/x/y:1";
  const std::string creds = daemon_->dir() + "/creds.json";
  std::ofstream(creds) << json{{"auths", {{fake.host(), {{"username", "u"}, {"password", "p"}}}}}}.dump();
  Fails({"image", "pull", ref, "--creds-file", creds, "--insecure-registry", "registry.example"}, "PERMISSION_DENIED",
        {ref, "refusing to send credentials over plain HTTP to registry.example"});
  // Without --insecure-registry the realm is refused as plain HTTP at all.
  Fails({"image", "pull", ref}, "PERMISSION_DENIED", {"refusing plain HTTP to registry.example"});
}

TEST_F(RegistryPushTest, TcpClientsPushToNeitherLoopbackNorPlainHttpRegistries) {
  daemon_.reset();
  testing::DaemonOptions o = Options();
  daemon_.emplace(o);
  const std::string token_file = daemon_->dir() + "/token";
  std::ofstream(token_file) << "push-test-token";
  chmod(token_file.c_str(), 0600);
  const int tcp_port = testing::FreeLoopbackPort();
  ASSERT_EQ(daemon_->Start({"--listen-tcp", "127.0.0.1:" + std::to_string(tcp_port), "--token-file", token_file}), "");
  ImportBusybox("bb:1");
  client::ClientOptions co;
  co.tcp_target = "127.0.0.1:" + std::to_string(tcp_port);
  co.token = "push-test-token";
  auto tcp = client::Client::Connect(co);
  ASSERT_TRUE(tcp.ok()) << tcp.status().message();
  auto r = tcp->ImagePush("bb:1", Plain("tcp/bb:1"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("a loopback address, which only clients on paddockd's unix socket"));
  client::ImagePushOptions insecure;
  insecure.insecure_registries = {"10.0.0.7:5000"};
  r = tcp->ImagePush("bb:1", "10.0.0.7:5000/x:1", insecure);
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("--insecure-registry is only for clients on paddockd's unix socket"));
  client::ImagePushOptions ca;
  ca.ca_file = "/etc/ssl/certs/ca-certificates.crt";
  r = tcp->ImagePush("bb:1", "registry.example/x:1", ca);
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  // The same push over the unix socket works.
  EXPECT_EQ(Json({"image", "push", "bb:1", Plain("tcp/bb:1")})["blobs_total"], 2);
}

}  // namespace
}  // namespace paddock
