// The microvm substrate through a real paddockd and the paddock CLI: the
// daemon's flags, a create with --substrate microvm, an exec, a destroy;
// egress by allow list through the guest's channel.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>
#include <gtest/gtest.h>

#include "paddock/client.h"
#include "sandbox/microvm/microvm_substrate.h"
#include "tests/support/daemon_process.h"
#include "tests/support/microvm_accel.h"
#include "tests/support/test_internet.h"
#include "tests/support/test_rootfs.h"

using ::testing::HasSubstr;
using ::testing::Not;

namespace paddock {
namespace {

TEST(MicrovmDaemon, HelpListsTheMicrovmFlags) {
  auto r = testing::RunProgram({testing::BuiltBinary("paddockd"), "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("--microvm-warm-pool"));
  EXPECT_THAT(r.out, HasSubstr("--microvm-accel"));
  EXPECT_THAT(r.out, HasSubstr("--microvm-templates"));
  auto bad = testing::RunProgram({testing::BuiltBinary("paddockd"), "--microvm-accel", "xen"});
  EXPECT_NE(bad.code, 0);
}

TEST(MicrovmDaemon, CliCreatesExecsAndDestroysAMicrovmSandbox) {
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{
      .args = {"--microvm-accel", o.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "0"}});
  ASSERT_EQ(d.Start(), "");
  const std::string cli = testing::BuiltBinary("paddock");
  auto created = testing::RunProgram(
      {cli, "--socket", d.socket_path(), "sandbox", "create", "--substrate", "microvm", "--image", rootfs});
  ASSERT_EQ(created.code, 0) << created.err;
  std::string id = created.out.substr(0, created.out.find('\n'));
  ASSERT_FALSE(id.empty());
  auto ran = testing::RunProgram({cli, "--socket", d.socket_path(), "sandbox", "exec", id, "--", "sh",
                                  "-c", "uname -r; cat /etc/image-marker; exit 3"});
  EXPECT_EQ(ran.code, 3) << ran.err;
  EXPECT_THAT(ran.out, HasSubstr("busybox test image"));
  EXPECT_FALSE(StrayQemuProcesses(d.state_dir()).empty());
  auto gone = testing::RunProgram({cli, "--socket", d.socket_path(), "sandbox", "destroy", id});
  EXPECT_EQ(gone.code, 0) << gone.err;
  EXPECT_TRUE(StrayQemuProcesses(d.state_dir()).empty());
}

// TCG is not a security boundary: paddockd offers microVMs under it only with
// --allow-tcg-microvms, never because of the environment.
TEST(MicrovmDaemon, TcgWithoutTheFlagIsRefusedNamingIt) {
  testing::UseEmulationWhereKvmCannotRunGuests();  // sets PADDOCK_MICROVM_ALLOW_TCG=1: ignored by paddockd
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{.args = {"--microvm-accel", "tcg", "--microvm-warm-pool", "0"}});
  ASSERT_EQ(d.Start(), "");
  const std::string cli = testing::BuiltBinary("paddock");
  auto created = testing::RunProgram(
      {cli, "--socket", d.socket_path(), "sandbox", "create", "--substrate", "microvm", "--image", rootfs});
  EXPECT_NE(created.code, 0) << created.out;
  EXPECT_THAT(created.err, HasSubstr("--allow-tcg-microvms")) << created.err;
  EXPECT_THAT(created.err, HasSubstr("not a security boundary")) << created.err;
  EXPECT_TRUE(StrayQemuProcesses(d.state_dir()).empty());
  auto help = testing::RunProgram({testing::BuiltBinary("paddockd"), "--help"});
  EXPECT_THAT(help.out, HasSubstr("--allow-tcg-microvms"));
}

// EscapeTest.EgressReachesOnlyWhatTheAllowListNames on a microVM, whose guest
// has no network device: its connections reach the daemon's proxy over the
// init channel. Plus what a hostile agent in the guest can do to those
// connections: more than the cap at once, a large download, a reader that
// stalls while the server keeps sending.
TEST(MicrovmDaemon, EgressReachesOnlyWhatTheAllowListNames) {
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  testing::TestInternet inet;
  ASSERT_TRUE(inet.ok()) << inet.why();
  const std::string server = inet.server_ip();
  const std::string big_md5 = inet.AddRandomFile("big.bin", 16 << 20);
  inet.AddRandomFile("huge.bin", 64 << 20);
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{
      .args = {"--microvm-accel", o.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "0"}});
  ASSERT_EQ(d.Start(), "");
  client::ClientOptions co;
  co.socket_path = d.socket_path();
  auto c = client::Client::Connect(co);
  ASSERT_TRUE(c.ok()) << c.status().message();

  SandboxSpec spec;
  spec.substrate = "microvm";
  spec.image = rootfs;
  spec.network_allow = {server + ":8080", inet.host_ip() + "/32", "169.254.169.254", "127.0.0.1"};
  auto sb = c->Create(spec);
  ASSERT_TRUE(sb.ok()) << sb.status().message() << d.LogTail();
  auto sh = [&](const std::string& id, const std::string& script, uint32_t timeout_ms = 60000) {
    ExecRequest r;
    r.shell = script + " 2>&1; echo rc=$?";
    r.timeout_ms = timeout_ms;
    auto res = c->Exec(id, r);
    EXPECT_TRUE(res.ok()) << res.status().message();
    return res.ok() ? res->stdout_data : std::string();
  };
  // Allowed: plain HTTP through the proxy, and CONNECT.
  EXPECT_THAT(sh(sb->id, "wget -q -O- http://" + server + ":8080/hello.txt"), HasSubstr("hello-egress\nrc=0"));
  EXPECT_THAT(sh(sb->id, "(printf 'CONNECT " + server + ":8080 HTTP/1.1\\r\\n\\r\\nGET /hello.txt HTTP/1.0\\r\\n\\r\\n'; "
                         "sleep 2) | nc -w 5 127.0.0.1 3128"),
              ::testing::AllOf(HasSubstr("200 Connection established"), HasSubstr("hello-egress")));
  // Not on the list: another port of the same server.
  std::string other = sh(sb->id, "wget -q -O- http://" + server + ":8081/hello.txt");
  EXPECT_THAT(other, Not(HasSubstr("hello-egress")));
  EXPECT_THAT(other, HasSubstr("403"));
  // Never the host, nor link-local metadata, nor loopback, though listed.
  for (const std::string& target : {inet.host_ip() + ":8080", std::string("169.254.169.254:80"), std::string("127.0.0.1:22")}) {
    std::string out = sh(sb->id, "(printf 'CONNECT " + target + " HTTP/1.1\\r\\n\\r\\n'; sleep 2) | nc -w 5 127.0.0.1 3128");
    EXPECT_THAT(out, HasSubstr("403")) << target;
    EXPECT_THAT(out, Not(HasSubstr("200 Connection established"))) << target;
  }
  // No way around the proxy: the guest has no network device at all.
  EXPECT_THAT(sh(sb->id, "echo x | nc -w 2 " + server + " 8080"), Not(HasSubstr("rc=0")));

  // A large download arrives whole: many windows' worth, credit going both ways.
  EXPECT_THAT(sh(sb->id, "wget -q -O- http://" + server + ":8080/big.bin | md5sum", 300000),
              HasSubstr(big_md5 + "  -\nrc=0"));

  // More connections at once than the cap: the first 32 are served, the rest
  // answered 503, and the sandbox still answers.
  std::string many = sh(sb->id,
                        "for i in $(seq 40); do (printf 'CONNECT " + server +
                            ":8080 HTTP/1.1\\r\\n\\r\\n'; sleep 30) | nc -w 40 127.0.0.1 3128 > /tmp/c$i 2>&1 & done; "
                            "sleep 20; echo served=$(grep -l '200 Connection' /tmp/c* | wc -l) "
                            "refused=$(grep -l ' 503 ' /tmp/c* | wc -l); wait",
                        300000);
  std::printf("40 connections at once: %s", many.c_str());
  EXPECT_THAT(many, HasSubstr("refused=8")) << many;
  EXPECT_THAT(many, HasSubstr("served=32")) << many;

  // A reader that stops reading while the server sends 64 MiB: flow control
  // holds the rest back at the server (neither the daemon nor the guest
  // buffers it), and everything else in the sandbox still works.
  auto before = c->Stats(sb->id);
  ASSERT_TRUE(before.ok()) << before.status().message();
  sh(sb->id, "((printf 'GET http://" + server + ":8080/huge.bin HTTP/1.0\\r\\n\\r\\n'; sleep 600) | "
             "nc 127.0.0.1 3128 | sleep 600) >/dev/null 2>&1 &");
  std::this_thread::sleep_for(std::chrono::seconds(10));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(sh(sb->id, "echo alive"), HasSubstr("alive\nrc=0"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  EXPECT_GE(inet.EstablishedConnections(), 1) << "the stalled download is not open at the server";
  auto during = c->Stats(sb->id);
  ASSERT_TRUE(during.ok()) << during.status().message();
  std::printf("stalled 64 MiB download: daemon RSS %+lld KiB, guest sandbox memory %+lld KiB, open at the server: %d\n",
              (static_cast<long long>(during->daemon_rss_bytes) - static_cast<long long>(before->daemon_rss_bytes)) / 1024,
              (static_cast<long long>(during->usage.memory_bytes) - static_cast<long long>(before->usage.memory_bytes)) / 1024,
              inet.EstablishedConnections());
  EXPECT_LT(during->daemon_rss_bytes, before->daemon_rss_bytes + (24u << 20))
      << "the daemon buffered a stalled connection";
  EXPECT_LT(during->usage.memory_bytes, before->usage.memory_bytes + (24u << 20))
      << "the guest buffered a stalled connection";
  // Another connection still goes through meanwhile.
  EXPECT_THAT(sh(sb->id, "wget -q -O- http://" + server + ":8080/hello.txt"), HasSubstr("hello-egress\nrc=0"));

  // Without an allow list: no listener in the guest, nothing leaves.
  SandboxSpec plain_spec;
  plain_spec.substrate = "microvm";
  plain_spec.image = rootfs;
  auto plain = c->Create(plain_spec);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  std::string none = sh(plain->id, "wget -q -T 3 -O- http://" + server + ":8080/hello.txt; echo | nc -w 2 127.0.0.1 3128");
  EXPECT_THAT(none, Not(HasSubstr("hello-egress")));
  EXPECT_THAT(none, Not(HasSubstr("rc=0")));
  EXPECT_THAT(sh(plain->id, "env"), Not(HasSubstr("http_proxy")));
  ASSERT_TRUE(c->Destroy(plain->id).ok());

  // Destroying the sandbox closes every connection, the stalled one too.
  ASSERT_TRUE(c->Destroy(sb->id).ok());
  int open = -1;
  for (int i = 0; i < 100 && open != 0; ++i) {
    open = inet.EstablishedConnections();
    if (open != 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(open, 0) << "connections outlived their sandbox";
}

// The ids of the VMs whose QEMU runs (its -name is paddock-vm-ID).
std::set<std::string> RunningVmIds(const std::string& state_dir) {
  std::set<std::string> ids;
  for (pid_t pid : StrayQemuProcesses(state_dir)) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t at = cmd.find("paddock-vm-");
    if (at != std::string::npos) ids.insert(cmd.substr(at + 11, cmd.find('\0', at) - at - 11));
  }
  return ids;
}

// A VM booted ahead of time for the warm pool (which knows nothing of allow
// lists) serves a sandbox with one: its paddock-init starts listening when
// the sandbox is created.
TEST(MicrovmDaemon, AWarmVmServesASandboxWithAnAllowList) {
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  testing::TestInternet inet;
  ASSERT_TRUE(inet.ok()) << inet.why();
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{
      .args = {"--microvm-accel", o.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "1"}});
  ASSERT_EQ(d.Start(), "");
  client::ClientOptions co;
  co.socket_path = d.socket_path();
  auto c = client::Client::Connect(co);
  ASSERT_TRUE(c.ok()) << c.status().message();
  SandboxSpec spec;
  spec.substrate = "microvm";
  spec.image = rootfs;
  auto first = c->Create(spec);  // cold; asks the pool for one like it
  ASSERT_TRUE(first.ok()) << first.status().message();
  spec.network_allow = {inet.server_ip() + ":8080"};
  // Until a create is served by a VM that was already running (a cold one
  // meanwhile means the warm one was still booting: try again).
  std::string warm_id;
  for (int attempt = 0; attempt < 20 && warm_id.empty(); ++attempt) {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    std::set<std::string> running = RunningVmIds(d.state_dir());
    auto sb = c->Create(spec);
    ASSERT_TRUE(sb.ok()) << sb.status().message() << d.LogTail();
    if (running.count(sb->id)) warm_id = sb->id;
    else ASSERT_TRUE(c->Destroy(sb->id).ok());
  }
  ASSERT_FALSE(warm_id.empty()) << "no create was served by a warm VM";
  ExecRequest r;
  r.shell = "wget -q -O- http://" + inet.server_ip() + ":8080/hello.txt 2>&1; echo rc=$?";
  r.timeout_ms = 60000;
  auto res = c->Exec(warm_id, r);
  ASSERT_TRUE(res.ok()) << res.status().message();
  EXPECT_THAT(res->stdout_data, HasSubstr("hello-egress\nrc=0"));
  // The first sandbox, from the same pool's recipe, has no proxy.
  r.shell = "echo | nc -w 2 127.0.0.1 3128; echo rc=$?";
  auto plain = c->Exec(first->id, r);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  EXPECT_THAT(plain->stdout_data, Not(HasSubstr("rc=0")));
}

// `paddock sandbox pause|resume|fork` through a real daemon: a paused VM is
// listed as paused, survives the daemon's restart (its QEMU gone meanwhile)
// and resumes with its files; a fork gives running copies.
TEST(MicrovmDaemon, CliPausesAVmAcrossADaemonRestartResumesAndForksIt) {
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{
      .args = {"--microvm-accel", o.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "0"}});
  ASSERT_EQ(d.Start(), "");
  const std::string cli = testing::BuiltBinary("paddock");
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {cli, "--socket", d.socket_path()});
    return testing::RunProgram(args);
  };
  auto created = run({"sandbox", "create", "--substrate", "microvm", "--image", rootfs});
  ASSERT_EQ(created.code, 0) << created.err;
  std::string id = created.out.substr(0, created.out.find('\n'));
  auto wrote = run({"sandbox", "exec", id, "--", "sh", "-c", "echo kept > /work/f; echo 41 > /tmp/mem"});
  ASSERT_EQ(wrote.code, 0) << wrote.err;

  auto paused = run({"--json", "sandbox", "pause", id});
  ASSERT_EQ(paused.code, 0) << paused.err << d.LogTail();
  EXPECT_THAT(paused.out, HasSubstr("\"state\":\"paused\""));
  auto listed = run({"--json", "sandbox", "ls"});
  EXPECT_THAT(listed.out, HasSubstr("\"paused\""));
  auto refused = run({"sandbox", "exec", id, "--", "true"});
  EXPECT_NE(refused.code, 0);
  EXPECT_THAT(refused.err, HasSubstr("paused"));

  ASSERT_EQ(d.Restart(), "") << d.LogTail();
  EXPECT_TRUE(StrayQemuProcesses(d.state_dir()).empty());
  listed = run({"--json", "sandbox", "ls"});
  EXPECT_THAT(listed.out, HasSubstr(id));
  EXPECT_THAT(listed.out, HasSubstr("\"paused\""));
  auto resumed = run({"sandbox", "resume", id});
  ASSERT_EQ(resumed.code, 0) << resumed.err << d.LogTail();
  auto read = run({"sandbox", "exec", id, "--", "sh", "-c", "cat /work/f /tmp/mem"});
  EXPECT_EQ(read.code, 0) << read.err;
  EXPECT_EQ(read.out, "kept\n41\n");

  auto forked = run({"--json", "sandbox", "fork", id, "--count", "2"});
  ASSERT_EQ(forked.code, 0) << forked.err << d.LogTail();
  auto j = nlohmann::json::parse(forked.out);
  ASSERT_EQ(j["sandboxes"].size(), 2u);
  for (const auto& child : j["sandboxes"]) {
    auto r = run({"sandbox", "exec", child.get<std::string>(), "--", "cat", "/tmp/mem"});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, "41\n");
  }
  auto bad = run({"sandbox", "fork", id, "--count", "0"});
  EXPECT_NE(bad.code, 0);

  // A memory snapshot by `sandbox snapshot`, and a create from it.
  auto snap = run({"sandbox", "snapshot", id, "--name", "keep1"});
  ASSERT_EQ(snap.code, 0) << snap.err << d.LogTail();
  EXPECT_THAT(snap.out, HasSubstr("microvm-snapshot:keep1"));
  auto copy = run({"sandbox", "create", "--substrate", "microvm", "--image", "microvm-snapshot:keep1"});
  ASSERT_EQ(copy.code, 0) << copy.err << d.LogTail();
  const std::string copy_id = copy.out.substr(0, copy.out.find('\n'));
  auto copied = run({"sandbox", "exec", copy_id, "--", "cat", "/tmp/mem"});
  EXPECT_EQ(copied.out, "41\n") << copied.err;
  auto missing = run({"sandbox", "create", "--substrate", "microvm", "--image", "microvm-snapshot:nope"});
  EXPECT_NE(missing.code, 0);
  EXPECT_THAT(missing.err, HasSubstr("no microVM memory snapshot named 'nope'"));
  // `image ls` lists it; `image rm` deletes it (the copy made from it runs on).
  EXPECT_TRUE(std::filesystem::exists(d.state_dir() + "/microvm/snapshots/keep1/stream"));
  auto images = run({"--json", "image", "ls"});
  EXPECT_THAT(images.out, HasSubstr("\"microvm-snapshot:keep1\"")) << images.out;
  EXPECT_THAT(run({"image", "ls"}).out, HasSubstr("microvm-snapshot:keep1"));
  auto removed = run({"image", "rm", "microvm-snapshot:keep1"});
  EXPECT_EQ(removed.code, 0) << removed.err;
  EXPECT_FALSE(std::filesystem::exists(d.state_dir() + "/microvm/snapshots/keep1"));
  EXPECT_EQ(run({"sandbox", "exec", copy_id, "--", "cat", "/tmp/mem"}).out, "41\n");
  EXPECT_THAT(run({"--json", "image", "ls"}).out, Not(HasSubstr("microvm-snapshot:keep1")));
  auto again = run({"image", "rm", "microvm-snapshot:keep1"});
  EXPECT_NE(again.code, 0);
  EXPECT_THAT(again.err, HasSubstr("no microVM memory snapshot named 'keep1'"));
  auto hostile = run({"image", "rm", "microvm-snapshot:../paused"});
  EXPECT_NE(hostile.code, 0);
  EXPECT_TRUE(std::filesystem::exists(d.state_dir() + "/microvm"));
  auto help = run({"sandbox", "pause", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("memory"));
}

// A front (paddockd --nodes) forwards pause, resume and fork to the node that
// holds the microVM: the copies are the front's sandboxes on that node, each
// with the parent's memory, and their writes are their own.
TEST(MicrovmDaemon, AFrontPausesResumesAndForksAMicrovmOnItsNode) {
  testing::UseEmulationWhereKvmCannotRunGuests();
  MicrovmOptions o = MicrovmOptionsFromEnvironment();
  PADDOCK_REQUIRE_MICROVM();
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess node(testing::DaemonOptions{
      .args = {"--microvm-accel", o.accel, "--allow-tcg-microvms", "--microvm-warm-pool", "0"},
      .allow_dir_images = false});
  const std::string token_file = node.dir() + "/front-token";
  std::ofstream(token_file) << "microvm-front-token\n";
  ::chmod(token_file.c_str(), 0600);
  const std::string address = "127.0.0.1:" + std::to_string(testing::FreeLoopbackPort());
  ASSERT_EQ(node.Start({"--listen-tcp", address, "--token-file", token_file}), "");
  ASSERT_EQ(node.Cli({"image", "import-dir", rootfs, "--name", "busybox:1"}).code, 0);
  testing::DaemonProcess front(testing::DaemonOptions{.allow_dir_images = false});
  ASSERT_EQ(front.Start({"--nodes", address, "--node-token-file", token_file, "--node-heartbeat-ms", "200"}), "");
  auto run = [&](std::vector<std::string> args) { return front.Cli(std::move(args)); };
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
       std::chrono::steady_clock::now() < until;) {
    if (run({"--json", "node", "ls"}).out.find("\"ready\"") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto created = run({"sandbox", "create", "--substrate", "microvm", "--image", "busybox:1"});
  ASSERT_EQ(created.code, 0) << created.err << front.LogTail();
  std::string id = created.out.substr(0, created.out.find('\n'));
  ASSERT_EQ(run({"sandbox", "exec", id, "--", "sh", "-c", "echo 41 > /tmp/mem"}).code, 0);

  auto paused = run({"--json", "sandbox", "pause", id});
  ASSERT_EQ(paused.code, 0) << paused.err << front.LogTail() << node.LogTail();
  EXPECT_THAT(paused.out, HasSubstr("\"state\":\"paused\""));
  EXPECT_THAT(node.Cli({"--json", "sandbox", "ls"}).out, HasSubstr("\"paused\""));  // on the node itself
  EXPECT_NE(run({"sandbox", "exec", id, "--", "true"}).code, 0);
  auto resumed = run({"sandbox", "resume", id});
  ASSERT_EQ(resumed.code, 0) << resumed.err << node.LogTail();
  auto read = run({"sandbox", "exec", id, "--", "cat", "/tmp/mem"});
  EXPECT_EQ(read.out, "41\n") << read.err;

  auto forked = run({"--json", "sandbox", "fork", id, "--count", "2"});
  ASSERT_EQ(forked.code, 0) << forked.err << node.LogTail();
  auto j = nlohmann::json::parse(forked.out);
  ASSERT_EQ(j["sandboxes"].size(), 2u);
  int i = 0;
  for (const auto& child : j["sandboxes"]) {
    const std::string cid = child.get<std::string>();
    auto r = run({"sandbox", "exec", cid, "--", "sh", "-c", "cat /tmp/mem; echo " + std::to_string(i++) + " > /tmp/mem"});
    EXPECT_EQ(r.out, "41\n") << r.err;
  }
  // Each copy's write is its own; the parent's memory is untouched.
  i = 0;
  for (const auto& child : j["sandboxes"]) {
    auto r = run({"sandbox", "exec", child.get<std::string>(), "--", "cat", "/tmp/mem"});
    EXPECT_EQ(r.out, std::to_string(i++) + "\n");
  }
  EXPECT_EQ(run({"sandbox", "exec", id, "--", "cat", "/tmp/mem"}).out, "41\n");
  // The node holds all three, as this front's (its lease covers the copies).
  auto listed = node.Cli({"--json", "sandbox", "ls"});
  EXPECT_EQ(nlohmann::json::parse(listed.out)["sandboxes"].size(), 3u) << listed.out;
  // A memory snapshot through the front stays on the node; a create naming it
  // restores it there.
  auto snap = run({"sandbox", "snapshot", id, "--name", "via-front"});
  ASSERT_EQ(snap.code, 0) << snap.err << front.LogTail();
  EXPECT_THAT(snap.out, HasSubstr("microvm-snapshot:via-front"));
  auto restored = run({"sandbox", "create", "--substrate", "microvm", "--image", "microvm-snapshot:via-front"});
  ASSERT_EQ(restored.code, 0) << restored.err << front.LogTail();
  const std::string restored_id = restored.out.substr(0, restored.out.find('\n'));
  EXPECT_EQ(run({"sandbox", "exec", restored_id, "--", "cat", "/tmp/mem"}).out, "41\n");
  EXPECT_EQ(run({"sandbox", "destroy", restored_id}).code, 0);
  // Heartbeats later the front still knows where it is: the node reports its
  // memory snapshots, and a create from one goes only to a node holding it.
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  auto again = run({"sandbox", "create", "--substrate", "microvm", "--image", "microvm-snapshot:via-front"});
  ASSERT_EQ(again.code, 0) << again.err << front.LogTail();
  EXPECT_EQ(run({"sandbox", "destroy", again.out.substr(0, again.out.find('\n'))}).code, 0);
  // Listed and removed through the front, on the node.
  EXPECT_THAT(run({"image", "ls"}).out, HasSubstr("microvm-snapshot:via-front"));
  auto removed = run({"image", "rm", "microvm-snapshot:via-front"});
  EXPECT_EQ(removed.code, 0) << removed.err << front.LogTail();
  EXPECT_THAT(node.Cli({"image", "ls"}).out, Not(HasSubstr("via-front")));
  EXPECT_THAT(run({"image", "ls"}).out, Not(HasSubstr("via-front")));
  auto gone = run({"sandbox", "create", "--substrate", "microvm", "--image", "microvm-snapshot:via-front"});
  EXPECT_NE(gone.code, 0);
  EXPECT_THAT(gone.err, HasSubstr("no node holds microvm-snapshot:via-front"));
  auto twice = run({"image", "rm", "microvm-snapshot:via-front"});
  EXPECT_NE(twice.code, 0);
  EXPECT_THAT(twice.err, HasSubstr("no microVM memory snapshot named 'via-front'"));
  for (const auto& child : j["sandboxes"]) EXPECT_EQ(run({"sandbox", "destroy", child.get<std::string>()}).code, 0);
  EXPECT_EQ(run({"sandbox", "destroy", id}).code, 0);
}

}  // namespace
}  // namespace paddock
