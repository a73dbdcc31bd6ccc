// Rollouts end to end, as a user runs them: the real paddockd (started,
// SIGKILLed, SIGTERMed and restarted on its state dir by DaemonProcess), the
// real `paddock` CLI (run, resume, export, rollout ls), real containers over
// the busybox test rootfs and the real trajectory log. The policy is the
// scripted one (--policy scripted), so the test needs no model.
//
// Side effects are counted in the sandbox: every bash call appends S<turn> to
// /tmp/ran and the task's verifier gives reward 1 only when the file holds
// each line exactly once, in order.
#include <gtest/gtest.h>
#include <gmock/gmock.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "replay/trajectory_log.h"
#include "tests/rollout_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;
using testing::DaemonProcess;

void WriteFile(const std::string& path, const std::string& data) { std::ofstream(path, std::ios::binary) << data; }

std::vector<json> ReadJsonl(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// Validates every line of `jsonl_path` against docs/export.schema.json with
// python3-jsonschema (Draft 2020-12).
std::string ValidateExport(const std::string& jsonl_path) {
  const std::string py =
      "import json,sys,jsonschema\n"
      "schema=json.load(open(sys.argv[1]))\n"
      "v=jsonschema.Draft202012Validator(schema)\n"
      "n=0\n"
      "for i,l in enumerate(open(sys.argv[2])):\n"
      "  errs=list(v.iter_errors(json.loads(l)))\n"
      "  if errs: print('line',i+1,errs[0].message); sys.exit(1)\n"
      "  n+=1\n"
      "print('valid',n)\n";
  auto r = testing::RunProgram({"/usr/bin/python3", "-c", py, std::string(PADDOCK_SOURCE_DIR) + "/docs/export.schema.json",
                                jsonl_path});
  return r.code == 0 ? r.out : "INVALID: " + r.out + r.err;
}

class RolloutE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists("/usr/local/share/paddock/deepseek-v3-tokenizer.json") && !getenv("PADDOCK_TOKENIZER"))
      GTEST_SKIP() << "no V4 tokenizer installed (scripts/install-deps.sh)";
    rootfs_ = testing::EnsureBusyboxRootfs();
    ASSERT_EQ(daemon_.Start(), "");
    work_ = daemon_.dir() + "/work";
    fs::create_directories(work_);
    // Task files never name host directories: the rootfs goes in as an image.
    auto imported = daemon_.Cli({"image", "import-dir", rootfs_, "--name", image_});
    ASSERT_EQ(imported.code, 0) << imported.out << imported.err;
  }

  std::string Tasks(const std::string& name, int tasks, int turns) {
    std::string path = work_ + "/" + name + ".jsonl";
    WriteFile(path, testing::CountingTasks(image_, tasks, turns));
    return path;
  }
  std::string Script(const std::string& name, int turns, const std::string& sleep_s) {
    std::string path = work_ + "/" + name + ".script.json";
    WriteFile(path, testing::CountingScript(turns, sleep_s));
    return path;
  }
  json RolloutState(const std::string& id) {
    auto r = daemon_.Cli({"--json", "rollout", "ls"});
    if (r.code != 0) return json();
    for (auto& ro : json::parse(r.out))
      if (ro["rollout_id"] == id) return ro;
    return json();
  }
  // Waits until `done` episodes of the rollout finished.
  bool WaitDone(const std::string& id, int done, std::chrono::seconds limit) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      json s = RolloutState(id);
      if (!s.is_null() && s["done"].get<int>() + s["failed"].get<int>() >= done) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // Starts rollout `id`: `tasks` function-sandbox tasks that run a command,
  // then submit, against a URL where nothing listens, with the tool
  // constraint and fixed sampling; the episodes wait for the server until the
  // rollout is cancelled here. Defined below.
  void StartWaitingThenCancel(const std::string& id, int tasks);

  DaemonProcess daemon_;
  std::string rootfs_, work_;
  const std::string image_ = "busybox:e2e";
};

// The verifier runs sealed from the agent: an agent that plants a process
// racing the verifier's output and replaces /bin/sh, test, [ and cat earns
// nothing; an honest agent on the same verifier earns its reward.
TEST_F(RolloutE2eTest, VerifierIsSealedFromTheAgentsTricks) {
  const std::string verifier = "sh /tmp/solve.sh > /tmp/result; sleep 0.3; test \"$(cat /tmp/result)\" = 42";
  std::string tasks;
  for (const char* mode : {"cheat", "honest"})
    tasks += json({{"id", mode},
                   {"image", image_},
                   {"substrate", "container"},
                   {"instruction", "Write /tmp/solve.sh printing the answer, then submit."},
                   {"tools", {"bash", "submit"}},
                   {"max_turns", 4},
                   {"env", {{"MODE", mode}}},
                   {"verifier", verifier}})
                 .dump() + "\n";
  WriteFile(work_ + "/sealed.jsonl", tasks);
  const std::string act =
      "if [ \"$MODE\" = cheat ]; then "
      "echo 'echo 41' > /tmp/solve.sh; "
      "(while :; do echo 42 > /tmp/result; sleep 0.05; done) > /dev/null 2>&1 & "
      "printf '#!/bin/busybox sh\\nexit 0\\n' > /tmp/fake; chmod 755 /tmp/fake; "
      "for t in test [ cat sh; do rm -f /bin/$t; cp /tmp/fake /bin/$t; done; "
      "else echo 'echo 42' > /tmp/solve.sh; fi; echo planted";
  json script = json::array({testing::DsmlCall("bash", {{"command", act}}), testing::DsmlCall("submit", {{"answer", "done"}})});
  WriteFile(work_ + "/sealed.script.json", script.dump());
  auto r = daemon_.Cli({"run", work_ + "/sealed.jsonl", "--policy", "scripted", "--policy-script",
                        work_ + "/sealed.script.json", "--id", "sealed-run", "--out", work_ + "/out"});
  ASSERT_EQ(r.code, 0) << r.out << r.err << daemon_.LogTail();
  auto lines = ReadJsonl(testing::ReadWholeFile(work_ + "/out/sealed-run/episodes.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  for (const auto& l : lines) {
    if (l["task_id"] == "cheat")
      EXPECT_EQ(l["reward"], 0.0) << "the agent's tricks fooled the verifier: " << l.dump();
    else
      EXPECT_EQ(l["reward"], 1.0) << "the sealed verifier failed an honest agent: " << l.dump();
  }
}

TEST_F(RolloutE2eTest, CliRun_SummaryAndExportValidateAgainstSchema) {
  auto help = daemon_.Cli({"run", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("--policy"));
  EXPECT_THAT(help.out, HasSubstr("--concurrency"));
  for (const char* cmd : {"resume", "export"}) EXPECT_EQ(daemon_.Cli({cmd, "--help"}).code, 0) << cmd;

  const int kTasks = 8, kTurns = 2;
  std::string tasks = Tasks("run", kTasks, kTurns), script = Script("run", kTurns, "0.05");
  std::string out = work_ + "/out";
  auto r = daemon_.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--samples", "2",
                        "--concurrency", "8", "--out", out, "--id", "e2e-run", "--interval-ms", "100"});
  ASSERT_EQ(r.code, 0) << r.out << r.err << daemon_.LogTail();
  // Not a TTY: plain progress lines, then the summary table.
  EXPECT_THAT(r.out, HasSubstr("e2e-run running:"));
  EXPECT_THAT(r.out, HasSubstr("reward"));
  EXPECT_THAT(r.out, HasSubstr("submit 16"));
  EXPECT_THAT(r.out, HasSubstr("time per phase"));
  std::string exported = out + "/e2e-run/episodes.jsonl";
  ASSERT_TRUE(fs::exists(exported));
  EXPECT_THAT(ValidateExport(exported), HasSubstr("valid 16"));
  auto lines = ReadJsonl(testing::ReadWholeFile(exported));
  ASSERT_EQ(lines.size(), 16u);
  for (const auto& l : lines) {
    EXPECT_EQ(l["reward"], 1.0) << l.dump().substr(0, 400);
    EXPECT_EQ(l["stop_reason"], "submit");
    EXPECT_EQ(l["policy"]["kind"], "scripted");
    int policy_tokens = 0;
    for (auto& m : l["loss_mask"]) policy_tokens += m.get<int>();
    EXPECT_EQ(policy_tokens, l["generated_tokens"].get<int>());
  }
  // `paddock export` gives the same lines.
  auto ex = daemon_.Cli({"export", "e2e-run", "--format", "jsonl"});
  ASSERT_EQ(ex.code, 0) << ex.err;
  EXPECT_EQ(ReadJsonl(ex.out).size(), 16u);
  EXPECT_EQ(daemon_.Cli({"export", "e2e-run", "--format", "parquet"}).code, 1);
  auto missing = daemon_.Cli({"export", "no-such-rollout"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("not in the trajectory log"));
}

// Two rollouts on a daemon bounded to 2 running episodes (paddockd
// --max-running-episodes): the episodes beyond queue, shown by `rollout ls`
// and `sandbox stats`, and all finish; `paddock run` takes --weight and
// --priority and refuses a weight of 0.
TEST_F(RolloutE2eTest, TwoRolloutsOnAFullDaemon_EpisodesQueueInStats_NoneFails) {
  ASSERT_EQ(daemon_.Restart({"--max-running-episodes", "2"}), "");
  auto help = daemon_.Cli({"run", "--help"});
  EXPECT_THAT(help.out, HasSubstr("--weight"));
  EXPECT_THAT(help.out, HasSubstr("--priority"));
  std::string tasks = Tasks("fair", 4, 1), script = Script("fair", 1, "0.5");
  EXPECT_NE(daemon_.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--weight", "0"}).code, 0);
  for (const auto& [id, weight] : {std::pair{"fair-a", "3"}, std::pair{"fair-b", "1"}}) {
    auto r = daemon_.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency", "4",
                          "--weight", weight, "--priority", "0", "--id", id, "--detach"});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }
  uint64_t stats_queued = 0, ls_queued = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until && (stats_queued == 0 || ls_queued == 0)) {
    auto st = daemon_.Cli({"--json", "sandbox", "stats"});
    if (st.code == 0) stats_queued = std::max<uint64_t>(stats_queued, json::parse(st.out).value("queued_episodes", 0));
    for (const char* id : {"fair-a", "fair-b"}) {
      json s = RolloutState(id);
      if (!s.is_null()) ls_queued = std::max<uint64_t>(ls_queued, s.value("queued", 0));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_GT(stats_queued, 0u) << "8 episodes, 2 slots";
  EXPECT_GT(ls_queued, 0u);
  for (const char* id : {"fair-a", "fair-b"}) {
    ASSERT_TRUE(WaitDone(id, 4, std::chrono::seconds(120))) << id << daemon_.LogTail();
    json s = RolloutState(id);
    EXPECT_EQ(s["done"], 4) << s.dump();
    EXPECT_EQ(s["failed"], 0) << s.dump();
  }
}

// 200 episodes at concurrency 200 through paddockd and `paddock run`, on
// container sandboxes so that side effects can be counted: each episode's
// bash calls append S<turn> to /tmp/ran and its verifier gives reward 1 only
// when the file holds each line exactly once, in order. Every step of every
// episode must be in the trajectory log (`paddock log export`): one step
// record per turn (turn N is step N+1), each bash turn with its tool call
// and observation.
TEST_F(RolloutE2eTest, TwoHundredConcurrentEpisodes_AllFinish_EveryStepLogged_EachToolCallRanOnce) {
  const int kTasks = 200, kTurns = 2;
  std::string tasks = Tasks("big", kTasks, kTurns), script = Script("big", kTurns, "0.2");
  auto t0 = std::chrono::steady_clock::now();
  auto r = daemon_.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency", "200",
                        "--id", "big-run", "--interval-ms", "250"});
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  RecordProperty("run_ms", static_cast<int>(took.count()));
  ASSERT_EQ(r.code, 0) << r.out.substr(r.out.size() > 4000 ? r.out.size() - 4000 : 0) << r.err << daemon_.LogTail();
  EXPECT_THAT(r.out, HasSubstr("submit 200"));
  // All 200 were in flight together at some point (the progress lines).
  int max_running = 0;
  std::istringstream progress(r.out);
  for (std::string line; std::getline(progress, line);) {
    size_t at = line.find(" running,");
    if (line.rfind("big-run ", 0) != 0 || at == std::string::npos) continue;
    size_t from = line.rfind(' ', at - 1);
    max_running = std::max(max_running, std::stoi(line.substr(from + 1, at - from - 1)));
  }
  RecordProperty("max_running", max_running);
  EXPECT_GE(max_running, 150) << r.out.substr(0, 2000);

  auto lines = ReadJsonl(daemon_.Cli({"export", "big-run"}).out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks));
  std::set<std::string> episodes;
  for (const auto& l : lines) {
    episodes.insert(l["episode_id"].get<std::string>());
    // Reward 1: /tmp/ran holds S0 and S1, each once.
    EXPECT_EQ(l["reward"], 1.0) << l["episode_id"] << " " << l["failure_reason"];
    EXPECT_EQ(l["stop_reason"], "submit");
    EXPECT_EQ(l["turns"], kTurns + 1);
  }
  ASSERT_EQ(episodes.size(), static_cast<size_t>(kTasks));

  // The log: an episode record per episode and every turn's step.
  auto log = daemon_.Cli({"log", "export"});
  ASSERT_EQ(log.code, 0) << log.err;
  std::map<std::string, std::set<uint64_t>> steps;
  std::map<std::string, int> bash_observations;
  for (const auto& rec : ReadJsonl(log.out)) {
    if (rec["type"] != "step") continue;
    const std::string ep = rec["episode_id"];
    if (!episodes.count(ep)) continue;
    uint64_t step = rec["step"];  // turn N is step N+1
    EXPECT_TRUE(steps[ep].insert(step).second) << ep << " step " << step << " logged twice";
    if (step == 0 || step > static_cast<uint64_t>(kTurns)) continue;
    ASSERT_EQ(rec["tool_calls"].size(), 1u) << rec.dump().substr(0, 400);
    EXPECT_EQ(rec["tool_calls"][0]["name"], "bash");
    ASSERT_EQ(rec["observations"].size(), 1u);
    EXPECT_THAT(rec["observations"][0]["content"].get<std::string>(), HasSubstr("ok " + std::to_string(step - 1)));
    ++bash_observations[ep];
  }
  for (const auto& ep : episodes) {
    for (uint64_t t = 1; t <= static_cast<uint64_t>(kTurns) + 1; ++t)
      EXPECT_TRUE(steps[ep].count(t)) << ep << " has no logged step " << t;
    EXPECT_EQ(bash_observations[ep], kTurns) << ep;
  }
}

TEST_F(RolloutE2eTest, CliRun_BadTasksRefusedNamingLineAndField) {
  std::string path = work_ + "/bad.jsonl";
  WriteFile(path, testing::CountingTasks(image_, 1, 1) +
                      R"({"id":"x","image":"/i","instruction":"y","substrate":"kvm"})" + "\n");
  std::string script = Script("bad", 1, "0");
  auto r = daemon_.Cli({"run", path, "--policy", "scripted", "--policy-script", script});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("line 2: field 'substrate': 'kvm'"));
  auto no_script = daemon_.Cli({"run", path, "--policy", "scripted"});
  EXPECT_EQ(no_script.code, 1);
  EXPECT_THAT(no_script.err, HasSubstr("--policy-script"));
  auto no_file = daemon_.Cli({"run", work_ + "/nope.jsonl", "--policy", "scripted", "--policy-script", script});
  EXPECT_EQ(no_file.code, 1);
  EXPECT_THAT(no_file.err, HasSubstr("nope.jsonl"));
  auto unknown = daemon_.Cli({"resume", "never-started"});
  EXPECT_EQ(unknown.code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("not in the trajectory log"));
}

// Reads every logged step of the rollout's episodes: token ids per episode
// (prompt deltas and outputs in order), straight from the log on disk.
std::map<std::string, std::vector<uint32_t>> LoggedTokens(const std::string& log_dir, const std::string& rollout) {
  std::map<std::string, std::vector<uint32_t>> out;
  replay::LogOptions o;
  o.dir = log_dir;
  o.create_if_missing = false;
  o.reserve_bytes = 0;
  auto log = replay::TrajectoryLog::Open(o);
  EXPECT_TRUE(log.ok()) << log.status().message();
  if (!log.ok()) return out;
  auto eps = (*log)->ListEpisodes({.prefix = rollout + "/"});
  EXPECT_TRUE(eps.ok());
  for (auto& e : *eps) {
    auto steps = (*log)->ReadSteps(e.episode_id());
    auto& v = out[e.episode_id()];
    for (auto& s : *steps) {
      v.insert(v.end(), s.policy_request().prompt_token_ids().begin(), s.policy_request().prompt_token_ids().end());
      v.insert(v.end(), s.policy_response().token_ids().begin(), s.policy_response().token_ids().end());
    }
  }
  return out;
}

TEST_F(RolloutE2eTest, DaemonSigkilledMidRun_ResumeCompletes_PrefixEqualsLog_NoToolCallRanTwice) {
  const int kTasks = 32, kTurns = 5;
  std::string tasks = Tasks("kill", kTasks, kTurns), script = Script("kill", kTurns, "0.4");
  auto r = daemon_.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency", "16",
                        "--id", "kill-run", "--detach"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(WaitDone("kill-run", 4, std::chrono::seconds(90))) << daemon_.LogTail();
  // The second wave starts together as the first one ends; let it log a few
  // tool calls (0.4 s each) so the kill lands mid-episode, not at turn 0.
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  json at_kill = RolloutState("kill-run");
  ASSERT_LT(at_kill["done"].get<int>() + at_kill["failed"].get<int>(), kTasks) << "finished before the kill";
  EXPECT_EQ(daemon_.Stop(SIGKILL), 128 + SIGKILL);

  // What the log held at the kill.
  auto before = LoggedTokens(daemon_.state_dir() + "/log", "kill-run");
  ASSERT_FALSE(before.empty());

  ASSERT_EQ(daemon_.Start(), "");
  json st = RolloutState("kill-run");
  EXPECT_EQ(st["state"], "interrupted");
  auto res = daemon_.Cli({"resume", "kill-run", "--out", work_ + "/out"});
  ASSERT_EQ(res.code, 0) << res.out << res.err << daemon_.LogTail();
  EXPECT_THAT(res.out, HasSubstr("resumed"));
  EXPECT_THAT(res.out, HasSubstr("replayed from the log"));

  std::string exported = work_ + "/out/kill-run/episodes.jsonl";
  EXPECT_THAT(ValidateExport(exported), HasSubstr("valid 32"));
  auto lines = ReadJsonl(testing::ReadWholeFile(exported));
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks));
  int replayed_tools = 0, rebuilt = 0;
  for (const auto& l : lines) {
    const std::string ep = l["episode_id"];
    // Reward 1: /tmp/ran in the final sandbox holds S0..S4 exactly once each.
    EXPECT_EQ(l["reward"], 1.0) << ep << " " << l["rebuild_note"] << " " << l["failure_reason"];
    EXPECT_EQ(l["turns"], kTurns + 1) << ep;
    replayed_tools += l["replayed"]["tool_calls"].get<int>();
    rebuilt += l["rebuilt"].get<bool>();
    // The context logged before the kill is a prefix of the final one.
    auto it = before.find(ep);
    if (it == before.end()) continue;
    std::vector<uint32_t> now = l["token_ids"].get<std::vector<uint32_t>>();
    ASSERT_LE(it->second.size(), now.size()) << ep;
    EXPECT_TRUE(std::equal(it->second.begin(), it->second.end(), now.begin())) << ep;
  }
  EXPECT_GT(replayed_tools, 0);
  EXPECT_GT(rebuilt, 0);
  EXPECT_EQ(RolloutState("kill-run")["state"], "finished");
}

TEST_F(RolloutE2eTest, SigtermDrainsThenResumeFinishes) {
  const int kTasks = 8, kTurns = 4;
  std::string tasks = Tasks("drain", kTasks, kTurns), script = Script("drain", kTurns, "0.2");
  auto r = daemon_.Cli({"run", tasks, "--policy", "scripted", "--policy-script", script, "--concurrency", "8",
                        "--id", "drain-run", "--detach"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(daemon_.Stop(SIGTERM), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_THAT(testing::ReadWholeFile(daemon_.log_path()), HasSubstr("rollout drain-run interrupted"));
  ASSERT_EQ(daemon_.Start(), "");
  auto res = daemon_.Cli({"resume", "drain-run"});
  ASSERT_EQ(res.code, 0) << res.out << res.err;
  auto ex = daemon_.Cli({"export", "drain-run"});
  auto lines = ReadJsonl(ex.out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks));
  for (const auto& l : lines) EXPECT_EQ(l["reward"], 1.0) << l["episode_id"] << " " << l["failure_reason"];
}


bool Accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// The real paddock-policy (the embedded V4 engine over HTTP, SGLang
// /generate) is SIGKILLed mid-run and started again on the same port a few
// seconds later: episodes see UNAVAILABLE, wait and retry with backoff, then
// continue; none ends with policy_error. (Unconstrained /generate output of
// the untrained engine is rarely a valid tool call, so most episodes end
// with format_error after three malformed turns: the path under test is the
// policy server's loss, not the model.)
TEST_F(RolloutE2eTest, PolicyServerKilledMidRun_EpisodesWaitRetryAndContinue) {
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy";
  if (!fs::exists(bin)) GTEST_SKIP() << "paddock-policy is not built at " << bin;
  int port = testing::FreeLoopbackPort();
  std::string listen = "127.0.0.1:" + std::to_string(port);
  auto start_policy = [&] {
    pid_t pid = testing::SpawnProgram({bin.string(), "--listen", listen, "--threads", "1"}, work_ + "/policy.log");
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < until && !Accepts(port))
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return pid;
  };
  pid_t policy = start_policy();
  ASSERT_TRUE(Accepts(port)) << testing::ReadWholeFile(work_ + "/policy.log");

  std::string tasks = work_ + "/pk.jsonl", all;
  for (int i = 0; i < 12; ++i)
    all += json({{"id", "pk-" + std::to_string(i)}, {"image", image_}, {"substrate", "function"},
                 {"instruction", "say hi"}, {"tools", {"bash", "submit"}}, {"max_turns", 4},
                 {"max_new_tokens", 8}, {"verifier", "true"}})
               .dump() + "\n";
  WriteFile(tasks, all);
  auto r = daemon_.Cli({"run", tasks, "--policy", "http://" + listen, "--policy-kind", "sglang", "--concurrency", "4",
                        "--id", "pk-run", "--unavailable-wait", "120", "--detach"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(WaitDone("pk-run", 1, std::chrono::seconds(120))) << daemon_.LogTail();
  kill(policy, SIGKILL);
  int st = 0;
  waitpid(policy, &st, 0);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // down: episodes get UNAVAILABLE and back off
  policy = start_policy();
  ASSERT_TRUE(Accepts(port));
  ASSERT_TRUE(WaitDone("pk-run", 12, std::chrono::seconds(240))) << daemon_.LogTail();
  kill(policy, SIGTERM);
  waitpid(policy, &st, 0);

  auto ex = daemon_.Cli({"export", "pk-run"});
  ASSERT_EQ(ex.code, 0) << ex.err;
  auto lines = ReadJsonl(ex.out);
  ASSERT_EQ(lines.size(), 12u);
  int retries = 0;
  for (const auto& l : lines) {
    EXPECT_NE(l["stop_reason"], "policy_error") << l["episode_id"] << " " << l["failure_reason"];
    EXPECT_EQ(l["policy"]["kind"], "sglang");
    retries += l["policy_retries"].get<int>();
  }
  EXPECT_GT(retries, 0) << "no episode saw the policy server down";
  EXPECT_THAT(testing::ReadWholeFile(daemon_.log_path()), HasSubstr("policy unavailable"));
}

// `paddock run --policy embedded` starts the built paddock-policy as its own
// child on a free loopback port, runs the rollout against it and stops it.
TEST_F(RolloutE2eTest, CliRun_EmbeddedPolicyStartedAndStopped) {
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy";
  if (!fs::exists(bin)) GTEST_SKIP() << "paddock-policy is not built at " << bin;
  std::string tasks = work_ + "/emb.jsonl", all;
  for (int i = 0; i < 4; ++i)
    all += json({{"id", "emb-" + std::to_string(i)}, {"image", image_}, {"substrate", "function"},
                 {"instruction", "say hi"}, {"tools", {"bash", "submit"}}, {"max_turns", 2},
                 {"max_new_tokens", 8}})
               .dump() + "\n";
  WriteFile(tasks, all);
  std::string out = work_ + "/emb-out";
  auto r = daemon_.Cli({"run", tasks, "--policy", "embedded", "--id", "emb-run", "--out", out, "-c", "4"});
  EXPECT_THAT(r.out, HasSubstr("embedded policy: paddock-policy at http://127.0.0.1:"));
  EXPECT_THAT(r.out, HasSubstr("rollout emb-run: finished, 4 of 4 episodes reported"));
  EXPECT_TRUE(fs::exists(out + "/paddock-policy.log"));
  EXPECT_EQ(ReadJsonl(testing::ReadWholeFile(out + "/emb-run/episodes.jsonl")).size(), 4u);
  // The child is gone with the run.
  auto ps = testing::RunProgram({"/usr/bin/pgrep", "-f", bin.string() + " --listen"});
  EXPECT_NE(ps.code, 0) << ps.out;
}

// `paddock run --seed S`: episode i samples with S + i, so the samples of one
// task differ (a group to learn from) and the same command repeats them token
// for token. Without --seed, paddock-policy draws a fresh seed per request (as
// SGLang does): the samples still differ.
TEST_F(RolloutE2eTest, CliRun_SeedGivesDistinctSamplesThatRepeat) {
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy";
  if (!fs::exists(bin)) GTEST_SKIP() << "paddock-policy is not built at " << bin;
  std::string tasks = work_ + "/seeded.jsonl";
  WriteFile(tasks, json({{"id", "seeded"}, {"image", image_}, {"substrate", "function"}, {"instruction", "say hi"},
                         {"tools", {"bash", "submit"}}, {"max_turns", 1}, {"max_new_tokens", 256}})
                           .dump() +
                       "\n");
  // The policy's tokens of each sample, by sample index.
  auto run = [&](const std::string& id, std::vector<std::string> extra) {
    std::vector<std::string> args = {"run", tasks, "--policy", "embedded", "--id", id, "--out", work_ + "/seed-out",
                                     "--samples", "4"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = daemon_.Cli(args);
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    std::map<int, std::vector<int>> by_sample;
    for (const json& l : ReadJsonl(testing::ReadWholeFile(work_ + "/seed-out/" + id + "/episodes.jsonl"))) {
      std::vector<int>& mine = by_sample[l["sample"].get<int>()];
      for (size_t i = 0; i < l["loss_mask"].size(); ++i)
        if (l["loss_mask"][i] == 1) mine.push_back(l["token_ids"][i].get<int>());
    }
    EXPECT_EQ(by_sample.size(), 4u);
    return by_sample;
  };
  auto distinct = [](const std::map<int, std::vector<int>>& m) {
    std::set<std::vector<int>> s;
    for (const auto& [k, v] : m) s.insert(v);
    return s.size();
  };
  auto a = run("seed-a", {"--seed", "7"});
  auto b = run("seed-b", {"--seed", "7"});
  auto c = run("seed-c", {});
  EXPECT_EQ(a, b) << "the same --seed gave other tokens";
  EXPECT_GE(distinct(a), 3u) << "the samples of one task were (nearly) all the same";
  EXPECT_GE(distinct(c), 3u) << "without --seed the samples of one task were (nearly) all the same";
}

void RolloutE2eTest::StartWaitingThenCancel(const std::string& id, int tasks) {
  std::string path = work_ + "/" + id + ".jsonl", all;
  for (int i = 0; i < tasks; ++i)
    all += json({{"id", "t-" + std::to_string(i)}, {"image", image_}, {"substrate", "function"},
                 {"instruction", "Run a command, then submit."}, {"tools", {"bash", "submit"}}, {"max_turns", 2},
                 {"verifier", "true"}})
               .dump() + "\n";
  WriteFile(path, all);
  std::string dead = "http://127.0.0.1:" + std::to_string(testing::FreeLoopbackPort());
  auto r = daemon_.Cli({"run", path, "--policy", dead, "--constrain-tools", "--tool-choice", "required",
                        "--max-new-tokens", "192", "--temperature", "0", "--id", id, "--detach"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the episodes retry the unreachable server
  auto cancel = daemon_.Cli({"rollout", "cancel", id});
  ASSERT_EQ(cancel.code, 0) << cancel.err;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (RolloutState(id)["state"] == "running" && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NE(RolloutState(id)["state"], "running") << daemon_.LogTail();
}

// `paddock resume ROLLOUT --policy URL` moves the rollout to another server
// and keeps the rest of its stored PolicySpec and sampling: the tool
// constraint with tool_choice "required" (every turn a valid tool call, so no
// malformed turn) and --max-new-tokens/--temperature (in every logged
// policy request). The first server is never up: the episodes wait for it
// until the rollout is cancelled, then resume against the real
// paddock-policy.
TEST_F(RolloutE2eTest, ResumeWithNewPolicyUrl_KeepsToolConstraintAndSampling) {
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy";
  if (!fs::exists(bin)) GTEST_SKIP() << "paddock-policy is not built at " << bin;
  const int kTasks = 3;
  StartWaitingThenCancel("rs-run", kTasks);
  if (HasFatalFailure()) return;

  // Bad overrides are refused before anything runs.
  auto contra = daemon_.Cli({"resume", "rs-run", "--constrain-tools", "--no-constrain-tools"});
  EXPECT_EQ(contra.code, 1);
  EXPECT_THAT(contra.err, HasSubstr("contradict"));
  auto kind_alone = daemon_.Cli({"resume", "rs-run", "--policy-kind", "openai"});
  EXPECT_EQ(kind_alone.code, 1);
  EXPECT_THAT(kind_alone.err, HasSubstr("--policy-kind needs --policy"));
  auto bad_choice = daemon_.Cli({"resume", "rs-run", "--policy", "http://127.0.0.1:1", "--tool-choice", "always"});
  EXPECT_EQ(bad_choice.code, 1);
  EXPECT_THAT(bad_choice.err, HasSubstr("--tool-choice 'always'"));
  auto unconstrainable = daemon_.Cli({"resume", "rs-run", "--policy", "http://127.0.0.1:1", "--policy-kind", "openai",
                                      "--tool-choice", "required"});
  EXPECT_EQ(unconstrainable.code, 1);
  EXPECT_THAT(unconstrainable.err, HasSubstr("need --policy-kind sglang"));

  int port = testing::FreeLoopbackPort();
  std::string listen = "127.0.0.1:" + std::to_string(port);
  pid_t policy = testing::SpawnProgram({bin.string(), "--listen", listen, "--threads", "1"}, work_ + "/policy.log");
  auto up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < up && !Accepts(port))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(Accepts(port)) << testing::ReadWholeFile(work_ + "/policy.log");
  auto res = daemon_.Cli({"resume", "rs-run", "--policy", "http://" + listen});
  kill(policy, SIGTERM);
  int st = 0;
  waitpid(policy, &st, 0);
  ASSERT_EQ(res.code, 0) << res.out << res.err << daemon_.LogTail();
  EXPECT_THAT(RolloutState("rs-run")["policy"].get<std::string>(), HasSubstr(listen));

  auto lines = ReadJsonl(daemon_.Cli({"export", "rs-run"}).out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks));
  for (const auto& l : lines) {
    EXPECT_EQ(l["malformed_turns"], 0) << l["episode_id"] << ": the tool constraint was dropped on resume: "
                                       << l["messages"].dump().substr(0, 3000);
    EXPECT_GE(l["tool_calls"].get<int>(), 1) << l["episode_id"];
    EXPECT_NE(l["stop_reason"], "format_error") << l["episode_id"];
    EXPECT_EQ(l["policy"]["url"], "http://" + listen);
  }
  // Every policy request the resumed episodes logged kept the run's sampling.
  int requests = 0;
  for (const auto& rec : ReadJsonl(daemon_.Cli({"log", "export"}).out)) {
    if (rec["type"] != "step" || rec["episode_id"].get<std::string>().rfind("rs-run/", 0) != 0) continue;
    const auto& rq = rec["policy_request"];
    if (rq["max_tokens"] == 0) continue;  // the verifier's step
    ++requests;
    EXPECT_EQ(rq["max_tokens"], 192) << rec.dump().substr(0, 300);
    EXPECT_EQ(rq["temperature"], 0.0);
  }
  EXPECT_GE(requests, kTasks);
}

// An embedded-policy run whose paddock-policy is gone (its port died with the
// CLI) resumes with `--policy embedded`: a new paddock-policy child on a free
// port, the stored constraint and sampling, stopped with the resume.
TEST_F(RolloutE2eTest, ResumeWithEmbeddedPolicy_StartsAndStopsPaddockPolicy) {
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy";
  if (!fs::exists(bin)) GTEST_SKIP() << "paddock-policy is not built at " << bin;
  StartWaitingThenCancel("re-run", 2);
  if (HasFatalFailure()) return;
  std::string out = work_ + "/re-out";
  auto res = daemon_.Cli({"resume", "re-run", "--policy", "embedded", "--out", out});
  ASSERT_EQ(res.code, 0) << res.out << res.err << daemon_.LogTail();
  EXPECT_THAT(res.out, HasSubstr("embedded policy: paddock-policy at http://127.0.0.1:"));
  EXPECT_THAT(res.out, HasSubstr("rollout re-run: finished, 2 of 2 episodes reported"));
  EXPECT_TRUE(fs::exists(out + "/paddock-policy.log"));
  auto lines = ReadJsonl(testing::ReadWholeFile(out + "/re-run/episodes.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  for (const auto& l : lines) {
    EXPECT_EQ(l["malformed_turns"], 0) << l["episode_id"];
    EXPECT_THAT(l["policy"]["url"].get<std::string>(), HasSubstr("http://127.0.0.1:"));
  }
  auto ps = testing::RunProgram({"/usr/bin/pgrep", "-f", bin.string() + " --listen"});
  EXPECT_NE(ps.code, 0) << ps.out;
}

// A weight update mid-rollout against the real paddock-policy, through the
// CLI: `paddock rollout update-policy` twice (new weights, then a relabel);
// every turn carries the version that generated it, policy_lag and stale say
// what they should, and `paddock rollout groups` hands each group to a
// consumer once.
TEST_F(RolloutE2eTest, PolicyUpdatedMidRollout_EveryTurnCarriesItsVersion_GroupsConsumedOnce) {
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "policy" / "paddock-policy";
  if (!fs::exists(bin)) GTEST_SKIP() << "paddock-policy is not built at " << bin;
  const std::string w1 = work_ + "/w1.safetensors", w2 = work_ + "/w2.safetensors";
  ASSERT_EQ(testing::RunProgram({bin.string(), "--save-weights", w1, "--seed", "1"}).code, 0);
  ASSERT_EQ(testing::RunProgram({bin.string(), "--save-weights", w2, "--seed", "2"}).code, 0);
  int port = testing::FreeLoopbackPort();
  std::string listen = "127.0.0.1:" + std::to_string(port);
  pid_t policy = testing::SpawnProgram(
      {bin.string(), "--listen", listen, "--threads", "1", "--weights", w1, "--weight-version", "v1"},
      work_ + "/policy.log");
  // Stopped however the test ends (a stray server would be found by other cases' pgrep).
  struct StopOnExit {
    pid_t& pid;
    ~StopOnExit() {
      if (pid > 0) {
        kill(pid, SIGTERM);
        int st = 0;
        waitpid(pid, &st, 0);
      }
    }
  } stop_policy{policy};
  for (int i = 0; i < 2400 && !Accepts(port); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(Accepts(port)) << testing::ReadWholeFile(work_ + "/policy.log");

  std::string tasks = work_ + "/up.jsonl", all;
  for (int i = 0; i < 3; ++i)
    all += json({{"id", "up-" + std::to_string(i)}, {"image", image_}, {"substrate", "function"},
                 // bash only, so that every episode runs all its turns
                 {"instruction", "run a command"}, {"tools", {"bash"}}, {"max_turns", 4},
                 {"max_new_tokens", 160}, {"verifier", "true"}})
               .dump() + "\n";
  WriteFile(tasks, all);
  auto r = daemon_.Cli({"run", tasks, "--policy", "http://" + listen, "--constrain-tools", "--tool-choice", "required",
                        "--samples", "2", "--concurrency", "3", "--temperature", "1", "--id", "up-run",
                        "--max-policy-lag", "1", "--detach"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(WaitDone("up-run", 1, std::chrono::seconds(180))) << daemon_.LogTail();
  auto u = daemon_.Cli({"--json", "rollout", "update-policy", "up-run", "--weights", w2, "--version", "v2"});
  ASSERT_EQ(u.code, 0) << u.err;
  json uj = json::parse(u.out);
  EXPECT_EQ(uj["previous_version"], "v1");
  EXPECT_EQ(uj["version"], "v2");
  EXPECT_EQ(uj["epoch"], 1);
  std::printf("update-policy: paused %lld ms (drain %lld, load %lld)\n", uj["paused_ms"].get<long long>(),
              uj["drain_ms"].get<long long>(), uj["load_ms"].get<long long>());
  ASSERT_TRUE(WaitDone("up-run", 3, std::chrono::seconds(180))) << daemon_.LogTail();
  u = daemon_.Cli({"rollout", "update-policy", "up-run", "--weights", w1, "--version", "v3"});
  ASSERT_EQ(u.code, 0) << u.err;
  EXPECT_THAT(u.out, HasSubstr("policy v2 -> v3 (epoch 2)"));
  ASSERT_TRUE(WaitDone("up-run", 6, std::chrono::seconds(240))) << daemon_.LogTail();
  // Two forks of one episode after its first turn, watched to the end by the CLI.
  auto f = daemon_.Cli({"rollout", "fork", "up-run/up-0#0", "--at-step", "1", "--samples", "2", "--id", "up-fork"});
  ASSERT_EQ(f.code, 0) << f.out << f.err;
  EXPECT_THAT(f.out, HasSubstr("rollout up-fork: 2 forks of up-run/up-0#0 at turn 1"));
  auto fex = ReadJsonl(daemon_.Cli({"export", "up-fork"}).out);
  ASSERT_EQ(fex.size(), 2u);
  for (const auto& l : fex) {
    EXPECT_EQ(l["fork"]["parent"], "up-run/up-0#0");
    EXPECT_EQ(l["replayed"]["policy_calls"], 1);
  }
  kill(policy, SIGTERM);
  int st = 0;
  waitpid(policy, &st, 0);
  policy = -1;

  auto ex = daemon_.Cli({"export", "up-run"});
  ASSERT_EQ(ex.code, 0) << ex.err;
  auto lines = ReadJsonl(ex.out);
  ASSERT_EQ(lines.size(), 6u);
  const std::map<int, std::string> version_of = {{0, "v1"}, {1, "v2"}, {2, "v3"}};
  std::set<int> epochs_seen;
  int spanning = 0;
  for (const auto& l : lines) {
    int lo = 99, hi = -1;
    for (const auto& s : l["steps"]) {
      int e = s["policy_epoch"].get<int>();
      EXPECT_EQ(s["policy_version"], version_of.at(e)) << l["episode_id"] << " step " << s["step"];
      lo = std::min(lo, e);
      hi = std::max(hi, e);
      epochs_seen.insert(e);
    }
    ASSERT_GE(hi, 0) << l["episode_id"];
    EXPECT_EQ(l["policy_lag"], hi - lo) << l["episode_id"];
    EXPECT_EQ(l["stale"], hi - lo > 1) << l["episode_id"];
    spanning += hi > lo;
  }
  EXPECT_EQ(epochs_seen.size(), 3u) << "turns ran under v1, v2 and v3";
  EXPECT_GT(spanning, 0) << "an episode in flight at an update goes on under the new version";
  WriteFile(work_ + "/up-export.jsonl", ex.out);
  EXPECT_THAT(ValidateExport(work_ + "/up-export.jsonl"), HasSubstr("valid 6"));

  // Groups through the CLI: each handed once to a consumer that acknowledges.
  auto g = daemon_.Cli({"--json", "rollout", "groups", "up-run", "--consumer", "trainer", "--ack"});
  ASSERT_EQ(g.code, 0) << g.err;
  auto groups = ReadJsonl(g.out);
  ASSERT_EQ(groups.size(), 3u);
  for (const auto& grp : groups) {
    EXPECT_EQ(grp["episodes"].size(), 2u);
    EXPECT_EQ(grp["samples"].size(), 2u);
    EXPECT_EQ(grp["trainable"], 2);
  }
  g = daemon_.Cli({"--json", "rollout", "groups", "up-run", "--consumer", "trainer"});
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_TRUE(ReadJsonl(g.out).empty()) << g.out;
  // By hand: `rollout ack`, then the human listing skips what was acknowledged.
  auto a = daemon_.Cli({"rollout", "ack", "up-run", "--consumer", "eval", "up-run/up-0"});
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_THAT(a.out, HasSubstr("1 newly acknowledged, 1 in all for consumer eval"));
  g = daemon_.Cli({"rollout", "groups", "up-run", "--consumer", "eval"});
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_THAT(g.out, ::testing::Not(HasSubstr("up-run/up-0 ")));
  EXPECT_THAT(g.out, HasSubstr("up-run/up-1"));
  a = daemon_.Cli({"rollout", "ack", "up-run", "--consumer", "eval", "up-run/nope"});
  EXPECT_EQ(a.code, 1);
  EXPECT_THAT(a.err, HasSubstr("not a group of rollout"));
  // A finished rollout takes no update; a clear error.
  u = daemon_.Cli({"rollout", "update-policy", "up-run", "--version", "v4"});
  EXPECT_EQ(u.code, 1);
  EXPECT_THAT(u.err, HasSubstr("not running"));
}

}  // namespace
}  // namespace paddock
