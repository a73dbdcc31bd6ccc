// A fleet on this machine, every part real: three paddockd nodes serving TCP
// on loopback with a token, and a front (paddockd --nodes) that places
// sandboxes on them through the same Sandboxes API a harness uses. Covers
// placement and spread, calls through the front, `paddock node ls|drain`, a
// node SIGKILLed (lost, its sandboxes fail fast, creates go elsewhere), fencing
// (a front whose heartbeats stop loses its sandboxes on the nodes; a superseded
// epoch is refused), and bad node specs, tokens and addresses.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <optional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "image.grpc.pb.h"
#include "paddock/client.h"
#include "paddock/grpc_call.h"
#include "tests/rollout_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

using ::testing::HasSubstr;
using json = nlohmann::json;

namespace paddock {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kToken[] = "fleet-test-token";
constexpr int kLeaseMs = 2000;

class FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    dir_ = "/tmp/paddock-fleet-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir_);
    token_file_ = dir_ + "/token";
    std::ofstream(token_file_) << kToken << "\n";
    ::chmod(token_file_.c_str(), 0600);
  }
  void TearDown() override {
    front_.reset();
    nodes_.clear();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Starts `n` nodes, each with busybox:1 in its store.
  void StartNodes(int n, std::vector<std::string> more = {}) {
    for (int i = 0; i < n; ++i) {
      testing::DaemonOptions o;
      o.allow_dir_images = false;
      auto& d = nodes_.emplace_back(std::make_unique<testing::DaemonProcess>(o));
      int port = testing::FreeLoopbackPort();
      std::vector<std::string> args = {"--listen-tcp", "127.0.0.1:" + std::to_string(port), "--token-file",
                                       token_file_, "--front-lease-ms", std::to_string(kLeaseMs), "--warm-pool", "0"};
      args.insert(args.end(), more.begin(), more.end());
      ASSERT_EQ(d->Start(args), "");
      node_args_.push_back(args);
      ::chmod(d->dir().c_str(), 0755);
      addresses_.push_back("127.0.0.1:" + std::to_string(port));
      auto c = Local(*d);
      ASSERT_TRUE(c.ImageImportDir(rootfs_, "busybox:1").ok());
    }
  }

  std::string NodeList() const {
    std::string s;
    for (const auto& a : addresses_) s += (s.empty() ? "" : ",") + a;
    return s;
  }

  void StartFront(const std::string& nodes, std::vector<std::string> more = {}) {
    testing::DaemonOptions o;
    o.allow_dir_images = false;
    front_.emplace(o);
    std::vector<std::string> args = {"--nodes", nodes, "--node-token-file", token_file_, "--node-heartbeat-ms", "200"};
    args.insert(args.end(), more.begin(), more.end());
    ASSERT_EQ(front_->Start(args), "");
  }

  static client::Client Local(const testing::DaemonProcess& d) {
    client::ClientOptions o;
    o.socket_path = d.socket_path();
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(c).value();
  }

  json NodeLs() const {
    auto r = front_->Cli({"--json", "node", "ls"});
    EXPECT_EQ(r.code, 0) << r.err;
    auto j = json::parse(r.out, nullptr, false);
    return j.is_discarded() ? json::object() : j;
  }

  // Waits until `count` nodes are in `state`; the last listing.
  json WaitForNodes(const std::string& state, size_t count, std::chrono::milliseconds timeout) {
    auto end = Clock::now() + timeout;
    json j;
    for (;;) {
      j = NodeLs();
      size_t n = 0;
      for (const auto& node : j.value("nodes", json::array())) n += node.value("state", "") == state;
      if (n >= count || Clock::now() > end) return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  // `n` container sandboxes created through the front; their ids.
  std::vector<std::string> CreateMany(client::Client& front, int n) {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) {
      auto made = front.Create(Busybox());
      EXPECT_TRUE(made.ok()) << made.status().ToString();
      if (made.ok()) ids.push_back(made->id);
    }
    return ids;
  }

  // The state `paddock node ls` gave a node; "" when it is not listed.
  static std::string StateOf(const json& ls, const std::string& address) {
    for (const auto& n : ls.value("nodes", json::array()))
      if (n["address"] == address) return n["state"];
    return "";
  }

  // The rollout as `paddock rollout ls` shows it (null until listed).
  json RolloutState(const std::string& id) const {
    auto ls = front_->Cli({"--json", "rollout", "ls"});
    if (ls.code == 0)
      for (auto& ro : json::parse(ls.out, nullptr, false))
        if (ro.is_object() && ro["rollout_id"] == id) return ro;
    return json();
  }
  // Polls RolloutState until `done` holds or `timeout` passes; the last state.
  json WaitForRollout(const std::string& id, const std::function<bool(const json&)>& done,
                      std::chrono::seconds timeout) const {
    json state;
    for (auto until = Clock::now() + timeout; Clock::now() < until;) {
      state = RolloutState(id);
      if (state.is_object() && done(state)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return state;
  }
  static bool AllEnded(const json& s, int tasks) { return s["done"].get<int>() + s["failed"].get<int>() >= tasks; }

  static SandboxSpec Busybox() {
    SandboxSpec s;
    s.substrate = "container";
    s.image = "busybox:1";
    return s;
  }

  static ExecRequest Shell(const std::string& s) {
    ExecRequest r;
    r.shell = s;
    r.timeout_ms = 20000;
    return r;
  }

  // This front's sandboxes on a node, by the front's id.
  static std::vector<std::string> FrontSandboxesOn(const testing::DaemonProcess& node) {
    auto list = Local(node).List();
    EXPECT_TRUE(list.ok()) << list.status().ToString();
    std::vector<std::string> ids;
    if (list.ok())
      for (const auto& s : *list)
        if (auto it = s.labels.find("paddock.front_sandbox"); it != s.labels.end()) ids.push_back(it->second);
    return ids;
  }

  std::string rootfs_, dir_, token_file_;
  std::vector<std::unique_ptr<testing::DaemonProcess>> nodes_;
  std::vector<std::string> addresses_;
  std::vector<std::vector<std::string>> node_args_;  // each node's start flags, for a restart
  std::optional<testing::DaemonProcess> front_;
};

TEST_F(FleetTest, SandboxesArePlacedAcrossNodesAndServedThroughTheFront) {
  StartNodes(3);
  StartFront(NodeList());
  json ls = WaitForNodes("ready", 3, std::chrono::seconds(15));
  ASSERT_EQ(ls["nodes"].size(), 3u) << ls.dump();
  for (const auto& n : ls["nodes"]) {
    EXPECT_EQ(n["state"], "ready") << n.dump();
    EXPECT_THAT(n["substrates"].dump(), HasSubstr("container"));
    EXPECT_GE(n["images"].get<int>(), 1);
    EXPECT_GT(n["mem_available_bytes"].get<uint64_t>(), 0u);
  }
  auto text = front_->Cli({"node", "ls"});
  EXPECT_EQ(text.code, 0) << text.err;
  EXPECT_THAT(text.out, HasSubstr("ADDRESS"));
  EXPECT_THAT(text.out, HasSubstr(addresses_[0]));

  client::Client front = Local(*front_);
  std::vector<std::string> ids = CreateMany(front, 6);
  ASSERT_EQ(ids.size(), 6u);
  // Spread: every node got some (6 over 3 nodes with room for 1000 each).
  size_t placed = 0;
  for (auto& n : nodes_) {
    auto on = FrontSandboxesOn(*n);
    EXPECT_GE(on.size(), 1u) << n->LogTail();
    placed += on.size();
  }
  EXPECT_EQ(placed, 6u);

  // Calls go through: exec with output, files, usage, streaming.
  for (const auto& id : ids) {
    auto r = front.Exec(id, Shell("echo hello-$((6*7)) && echo err >&2"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->exit_code, 0);
    EXPECT_EQ(r->stdout_data, "hello-42\n");
    EXPECT_EQ(r->stderr_data, "err\n");
  }
  ASSERT_TRUE(front.WriteFile(ids[0], "/tmp/f", "through the front\n").ok());
  auto read = front.ReadFile(ids[0], "/tmp/f");
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, "through the front\n");
  auto capped = Shell("yes | head -c 300000");
  capped.output_cap = 1000;
  auto big = front.Exec(ids[1], capped);
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->stdout_data.size(), 1000u);
  EXPECT_TRUE(big->stdout_truncated);
  std::string streamed;
  auto s = front.ExecStream(ids[2], Shell("for i in 1 2 3; do echo $i; done"),
                            [&](int, std::string_view c) { streamed.append(c); });
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(streamed, "1\n2\n3\n");
  auto missing = front.Exec(ids[0], Shell("cat /nonexistent"));
  ASSERT_TRUE(missing.ok());
  EXPECT_NE(missing->exit_code, 0);

  // An image no node holds: the node's error comes back, naming the image.
  SandboxSpec nope = Busybox();
  nope.image = "no-such-image:1";
  auto bad = front.Create(nope);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kNotFound) << bad.status().ToString();
  EXPECT_THAT(bad.status().message(), HasSubstr("no-such-image"));

  // Destroy through the front leaves nothing on the nodes.
  for (const auto& id : ids) EXPECT_TRUE(front.Destroy(id).ok());
  for (auto& n : nodes_) EXPECT_TRUE(FrontSandboxesOn(*n).empty());
  ls = NodeLs();
  for (const auto& n : ls["nodes"]) EXPECT_EQ(n["placed"], 0) << n.dump();
}

TEST_F(FleetTest, ALostNodeFailsItsSandboxesFastAndCreatesGoElsewhere) {
  StartNodes(2);
  StartFront(NodeList());
  ASSERT_EQ(WaitForNodes("ready", 2, std::chrono::seconds(15))["nodes"].size(), 2u);
  client::Client front = Local(*front_);
  std::vector<std::string> ids = CreateMany(front, 4);
  ASSERT_EQ(ids.size(), 4u);
  auto on_dead = FrontSandboxesOn(*nodes_[0]);
  ASSERT_FALSE(on_dead.empty());
  ASSERT_EQ(nodes_[0]->Stop(SIGKILL), 128 + SIGKILL);
  auto killed = Clock::now();
  json ls = WaitForNodes("lost", 1, std::chrono::seconds(15));
  double detect_s = std::chrono::duration<double>(Clock::now() - killed).count();
  ASSERT_EQ(StateOf(ls, addresses_[0]), "lost") << ls.dump();
  // Lost after the node's lease (2 s) plus a heartbeat and a quarter lease.
  EXPECT_LT(detect_s, 8.0);

  auto t0 = Clock::now();
  auto r = front.Exec(on_dead[0], Shell("echo never"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(addresses_[0]));
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 1.0);  // fails fast, no timeout

  for (int i = 0; i < 3; ++i) {
    auto made = front.Create(Busybox());
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    auto e = front.Exec(made->id, Shell("echo ok"));
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    EXPECT_EQ(e->stdout_data, "ok\n");
  }
  EXPECT_EQ(FrontSandboxesOn(*nodes_[1]).size(), 4 - on_dead.size() + 3);

  // Drained: no new sandboxes there; with no other node, creates wait then say why.
  auto drain = front_->Cli({"node", "drain", addresses_[1]});
  EXPECT_EQ(drain.code, 0) << drain.err;
  EXPECT_THAT(drain.out, HasSubstr("draining"));
  auto unknown = front_->Cli({"node", "drain", "10.9.9.9:1"});
  EXPECT_NE(unknown.code, 0);
  EXPECT_THAT(unknown.err, HasSubstr("no node 10.9.9.9:1"));
}

// The rollout engine on a front: episodes run on the nodes; a node SIGKILLed
// mid-rollout costs its episodes a restart from the log on the other node, and
// every episode still earns reward 1, which the verifier gives only when each
// tool call's line is in /tmp/ran exactly once (no call ran twice, none lost).
TEST_F(FleetTest, ARolloutThroughTheFrontSurvivesANodeKilledMidway) {
  if (!std::filesystem::exists("/usr/local/share/paddock/deepseek-v3-tokenizer.json") && !getenv("PADDOCK_TOKENIZER"))
    GTEST_SKIP() << "no V4 tokenizer installed (scripts/install-deps.sh)";
  const int kTasks = 12, kTurns = 6;
  StartNodes(2);
  StartFront(NodeList());
  ASSERT_EQ(WaitForNodes("ready", 2, std::chrono::seconds(15))["nodes"].size(), 2u);
  std::string tasks = dir_ + "/tasks.jsonl", script = dir_ + "/script.json";
  std::ofstream(tasks) << testing::CountingTasks("busybox:1", kTasks, kTurns);
  std::ofstream(script) << testing::CountingScript(kTurns, "0.5");
  auto started = front_->Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency",
                              std::to_string(kTasks), "--id", "fleet-run", "--detach"});
  ASSERT_EQ(started.code, 0) << started.err << front_->LogTail();
  // Mid-episode: every episode has run a tool call or two.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ASSERT_FALSE(FrontSandboxesOn(*nodes_[0]).empty()) << "no episode on the node to kill";
  ASSERT_EQ(nodes_[0]->Stop(SIGKILL), 128 + SIGKILL);

  json state = WaitForRollout("fleet-run", [&](const json& st) { return AllEnded(st, kTasks); },
                              std::chrono::seconds(120));
  ASSERT_TRUE(state.is_object()) << front_->LogTail();
  EXPECT_EQ(state["done"].get<int>(), kTasks) << state.dump() << front_->LogTail();
  auto exported = front_->Cli({"export", "fleet-run"});
  ASSERT_EQ(exported.code, 0) << exported.err;
  int moved = 0, lines = 0;
  std::istringstream in(exported.out);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    json l = json::parse(line);
    ++lines;
    EXPECT_EQ(l["reward"], 1.0) << l["episode_id"] << " " << l["failure_reason"] << " " << l["rebuild_note"];
    EXPECT_EQ(l["turns"], kTurns + 1);
    if (l["rebuild_note"].get<std::string>().find("moved to a new sandbox") != std::string::npos) ++moved;
  }
  EXPECT_EQ(lines, kTasks);
  EXPECT_GT(moved, 0) << "no episode was on the killed node";
  // The placement is in each episode's record: the node it ended on.
  auto log = front_->Cli({"--json", "log", "ls"});
  ASSERT_EQ(log.code, 0) << log.err;
  int placed_on_survivor = 0;
  for (const auto& ep : json::parse(log.out, nullptr, false).value("episodes", json::array())) {
    if (!ep.is_object() || ep.value("episode_id", "").rfind("fleet-run/", 0) != 0) continue;
    ASSERT_TRUE(ep["labels"].contains("paddock.node")) << ep.dump();
    placed_on_survivor += ep["labels"]["paddock.node"] == addresses_[1];
  }
  EXPECT_EQ(placed_on_survivor, kTasks) << "every episode ended on the node that stayed";
}

// A node given notice (SIGTERM with --drain-grace-s) takes no new sandboxes
// while those there keep working; at the end of the grace they are destroyed
// and the front learns it at its next call (gone, so an engine rebuilds).
TEST_F(FleetTest, ANodeGivenNoticeDrainsThenItsSandboxesAreGone) {
  StartNodes(2, {"--drain-grace-s", "3"});
  StartFront(NodeList());
  ASSERT_EQ(WaitForNodes("ready", 2, std::chrono::seconds(15))["nodes"].size(), 2u);
  client::Client front = Local(*front_);
  std::vector<std::string> ids = CreateMany(front, 4);
  ASSERT_EQ(ids.size(), 4u);
  auto on_first = FrontSandboxesOn(*nodes_[0]);
  ASSERT_FALSE(on_first.empty());
  ASSERT_EQ(::kill(nodes_[0]->pid(), SIGTERM), 0);
  json ls = WaitForNodes("draining", 1, std::chrono::seconds(5));
  EXPECT_EQ(StateOf(ls, addresses_[0]), "draining") << ls.dump();
  // Still served during the grace; new sandboxes go to the other node.
  auto during = front.Exec(on_first[0], Shell("echo still"));
  ASSERT_TRUE(during.ok()) << during.status().ToString();
  EXPECT_EQ(during->stdout_data, "still\n");
  auto made = front.Create(Busybox());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  auto on_second = FrontSandboxesOn(*nodes_[1]);
  EXPECT_NE(std::find(on_second.begin(), on_second.end(), made->id), on_second.end());
  // After the grace: gone, and said so at once.
  std::this_thread::sleep_for(std::chrono::milliseconds(3300));
  auto t0 = Clock::now();
  auto after = front.Exec(on_first[0], Shell("echo never"));
  ASSERT_FALSE(after.ok());
  EXPECT_TRUE(after.status().code() == Code::kNotFound || after.status().code() == Code::kUnavailable)
      << after.status().ToString();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 8.0);
  EXPECT_THAT(nodes_[0]->LogTail(), HasSubstr("draining: no new sandboxes"));
}

// All nodes gone: the rollout waits (waiting_for_nodes, shown live) instead of
// failing its episodes, and goes on when a node returns.
TEST_F(FleetTest, ARolloutWaitsForNodesWhenAllAreGoneAndGoesOnWhenOneReturns) {
  if (!std::filesystem::exists("/usr/local/share/paddock/deepseek-v3-tokenizer.json") && !getenv("PADDOCK_TOKENIZER"))
    GTEST_SKIP() << "no V4 tokenizer installed (scripts/install-deps.sh)";
  const int kTasks = 4, kTurns = 6;
  StartNodes(1);
  StartFront(NodeList(), {"--place-timeout-ms", "500"});
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);
  std::string tasks = dir_ + "/tasks.jsonl", script = dir_ + "/script.json";
  std::ofstream(tasks) << testing::CountingTasks("busybox:1", kTasks, kTurns);
  std::ofstream(script) << testing::CountingScript(kTurns, "0.5");
  auto started = front_->Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency",
                              std::to_string(kTasks), "--id", "wait-run", "--detach"});
  ASSERT_EQ(started.code, 0) << started.err << front_->LogTail();
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  ASSERT_EQ(nodes_[0]->Stop(SIGKILL), 128 + SIGKILL);

  json state = WaitForRollout("wait-run", [](const json& st) { return st["state"] == "waiting_for_nodes"; },
                              std::chrono::seconds(30));
  ASSERT_TRUE(state.is_object());
  EXPECT_EQ(state["state"], "waiting_for_nodes") << state.dump() << front_->LogTail();
  EXPECT_EQ(state["failed"], 0) << state.dump();
  auto watch = front_->Cli({"rollout", "ls"});
  EXPECT_THAT(watch.out, HasSubstr("waiting_for_nodes")) << watch.out;

  // The node comes back (same address, same state dir): the rollout goes on.
  ASSERT_EQ(nodes_[0]->Start(node_args_[0]), "");
  ::chmod(nodes_[0]->dir().c_str(), 0755);
  state = WaitForRollout("wait-run", [&](const json& st) { return AllEnded(st, kTasks); }, std::chrono::seconds(90));
  EXPECT_EQ(state["done"].get<int>(), kTasks) << state.dump() << front_->LogTail();
  auto exported = front_->Cli({"export", "wait-run"});
  std::istringstream in(exported.out);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    json l = json::parse(line);
    EXPECT_EQ(l["reward"], 1.0) << l["episode_id"] << " " << l["failure_reason"];
  }
}

// GET url with python3's urllib: the status and body.
std::pair<int, std::string> HttpGet(const std::string& url) {
  auto r = testing::RunProgram({"/usr/bin/python3", "-c",
                                "import sys, urllib.request, urllib.error\n"
                                "try:\n"
                                "  b = urllib.request.urlopen(sys.argv[1], timeout=10).read()\n"
                                "  print(200); sys.stdout.write(b.decode())\n"
                                "except urllib.error.HTTPError as e:\n"
                                "  print(e.code)\n",
                                url});
  size_t nl = r.out.find('\n');
  if (r.code != 0 || nl == std::string::npos) return {-1, r.err};
  return {std::stoi(r.out.substr(0, nl)), r.out.substr(nl + 1)};
}

// The value of the first sample line starting with `prefix` ("name{labels}"), or -1.
double Sample(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix + " ", 0) == 0) return std::stod(line.substr(prefix.size() + 1));
  return -1;
}

TEST_F(FleetTest, FrontsAndNodesServePrometheusMetrics) {
  int node_port = testing::FreeLoopbackPort(), front_port = testing::FreeLoopbackPort();
  StartNodes(1, {"--metrics-listen", "127.0.0.1:" + std::to_string(node_port)});
  StartFront(NodeList(), {"--metrics-listen", "127.0.0.1:" + std::to_string(front_port)});
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);
  client::Client front = Local(*front_);
  auto made = front.Create(Busybox());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(front.Exec(made->id, Shell("true")).ok());

  auto [fs, ftext] = HttpGet("http://127.0.0.1:" + std::to_string(front_port) + "/metrics");
  ASSERT_EQ(fs, 200) << ftext;
  EXPECT_THAT(ftext, HasSubstr("# TYPE paddock_exec_seconds histogram"));
  EXPECT_EQ(Sample(ftext, "paddock_nodes{state=\"ready\"}"), 1);
  EXPECT_EQ(Sample(ftext, "paddock_nodes{state=\"lost\"}"), 0);
  EXPECT_EQ(Sample(ftext, "paddock_node_placed_sandboxes{node=\"" + addresses_[0] + "\"}"), 1);
  EXPECT_EQ(Sample(ftext, "paddock_sandbox_creates_total"), 1);
  EXPECT_EQ(Sample(ftext, "paddock_exec_seconds_count"), 3);
  EXPECT_EQ(Sample(ftext, "paddock_exec_seconds_bucket{le=\"+Inf\"}"), 3);
  EXPECT_GT(Sample(ftext, "paddock_log_syncs_total"), -1);

  auto [ns, ntext] = HttpGet("http://127.0.0.1:" + std::to_string(node_port) + "/metrics");
  ASSERT_EQ(ns, 200) << ntext;
  EXPECT_EQ(Sample(ntext, "paddock_sandboxes_live"), 1);
  EXPECT_EQ(Sample(ntext, "paddock_exec_seconds_count"), 3);
  EXPECT_EQ(Sample(ntext, "paddock_draining"), 0);
  EXPECT_EQ(ntext.find("paddock_nodes"), std::string::npos);  // a node has no nodes
  EXPECT_EQ(ntext.find(made->id), std::string::npos);          // no ids in metrics

  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string(node_port) + "/other").first, 404);
  // A head past the limit is refused (400, or the connection closed on it),
  // and the endpoint goes on serving.
  EXPECT_NE(HttpGet("http://127.0.0.1:" + std::to_string(node_port) + "/metrics?x=" + std::string(100000, 'a')).first,
            200);
  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string(node_port) + "/metrics").first, 200);
}

TEST_F(FleetTest, AFrontWhoseHeartbeatsStopLosesItsSandboxesOnTheNodes) {
  StartNodes(1);
  StartFront(NodeList());
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);
  client::Client front = Local(*front_);
  auto made = front.Create(Busybox());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  ASSERT_EQ(FrontSandboxesOn(*nodes_[0]).size(), 1u);

  // A partition, as the node sees it: no heartbeat. The front process is stopped.
  ASSERT_EQ(::kill(front_->pid(), SIGSTOP), 0);
  auto end = Clock::now() + std::chrono::milliseconds(kLeaseMs * 4);
  while (!FrontSandboxesOn(*nodes_[0]).empty() && Clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(FrontSandboxesOn(*nodes_[0]).empty()) << "the node kept a fenced front's sandbox";
  // The node logs the fencing once its destroys are done, just after the
  // sandbox leaves its list.
  for (auto log_end = Clock::now() + std::chrono::seconds(5);
       nodes_[0]->LogTail().find("fenced 1 sandbox") == std::string::npos && Clock::now() < log_end;)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_THAT(nodes_[0]->LogTail(), HasSubstr("fenced 1 sandbox"));
  ASSERT_EQ(::kill(front_->pid(), SIGCONT), 0);

  // The front finds its sandbox gone; a call never runs there.
  auto r = front.Exec(made->id, Shell("echo after"));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().code() == Code::kUnavailable || r.status().code() == Code::kNotFound ||
              r.status().code() == Code::kFailedPrecondition)
      << r.status().ToString();
  // ... and once it is heard again it places new sandboxes there.
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);
  auto again = front.Create(Busybox());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(front.Exec(again->id, Shell("true")).ok());
}

TEST_F(FleetTest, ASupersededEpochIsRefusedAndItsSandboxesDestroyed) {
  StartNodes(1);
  client::ClientOptions o;
  o.tcp_target = addresses_[0];
  o.token = kToken;
  o.metadata = {{"paddock-front", "f1"}, {"paddock-epoch", "100"}};
  auto old_front = client::Client::Connect(o);
  ASSERT_TRUE(old_front.ok()) << old_front.status().ToString();
  // Before a heartbeat there is no lease: creates are refused.
  auto early = old_front->Create(Busybox());
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(early.status().message(), HasSubstr("holds no lease"));
  auto hb = old_front->Stats();
  ASSERT_TRUE(hb.ok()) << hb.status().ToString();
  EXPECT_EQ(hb->front_lease_ms, static_cast<uint32_t>(kLeaseMs));
  auto made = old_front->Create(Busybox());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  ASSERT_TRUE(old_front->Exec(made->id, Shell("true")).ok());

  o.metadata = {{"paddock-front", "f1"}, {"paddock-epoch", "101"}};
  auto new_front = client::Client::Connect(o);
  ASSERT_TRUE(new_front.ok());
  ASSERT_TRUE(new_front->Stats().ok());  // the restarted front's first heartbeat
  auto stale = old_front->Exec(made->id, Shell("echo stale"));
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(stale.status().message(), HasSubstr("superseded"));
  EXPECT_TRUE(Local(*nodes_[0]).List()->empty()) << "the old epoch's sandbox outlived it";

  // A front of another API version is refused, saying both versions.
  o.metadata = {{"paddock-front", "f2"}, {"paddock-epoch", "5"}, {"paddock-api", "999"}};
  auto other_api = client::Client::Connect(o);
  ASSERT_TRUE(other_api.ok());
  auto refused = other_api->Stats();
  EXPECT_EQ(refused.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("API version 999"));

  o.metadata = {{"paddock-front", "f1"}, {"paddock-epoch", "soon"}};
  auto malformed = client::Client::Connect(o);
  ASSERT_TRUE(malformed.ok());
  EXPECT_EQ(malformed->Stats().status().code(), Code::kInvalidArgument);
}

TEST_F(FleetTest, BadNodesAreStatesWithReasonsNeverHangs) {
  StartNodes(1);
  // A wrong token, a port where nothing listens, a node of the right token.
  std::string wrong_token_file = dir_ + "/wrong";
  std::ofstream(wrong_token_file) << "not-the-token\n";
  ::chmod(wrong_token_file.c_str(), 0600);
  int dead_port = testing::FreeLoopbackPort();
  testing::DaemonOptions fo;
  fo.allow_dir_images = false;
  front_.emplace(fo);
  ASSERT_EQ(front_->Start({"--nodes", addresses_[0] + ",127.0.0.1:" + std::to_string(dead_port), "--node-token-file",
                           wrong_token_file, "--node-heartbeat-ms", "200", "--place-timeout-ms", "1500"}),
            "");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  json ls = NodeLs();
  ASSERT_EQ(ls["nodes"].size(), 2u) << ls.dump();
  for (const auto& n : ls["nodes"]) {
    if (n["address"] == addresses_[0]) {
      EXPECT_EQ(n["state"], "refused") << n.dump();
      EXPECT_THAT(n["detail"].get<std::string>(), HasSubstr("token"));
    } else {
      EXPECT_EQ(n["state"], "connecting") << n.dump();
      EXPECT_FALSE(n["detail"].get<std::string>().empty());
    }
  }
  auto t0 = Clock::now();
  auto made = Local(*front_).Create(Busybox());
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), Code::kUnavailable) << made.status().ToString();
  EXPECT_THAT(made.status().message(), HasSubstr("not ready"));
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 10.0);
  front_.reset();

  // Specs that cannot work are refused at start, naming the flag.
  testing::DaemonProcess bad(fo);
  std::string why = bad.Start({"--nodes", "node-without-port", "--node-token-file", token_file_});
  EXPECT_THAT(why, HasSubstr("--nodes"));
  testing::DaemonProcess no_token(fo);
  why = no_token.Start({"--nodes", addresses_[0]});
  EXPECT_THAT(why, HasSubstr("--node-token-file"));
  // A DNS name that resolves to nothing: the front starts, with no node, and says so.
  testing::DaemonProcess dns(fo);
  ASSERT_EQ(dns.Start({"--nodes", "dns:no-such-node.invalid:7443", "--node-token-file", token_file_,
                       "--place-timeout-ms", "500"}),
            "");
  auto none = Local(dns).Create(Busybox());
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kUnavailable);
  EXPECT_THAT(dns.LogTail(), HasSubstr("no-such-node.invalid"));
  // A daemon that is not a front says how to make one.
  auto not_front = nodes_[0]->Cli({"node", "ls"});
  EXPECT_NE(not_front.code, 0);
  EXPECT_THAT(not_front.err, HasSubstr("--nodes"));
}

// ---- Images across nodes: a node fetches an image of the front's store it lacks ----

// A copy of the busybox rootfs with a file of its own, so its one layer is
// one no node holds.
std::string FrontOnlyRootfs(const std::string& rootfs, const std::string& dir, const std::string& marker) {
  std::string out = dir + "/front-only-rootfs";
  std::filesystem::copy(rootfs, out,
                        std::filesystem::copy_options::recursive | std::filesystem::copy_options::copy_symlinks);
  std::ofstream(out + "/marker") << marker;
  return out;
}

client::DaemonStats NodeStats(const testing::DaemonProcess& node) {
  client::ClientOptions o;
  o.socket_path = node.socket_path();
  auto c = client::Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return {};
  auto st = c->Stats();
  EXPECT_TRUE(st.ok()) << st.status().ToString();
  return st.ok() ? *st : client::DaemonStats{};
}

TEST_F(FleetTest, ANodeFetchesAnImageOfTheFrontOnceAndRunsIt) {
  int node_port = testing::FreeLoopbackPort(), front_port = testing::FreeLoopbackPort();
  StartNodes(1, {"--metrics-listen", "127.0.0.1:" + std::to_string(node_port)});
  StartFront(NodeList(), {"--metrics-listen", "127.0.0.1:" + std::to_string(front_port)});
  auto front = Local(*front_);
  auto imported = front.ImageImportDir(FrontOnlyRootfs(rootfs_, dir_, "from the front"), "front-only:1");
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  const std::string id = imported->images.at(0);
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);
  ASSERT_FALSE(Local(*nodes_[0]).ImageInspect(id).ok()) << "the node has the image before any create";

  // Two creates at once on the one node: one fetch, both wait on it.
  SandboxSpec spec = Busybox();
  spec.image = "front-only:1";
  std::vector<Result<client::SandboxInfo>> made(2, Error(Code::kInternal, "not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] { made[i] = Local(*front_).Create(spec); });
  for (auto& t : threads) t.join();
  for (auto& m : made) {
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    auto out = front.Exec(m->id, Shell("cat /marker"));
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ(out->stdout_data, "from the front");
  }
  client::DaemonStats stats = NodeStats(*nodes_[0]);
  EXPECT_EQ(stats.images_fetched, 1u);
  EXPECT_THAT(stats.image_ids, ::testing::Contains(id));
  auto on_node = Local(*nodes_[0]).ImageInspect(id);
  ASSERT_TRUE(on_node.ok()) << on_node.status().ToString();
  EXPECT_EQ(on_node->digest, id);  // the same image id as on the front
  EXPECT_EQ(FrontSandboxesOn(*nodes_[0]).size(), 2u);
  EXPECT_THAT(nodes_[0]->LogTail(1 << 20), HasSubstr("fetched image front-only:1"));

  // The next create finds it there: no fetch.
  auto again = front.Create(spec);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  auto out = front.Exec(again->id, Shell("cat /marker"));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->stdout_data, "from the front");
  EXPECT_EQ(NodeStats(*nodes_[0]).images_fetched, 1u);
  // Counted on /metrics: one fetch on the node, one hand-over by the front.
  auto [ns, ntext] = HttpGet("http://127.0.0.1:" + std::to_string(node_port) + "/metrics");
  ASSERT_EQ(ns, 200) << ntext;
  EXPECT_EQ(Sample(ntext, "paddock_image_fetches_total{source=\"front\"}"), 1);
  EXPECT_EQ(Sample(ntext, "paddock_image_fetches_total{source=\"registry\"}"), 0);
  auto [fs, ftext] = HttpGet("http://127.0.0.1:" + std::to_string(front_port) + "/metrics");
  ASSERT_EQ(fs, 200) << ftext;
  EXPECT_EQ(Sample(ftext, "paddock_image_handovers_total"), 1);
  EXPECT_EQ(Sample(ftext, "paddock_image_fetches_total{source=\"front\"}"), 0);

  // An image named as the node names it (not in the front's store) still goes by name.
  auto by_name = front.Create(Busybox());
  EXPECT_TRUE(by_name.ok()) << by_name.status().ToString();
}

TEST_F(FleetTest, TheNodeThatFetchedAnImageIsPreferredForIt) {
  StartNodes(2);
  StartFront(NodeList());
  auto front = Local(*front_);
  auto imported = front.ImageImportDir(FrontOnlyRootfs(rootfs_, dir_, "local"), "front-only:1");
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  const std::string id = imported->images.at(0);
  ASSERT_EQ(WaitForNodes("ready", 2, std::chrono::seconds(15))["nodes"].size(), 2u);
  SandboxSpec spec = Busybox();
  spec.image = "front-only:1";
  auto first = front.Create(spec);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const size_t holder = FrontSandboxesOn(*nodes_[0]).empty() ? 1 : 0;
  // The node reports the image by its id in its heartbeat.
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (Clock::now() < deadline && NodeStats(*nodes_[holder]).image_ids.size() < 2)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_THAT(NodeStats(*nodes_[holder]).image_ids, ::testing::Contains(id));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // a heartbeat or two
  for (int i = 0; i < 3; ++i) {
    auto next = front.Create(spec);
    ASSERT_TRUE(next.ok()) << next.status().ToString();
  }
  EXPECT_EQ(FrontSandboxesOn(*nodes_[holder]).size(), 4u);
  EXPECT_EQ(FrontSandboxesOn(*nodes_[1 - holder]).size(), 0u);
  EXPECT_EQ(NodeStats(*nodes_[holder]).images_fetched, 1u);
  EXPECT_EQ(NodeStats(*nodes_[1 - holder]).images_fetched, 0u);
}

// A snapshot of a sandbox on a node is copied into the front's store under its
// name (Images.Send), so it outlives that node: with the node killed, a create
// from the snapshot goes to the other node, which is handed it by the front.
TEST_F(FleetTest, ASnapshotTakenOnANodeIsTheFrontsAndOutlivesTheNode) {
  StartNodes(2);
  StartFront(NodeList());
  auto front = Local(*front_);
  ASSERT_EQ(WaitForNodes("ready", 2, std::chrono::seconds(15))["nodes"].size(), 2u);
  auto made = front.Create(Busybox());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  ASSERT_TRUE(front.Exec(made->id, Shell("echo kept > /note")).ok());
  const size_t holder = FrontSandboxesOn(*nodes_[0]).empty() ? 1 : 0;
  auto snap = front.SnapshotImage(made->id, "snap:1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  // In the front's store, by name and by the very id the node gave it.
  auto kept = front.ImageInspect("snap:1");
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_EQ(kept->digest, snap->image);
  EXPECT_THAT(front_->LogTail(1 << 20), HasSubstr("copied image snap:1"));

  ASSERT_EQ(nodes_[holder]->Stop(SIGKILL), 128 + SIGKILL);
  WaitForNodes("lost", 1, std::chrono::seconds(15));
  SandboxSpec spec = Busybox();
  spec.image = "snap:1";
  auto fork = front.Create(spec);
  ASSERT_TRUE(fork.ok()) << fork.status().ToString();
  auto out = front.Exec(fork->id, Shell("cat /note"));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->stdout_data, "kept\n");
  EXPECT_EQ(FrontSandboxesOn(*nodes_[1 - holder]).size(), 1u);
  EXPECT_EQ(NodeStats(*nodes_[1 - holder]).images_fetched, 1u);  // handed over by the front
}

// Pause, resume and fork go through the front to the node that holds the
// sandbox (tests/microvm_daemon_test.cc runs them on a microVM through a
// front): a container cannot be paused with its memory, and the node says
// so, named, through the front; the sandbox runs on.
TEST_F(FleetTest, PauseResumeAndForkThroughTheFrontAreTheNodesAnswers) {
  StartNodes(1);
  StartFront(NodeList());
  auto front = Local(*front_);
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);
  auto made = front.Create(Busybox());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  auto paused = front.Pause(made->id);
  ASSERT_FALSE(paused.ok());
  EXPECT_EQ(paused.status().code(), Code::kUnimplemented) << paused.status().ToString();
  EXPECT_THAT(paused.status().message(), HasSubstr("only microVM sandboxes"));
  EXPECT_THAT(paused.status().message(), HasSubstr(addresses_[0]));
  Status resumed = front.Resume(made->id);
  EXPECT_EQ(resumed.code(), Code::kUnimplemented) << resumed.ToString();
  auto forked = front.Fork(made->id, 2);
  ASSERT_FALSE(forked.ok());
  EXPECT_THAT(forked.status().message(), HasSubstr("only microVM sandboxes"));
  EXPECT_EQ(front.Fork(made->id, 0).status().code(), Code::kInvalidArgument);  // checked by the front
  EXPECT_EQ(FrontSandboxesOn(*nodes_[0]).size(), 1u);  // a failed fork leaves nothing there
  auto out = front.Exec(made->id, Shell("echo still"));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->stdout_data, "still\n");
}

// Images.Send serves fronts only, and only the blobs of the image asked for.
TEST_F(FleetTest, ANodeSendsOnlyTheImageAskedForAndOnlyToAFront) {
  StartNodes(1);
  auto node = Local(*nodes_[0]);
  auto busybox = node.ImageInspect("busybox:1");
  ASSERT_TRUE(busybox.ok()) << busybox.status().ToString();
  auto ask = [&](const std::vector<std::pair<std::string, std::string>>& metadata,
                 const std::string& blob) -> grpc::Status {
    client::ClientOptions o;
    o.tcp_target = addresses_[0];
    o.token = kToken;
    o.metadata = metadata;
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok());
    if (!metadata.empty()) EXPECT_TRUE(c->Stats().ok());  // the heartbeat that makes the lease
    v1::Images::Stub stub(c->channel());
    auto ctx = client::internal::CallContext(c->options(), std::chrono::seconds(10));
    auto stream = stub.Send(ctx.get());
    v1::ReceiveAsk m;
    m.mutable_want()->set_image(busybox->digest);
    stream->Write(m);
    m.mutable_blob()->set_digest(blob);
    m.mutable_blob()->set_max_bytes(1 << 20);
    stream->Write(m);
    v1::ReceiveMessage chunk;
    size_t bytes = 0;
    while (stream->Read(&chunk) && chunk.chunk().error().empty()) {
      bytes += chunk.chunk().data().size();
      if (chunk.chunk().last()) break;
    }
    stream->WritesDone();  // asks for nothing more: the node ends the call
    grpc::Status st = stream->Finish();
    if (st.ok()) EXPECT_GT(bytes, 0u);
    return st;
  };
  // A plain client with the token but no front lease.
  grpc::Status plain = ask({}, busybox->digest);
  EXPECT_EQ(plain.error_code(), grpc::StatusCode::PERMISSION_DENIED) << plain.error_message();
  // A front asking for a blob of the store that is not the image's.
  const std::vector<std::pair<std::string, std::string>> as_front = {{"paddock-front", "f9"}, {"paddock-epoch", "1"}};
  grpc::Status other = ask(as_front, "sha256:" + std::string(64, 'a'));
  EXPECT_EQ(other.error_code(), grpc::StatusCode::PERMISSION_DENIED) << other.error_message();
  EXPECT_THAT(other.error_message(), HasSubstr("not one of image"));
  // The image's own manifest is served.
  EXPECT_TRUE(ask(as_front, busybox->digest).ok());
}

TEST_F(FleetTest, ABlobThatDoesNotMatchItsDigestIsRefusedAndNothingIsStored) {
  StartNodes(1);
  StartFront(NodeList());
  auto front = Local(*front_);
  auto imported = front.ImageImportDir(FrontOnlyRootfs(rootfs_, dir_, "intact"), "front-only:1");
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  const std::string id = imported->images.at(0);
  auto detail = front.ImageInspect(id);
  ASSERT_TRUE(detail.ok()) << detail.status().ToString();
  ASSERT_EQ(detail->layers.size(), 1u);
  const client::ImageLayer layer = detail->layers[0];
  ASSERT_EQ(WaitForNodes("ready", 1, std::chrono::seconds(15))["nodes"].size(), 1u);

  // The fault: the front's layer blob on disk loses a byte's worth of truth,
  // so the front sends bytes that do not hash to the digest they go by.
  const std::string blob_path = front_->state_dir() + "/images/blobs/sha256/" + layer.blob.substr(7);
  std::string original;
  {
    std::ifstream in(blob_path, std::ios::binary);
    ASSERT_TRUE(in.good()) << blob_path;
    original.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  ASSERT_GT(original.size(), 100u);
  std::string corrupt = original;
  corrupt[corrupt.size() / 2] ^= 0x5a;
  auto write_blob = [&](const std::string& bytes) {
    ::chmod(blob_path.c_str(), 0644);
    std::ofstream(blob_path, std::ios::binary | std::ios::trunc) << bytes;
  };
  write_blob(corrupt);

  SandboxSpec spec = Busybox();
  spec.image = "front-only:1";
  auto bad = front.Create(spec);
  ASSERT_FALSE(bad.ok());
  const std::string why = bad.status().message();
  EXPECT_THAT(why, HasSubstr("front-only:1"));
  EXPECT_THAT(why, HasSubstr(id));
  EXPECT_THAT(why, HasSubstr(layer.blob));
  EXPECT_TRUE(bad.status().code() == Code::kDataLoss || bad.status().code() == Code::kInvalidArgument)
      << bad.status().ToString();
  // Nothing of it on the node: no image, no blob, no layer record, nothing staged.
  const std::string node_store = nodes_[0]->state_dir() + "/images";
  EXPECT_FALSE(Local(*nodes_[0]).ImageInspect(id).ok());
  EXPECT_FALSE(std::filesystem::exists(node_store + "/blobs/sha256/" + layer.blob.substr(7)));
  EXPECT_FALSE(std::filesystem::exists(node_store + "/layers/sha256/" + layer.diff_id.substr(7)));
  EXPECT_FALSE(std::filesystem::exists(node_store + "/images/" + id.substr(7)));
  size_t staged = 0;
  if (std::filesystem::exists(node_store + "/staging"))
    for (const auto& e : std::filesystem::recursive_directory_iterator(node_store + "/staging"))
      staged += e.is_regular_file();
  EXPECT_EQ(staged, 0u);
  EXPECT_EQ(NodeStats(*nodes_[0]).images_fetched, 0u);
  EXPECT_TRUE(FrontSandboxesOn(*nodes_[0]).empty());

  // The fault removed, the next create fetches the image and runs.
  write_blob(original);
  auto good = front.Create(spec);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  auto out = front.Exec(good->id, Shell("cat /marker"));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->stdout_data, "intact");
  EXPECT_EQ(NodeStats(*nodes_[0]).images_fetched, 1u);
}

}  // namespace
}  // namespace paddock
