// A task with "substrate": "microvm" through `paddock run`: the real paddockd
// with the microvm substrate (QEMU guests; under TCG emulation where this
// machine's KVM cannot run guests, see tests/support/microvm_accel.h), the
// scripted policy, the built-in bash tool inside the guest, the verifier,
// the log and the export. The guest's /proc/cmdline (rdinit=/paddock-init)
// shows that the tool call ran in the microVM, not on the host kernel.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sandbox/microvm/microvm_substrate.h"
#include "tests/rollout_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/microvm_accel.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

TEST(RolloutMicrovm, MicrovmTasksRunThroughPaddockRun) {
  if (!fs::exists("/usr/local/share/paddock/deepseek-v3-tokenizer.json") && !getenv("PADDOCK_TOKENIZER"))
    GTEST_SKIP() << "no V4 tokenizer installed (scripts/install-deps.sh)";
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{.args = {"--microvm-accel", o.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "0"}});
  ASSERT_EQ(d.Start(), "");
  std::string work = d.dir() + "/work";
  fs::create_directories(work);
  // Task files never name host directories: the rootfs goes in as an image.
  auto imported = d.Cli({"image", "import-dir", rootfs, "--name", "busybox:vm"});
  ASSERT_EQ(imported.code, 0) << imported.out << imported.err;

  const int kTasks = 2;
  std::string tasks;
  for (int i = 0; i < kTasks; ++i)
    tasks += json({{"id", "vm-" + std::to_string(i)},
                   {"image", "busybox:vm"},
                   {"substrate", "microvm"},
                   {"instruction", "Show the kernel command line, record a line in /tmp/ran, then submit."},
                   {"tools", {"bash", "submit"}},
                   {"max_turns", 3},
                   {"setup", {"rm -f /tmp/ran"}},
                   {"verifier", "grep -q rdinit=/paddock-init /proc/cmdline && test \"$(cat /tmp/ran)\" = S0"}})
                 .dump() + "\n";
  std::ofstream(work + "/vm.jsonl") << tasks;
  json script = json::array({testing::DsmlCall("bash", {{"command", "cat /proc/cmdline; echo S0 >> /tmp/ran"}}),
                             testing::DsmlCall("submit", {{"answer", "done"}})});
  std::ofstream(work + "/vm.script.json") << script.dump();

  auto r = d.Cli({"run", work + "/vm.jsonl", "--policy", "scripted", "--policy-script", work + "/vm.script.json",
                  "-c", "2", "--id", "vm-run", "--out", work + "/out"});
  ASSERT_EQ(r.code, 0) << r.out << r.err << d.LogTail();
  EXPECT_THAT(r.out, HasSubstr("submit 2"));
  std::ifstream ex(work + "/out/vm-run/episodes.jsonl");
  int n = 0;
  for (std::string line; std::getline(ex, line);) {
    if (line.empty()) continue;
    json l = json::parse(line);
    ++n;
    EXPECT_EQ(l["reward"], 1.0) << l["episode_id"] << " " << l["failure_reason"];
    EXPECT_EQ(l["stop_reason"], "submit");
    // The bash observation is the guest kernel's command line.
    bool guest = false;
    for (const auto& m : l["messages"])
      if (m["role"] == "tool" && m["content"].get<std::string>().find("rdinit=/paddock-init") != std::string::npos)
        guest = true;
    EXPECT_TRUE(guest) << l["messages"].dump().substr(0, 1500);
  }
  EXPECT_EQ(n, kTasks);
  // Every episode's sandbox (its QEMU) is gone with the episode.
  EXPECT_TRUE(StrayQemuProcesses(d.state_dir()).empty());
}

}  // namespace
}  // namespace paddock
