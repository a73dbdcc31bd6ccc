// `paddock image …` and `paddock sandbox snapshot` against a real paddockd
// (tests/support/daemon_process.h): import-dir, import (an OCI layout the
// daemon exported), ls, inspect, rm, gc, export, sandboxes from image names,
// snapshot and fork, --help and --json of each command, and bad input.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using nlohmann::json;

namespace paddock {
namespace {

class ImageCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    daemon_.emplace();
    ASSERT_EQ(daemon_->Start(), "");
    chmod(daemon_->dir().c_str(), 0755);
  }
  void TearDown() override { daemon_.reset(); }

  testing::ProgramResult Cli(std::vector<std::string> args) { return daemon_->Cli(std::move(args)); }

  json Json(std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    auto r = Cli(args);
    EXPECT_EQ(r.code, 0) << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  std::string Line(const testing::ProgramResult& r) {
    std::string s = r.out;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }

  std::string rootfs_;
  std::optional<testing::DaemonProcess> daemon_;
};

TEST_F(ImageCliTest, EveryImageCommandHasHelp) {
  for (const char* cmd : {"import", "import-dir", "ls", "inspect", "rm", "gc", "export"}) {
    auto r = Cli({"image", cmd, "--help"});
    EXPECT_EQ(r.code, 0) << cmd << ": " << r.err;
    EXPECT_THAT(r.out, HasSubstr(cmd)) << cmd;
  }
  auto r = Cli({"sandbox", "snapshot", "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("--name"));
}

TEST_F(ImageCliTest, ImportCreateSnapshotForkExportReimportRemoveGc) {
  // import-dir with config defaults
  json imp = Json({"image", "import-dir", rootfs_, "--name", "tools:1", "--env", "GREETING=hello",
                   "--workdir", "/srv"});
  std::string digest = imp["image"];
  ASSERT_EQ(digest.rfind("sha256:", 0), 0u);
  EXPECT_EQ(imp["names"], json::array({"tools:1"}));

  json ls = Json({"image", "ls"});
  ASSERT_EQ(ls["images"].size(), 1u);
  EXPECT_EQ(ls["images"][0]["digest"], digest);
  auto text_ls = Cli({"image", "ls"});
  EXPECT_THAT(text_ls.out, HasSubstr("tools:1"));

  json ins = Json({"image", "inspect", "tools:1"});
  EXPECT_EQ(ins["digest"], digest);
  EXPECT_EQ(ins["workdir"], "/srv");
  EXPECT_EQ(ins["env"], json::array({"GREETING=hello"}));
  ASSERT_EQ(ins["layers"].size(), 1u);
  EXPECT_EQ(ins["layers"][0]["materialized"], false);

  // A container from the name: config defaults apply.
  auto c = Cli({"sandbox", "create", "--substrate", "container", "--image", "tools:1"});
  ASSERT_EQ(c.code, 0) << c.err;
  std::string id = Line(c);
  auto e = Cli({"sandbox", "exec", id, "--shell", "echo $GREETING; pwd; echo state > /srv/f"});
  EXPECT_EQ(e.code, 0) << e.err;
  EXPECT_EQ(e.out, "hello\n/srv\n");
  EXPECT_EQ(Json({"image", "inspect", digest.substr(7, 12)})["layers"][0]["materialized"], true);

  // Snapshot and fork.
  json snap = Json({"sandbox", "snapshot", id, "--name", "tools:prepared"});
  EXPECT_EQ(snap["name"], "tools:prepared");
  std::string snap_digest = snap["image"];
  auto f = Cli({"sandbox", "create", "--substrate", "container", "--image", "tools:prepared"});
  ASSERT_EQ(f.code, 0) << f.err;
  auto fe = Cli({"sandbox", "exec", Line(f), "--", "cat", "/srv/f"});
  EXPECT_EQ(fe.out, "state\n");

  // A function sandbox has nothing to snapshot.
  auto fn = Cli({"sandbox", "create", "--substrate", "function", "--image", "tools:prepared"});
  ASSERT_EQ(fn.code, 0) << fn.err;
  auto fs_ = Cli({"sandbox", "snapshot", Line(fn), "--name", "x:1"});
  EXPECT_EQ(fs_.code, 1);
  EXPECT_THAT(fs_.err, HasSubstr("function sandbox"));

  // Export (relative path made absolute by the CLI), then import the layout
  // under another name: same image digest.
  std::string out_dir = daemon_->dir() + "/exported";
  std::string cwd = fs::current_path();
  fs::current_path(daemon_->dir());
  auto ex = Cli({"image", "export", "tools:prepared", "exported"});
  fs::current_path(cwd);
  ASSERT_EQ(ex.code, 0) << ex.err;
  EXPECT_TRUE(fs::exists(out_dir + "/index.json"));
  json re = Json({"image", "import", out_dir, "--name", "again:1"});
  ASSERT_EQ(re["images"].size(), 1u);
  EXPECT_EQ(re["images"][0], snap_digest);
  EXPECT_EQ(re["layers_new"], 0);

  // rm by name keeps the image while another name points at it.
  json rm = Json({"image", "rm", "again:1"});
  EXPECT_EQ(rm["removed"][0]["image"], snap_digest);
  EXPECT_EQ(Json({"image", "inspect", "tools:prepared"})["digest"], snap_digest);
  auto gone = Cli({"image", "inspect", "again:1"});
  EXPECT_EQ(gone.code, 1);
  EXPECT_THAT(gone.err, HasSubstr("again:1"));

  // rm by digest, then gc frees its blobs.
  Json({"image", "rm", snap_digest});
  json gc = Json({"image", "gc", "--grace", "0"});
  EXPECT_GT(gc["blobs_removed"].get<int>(), 0);
  // The base image is untouched and still usable.
  auto c2 = Cli({"sandbox", "create", "--substrate", "container", "--image", "tools:1"});
  EXPECT_EQ(c2.code, 0) << c2.err;
}

TEST_F(ImageCliTest, BadInputIsRefusedClearly) {
  auto r = Cli({"sandbox", "create", "--substrate", "container", "--image", "nosuch:1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("nosuch:1"));
  EXPECT_THAT(r.err, HasSubstr("not found"));

  r = Cli({"image", "import", "/nonexistent/archive.tar", "--name", "x:1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/archive.tar"));

  r = Cli({"image", "import-dir", rootfs_, "--name", "Bad Name"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("Bad Name"));

  r = Cli({"image", "import-dir", rootfs_, "--name", "ok:1", "--env", "NOEQUALS"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOEQUALS"));

  r = Cli({"image", "gc", "--grace", "soon"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("--grace"));

  r = Cli({"--json", "image", "rm", "nosuch:2"});
  EXPECT_EQ(r.code, 1);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["error"]["code"], "NOT_FOUND");

  r = Cli({"sandbox", "snapshot", "ffffffffffff", "--name", "x:1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("ffffffffffff"));

  // A hostile archive leaves nothing in the store.
  std::string bad = daemon_->dir() + "/bad.tar";
  {
    FILE* f = fopen(bad.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs("this is not a tar archive at all", f);
    fclose(f);
  }
  r = Cli({"image", "import", bad, "--name", "bad:1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(Json({"image", "ls"})["images"].size(), 0u);
}

}  // namespace
}  // namespace paddock
