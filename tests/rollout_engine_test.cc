// The rollout engine in process, on real parts: a SandboxManager with the
// function and container substrates over the busybox test rootfs, a real
// trajectory log (RocksDB in a temp dir), the real V4 tokenizer, codec and
// DSML decoder. The policy is the scripted in-process one (no model): it
// answers turn N with element N of a fixed list of completions.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "policy/v4/tokenizer/tokenizer.h"
#include "replay/trajectory_log.h"
#include "rollout/engine/engine_internal.h"
#include "rollout/engine/rollout_engine.h"
#include "rollout/engine/task.h"
#include "rollout/engine/tools.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "tests/rollout_engine_fixture.h"
#include "tests/rollout_test_util.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using rollout::ParseTasksJsonl;

// ---- task format ------------------------------------------------------------
struct BadTask {
  const char* text;
  const char* expect;
};

TEST(RolloutTasks, BadInputIsRefusedNamingLineAndField) {
  const std::string ok = R"({"id":"a","image":"/img","instruction":"x"})";
  const BadTask cases[] = {
      {"", "no tasks"},
      {"# only a comment\n\n", "no tasks"},
      {"{not json}", "line 1: not valid JSON"},
      {"[1,2]", "line 1: a task must be a JSON object"},
      {R"({"image":"/img","instruction":"x"})", "line 1: field 'id': is required"},
      {R"({"id":"a b","image":"/img","instruction":"x"})", "line 1: field 'id'"},
      {R"({"id":"a","instruction":"x"})", "field 'image': is required"},
      {R"({"id":"a","image":"/img","instruction":""})", "field 'instruction': must not be empty"},
      {R"({"id":"a","image":"/img","instruction":"x","substrate":"vm"})", "field 'substrate': 'vm' is not one of"},
      {R"({"id":"a","image":"/img","instruction":"x","tools":["bash","python"]})", "field 'tools[1]': unknown tool 'python'"},
      {R"({"id":"a","image":"/img","instruction":"x","tools":["bash","bash"]})", "field 'tools[1]': tool 'bash' is listed twice"},
      {R"({"id":"a","image":"/img","instruction":"x","tools":[]})", "field 'tools': must name at least one tool"},
      {R"({"id":"a","image":"/img","instruction":"x","max_turns":0})", "field 'max_turns': 0 is out of range"},
      {R"({"id":"a","image":"/img","instruction":"x","max_turns":"3"})", "field 'max_turns': must be a non-negative integer"},
      {R"({"id":"a","image":"/img","instruction":"x","limits":{"memory_mb":-1}})", "field 'limits.memory_mb'"},
      {R"({"id":"a","image":"/img","instruction":"x","limits":{"cpu":1}})", "field 'limits.cpu': unknown field"},
      {R"({"id":"a","image":"/img","instruction":"x","verifier":{"command":"true","reward":"log"}})", "field 'verifier.reward'"},
      {R"({"id":"a","image":"/img","instruction":"x","verifier":{}})", "field 'verifier.command': is required"},
      {R"({"id":"a","image":"/img","instruction":"x","verifier":7})", "field 'verifier': must be a command string"},
      {R"({"id":"a","image":"/img","instruction":"x","setup":["ok",""]})", "field 'setup[1]'"},
      {R"({"id":"a","image":"/img","instruction":"x","workdir":"rel"})", "field 'workdir': must be an absolute path"},
      {R"({"id":"a","image":"/img","instruction":"x","env":{"A":1}})", "field 'env.A': must be a string"},
      {R"({"id":"a","image":"/img","instruction":"x","colour":"red"})", "field 'colour': unknown field"},
      {R"({"id":"a","image":"/img","instruction":"x","network":{"allow":[1]}})", "field 'network.allow[0]'"},
      {R"({"id":"a","image":"/img","instruction":"x","network":{"deny":[]}})", "field 'network.deny': unknown field"},
      {R"({"id":"a","image":"/img","instruction":"x","network":["h"]})", "field 'network': must be an object"},
      {R"({"id":"a","image":"/img","instruction":"x","metadata":[]})", "field 'metadata': must be an object"},
  };
  for (const auto& c : cases) {
    auto r = ParseTasksJsonl(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.text;
    EXPECT_THAT(r.status().message(), HasSubstr(c.expect)) << c.text;
  }
  // The line number counts blank and comment lines; duplicates name the id.
  auto dup = ParseTasksJsonl(ok + "\n\n# c\n" + ok + "\n");
  ASSERT_FALSE(dup.ok());
  EXPECT_THAT(dup.status().message(), HasSubstr("line 4: field 'id': 'a' is used by an earlier task"));
  auto bad3 = ParseTasksJsonl(ok + "\n" + R"({"id":"b","image":"/img","instruction":"x"})" + "\n" +
                              R"({"id":"c","image":"/img","instruction":"x","max_tokens":1})");
  ASSERT_FALSE(bad3.ok());
  EXPECT_THAT(bad3.status().message(), HasSubstr("line 3: field 'max_tokens'"));
}

TEST(RolloutTasks, NetworkAllowIsTakenOnEverySubstrate) {
  for (const std::string substrate : {"container", "function", "microvm"}) {
    auto r = ParseTasksJsonl(R"({"id":"a","image":"/img","instruction":"x","substrate":")" + substrate +
                             R"(","network":{"allow":["h:1","10.0.0.0/8"]}})");
    ASSERT_TRUE(r.ok()) << substrate << ": " << r.status().message();
    EXPECT_EQ((*r)[0].network_allow, (std::vector<std::string>{"h:1", "10.0.0.0/8"})) << substrate;
  }
}

TEST(RolloutTasks, DefaultsAndRestrictedTools) {
  auto r = ParseTasksJsonl(
      R"({"id":"t1","image":"/img","instruction":"do","tools":["submit","bash"],"verifier":"true","metadata":{"k":1}})");
  ASSERT_TRUE(r.ok()) << r.status().message();
  const auto& t = (*r)[0];
  EXPECT_EQ(t.substrate, "container");
  EXPECT_EQ(t.tools, (std::vector<std::string>{"bash", "submit"}));  // built-in order
  EXPECT_TRUE(t.has_verifier);
  EXPECT_EQ(t.verifier.reward, "exit_code");
  EXPECT_EQ(t.max_turns, 16u);
  EXPECT_EQ(t.metadata["k"], 1);
  auto schemas = rollout::ToolSchemas(t);
  ASSERT_EQ(schemas.size(), 2u);
  EXPECT_EQ(schemas[0]["function"]["name"], "bash");
  EXPECT_EQ(schemas[1]["function"]["name"], "submit");
}

// ---- the engine on real sandboxes (tests/rollout_engine_fixture.h) -----------

TEST_F(RolloutEngineTest, ConcurrentEpisodesComplete_EveryStepAndCallLogged) {
  const int kTasks = 32, kTurns = 3;
  auto started = engine_->Start(Request(testing::CountingTasks(*rootfs_, kTasks, kTurns), testing::CountingScript(kTurns), 16));
  ASSERT_TRUE(started.ok()) << started.status().message();
  auto p = WaitDone(started->rollout_id());
  EXPECT_EQ(p.state(), "finished");
  EXPECT_EQ(p.done(), static_cast<uint32_t>(kTasks));
  EXPECT_EQ(p.failed(), 0u);
  EXPECT_DOUBLE_EQ(p.mean_reward(), 1.0);  // each bash call's effect is in the sandbox exactly once
  auto lines = Export(started->rollout_id());
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks));
  for (const auto& l : lines) {
    const std::string ep = l["episode_id"];
    EXPECT_EQ(l["stop_reason"], "submit") << ep;
    EXPECT_EQ(l["turns"], kTurns + 1) << ep;
    EXPECT_EQ(l["reward"], 1.0) << ep;
    EXPECT_EQ(l["token_ids"].size(), l["loss_mask"].size());
    EXPECT_EQ(l["token_ids"].size(), l["logprobs"].size());
    auto steps = log_->ReadSteps(ep);
    ASSERT_TRUE(steps.ok());
    ASSERT_EQ(steps->size(), static_cast<size_t>(kTurns + 1)) << ep;
    // Each step's prompt delta starts after the previous output (what the
    // step appended: the observations), so the export holds each output once:
    // its length is the deltas plus the outputs.
    size_t logged = 0;
    for (size_t i = 0; i < steps->size(); ++i) {
      const auto& rq = (*steps)[i].policy_request();
      EXPECT_TRUE(rq.delta_after_output()) << ep;
      logged += rq.prompt_token_ids_size() + (*steps)[i].policy_response().token_ids_size();
      if (i == 0) continue;
      const auto& prev = (*steps)[i - 1].policy_response().token_ids();
      ASSERT_GT(prev.size(), 0);
      bool repeats = rq.prompt_token_ids_size() >= prev.size() &&
                     std::equal(prev.begin(), prev.end(), rq.prompt_token_ids().begin());
      EXPECT_FALSE(repeats) << ep << " step " << (*steps)[i].step() << "'s delta repeats the previous output";
    }
    EXPECT_EQ(l["token_ids"].size(), logged) << ep;
    for (const auto& s : *steps) {
      // The policy call and every tool call have a logged result under their keys.
      auto pc = log_->GetCall({ep, s.step(), 0});
      ASSERT_TRUE(pc.ok() && pc->has_value() && (*pc)->has_result) << ep << " step " << s.step();
      for (int i = 0; i < s.tool_calls_size(); ++i) {
        auto tc = log_->GetCall({ep, s.step(), static_cast<uint32_t>(i + 1)});
        ASSERT_TRUE(tc.ok() && tc->has_value() && (*tc)->has_result) << s.tool_calls(i).call_key();
      }
    }
    EXPECT_EQ(steps->back().stop_reason(), "submit");
  }
  // A log written before delta_after_output (each delta began with the
  // previous output again) exports the same tokens: the repeat is dropped.
  {
    const std::string ep = lines[0]["episode_id"];
    auto steps = log_->ReadSteps(ep);
    ASSERT_TRUE(steps.ok());
    const std::string old_ep = ep + "-old-format";
    for (size_t i = 0; i < steps->size(); ++i) {
      v1::StepRecordProto old = (*steps)[i];
      old.set_episode_id(old_ep);
      auto* rq = old.mutable_policy_request();
      rq->set_delta_after_output(false);
      if (i > 0) {
        const auto& prev = (*steps)[i - 1].policy_response().token_ids();
        google::protobuf::RepeatedField<uint32_t> ids(prev.begin(), prev.end());
        ids.Add(rq->prompt_token_ids().begin(), rq->prompt_token_ids().end());
        *rq->mutable_prompt_token_ids() = ids;
      }
      ASSERT_TRUE(log_->AppendStep(old).ok());
    }
    v1::EpisodeSummary summary;
    summary.set_episode_id(old_ep);
    auto line = rollout::ExportEpisodeLine(*log_, nullptr, v1::StartRolloutRequest(), nullptr, summary);
    ASSERT_TRUE(line.ok()) << line.status().message();
    auto j = nlohmann::json::parse(*line);
    EXPECT_EQ(j["token_ids"], lines[0]["token_ids"]);
    EXPECT_EQ(j["loss_mask"], lines[0]["loss_mask"]);
  }
  auto st = engine_->stats();
  EXPECT_EQ(st.live_tool_calls, static_cast<uint64_t>(kTasks * (kTurns + 1)));
  EXPECT_EQ(st.replayed_tool_calls, 0u);
  EXPECT_EQ(manager_->live(), 0u) << "sandboxes of finished episodes are destroyed";
}

TEST_F(RolloutEngineTest, MalformedToolCallBecomesAnObservation_NotACrash) {
  nlohmann::json script = nlohmann::json::array(
      {"\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\">oops",
       testing::DsmlCall("nosuchtool", {{"x", "1"}}),
       testing::DsmlCall("submit", {{"answer", "42"}})});
  std::string tasks = nlohmann::json({{"id", "m"}, {"image", *rootfs_}, {"substrate", "function"},
                                      {"instruction", "answer"}, {"tools", {"bash", "submit"}},
                                      {"verifier", {{"command", "echo $PADDOCK_ANSWER"}, {"reward", "stdout"}}}})
                          .dump();
  auto started = engine_->Start(Request(tasks, script.dump(), 1));
  ASSERT_TRUE(started.ok()) << started.status().message();
  auto p = WaitDone(started->rollout_id());
  ASSERT_EQ(p.done(), 1u);
  auto d = engine_->GetEpisode(started->rollout_id() + "/m#0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->summary().stop_reason(), "submit");
  EXPECT_EQ(d->summary().malformed_tool_calls(), 2u);
  EXPECT_DOUBLE_EQ(d->summary().reward(), 42.0);  // the verifier read the submitted answer
  auto lines = Export(started->rollout_id());
  ASSERT_EQ(lines.size(), 1u);
  std::string all = lines[0]["messages"].dump();
  EXPECT_THAT(all, HasSubstr("could not be read as a tool call"));
}

TEST_F(RolloutEngineTest, BadRolloutsAreRefused) {
  auto r = engine_->Start(Request("{\"id\":\"a\"}", testing::CountingScript(1), 1));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("line 1: field 'image': is required"));
  auto tasks = testing::CountingTasks(*rootfs_, 1, 1);
  auto bad_script = engine_->Start(Request(tasks, "{}", 1));
  EXPECT_THAT(bad_script.status().message(), HasSubstr("policy script"));
  v1::StartRolloutRequest chat = Request(tasks, "", 1);
  chat.mutable_policy()->set_kind("openai-chat");
  chat.mutable_policy()->set_url("http://127.0.0.1:1");
  EXPECT_THAT(engine_->Start(chat).status().message(), HasSubstr("openai-chat"));
  v1::StartRolloutRequest bad_id = Request(tasks, testing::CountingScript(1), 1);
  bad_id.set_rollout_id("has/slash");
  EXPECT_EQ(engine_->Start(bad_id).status().code(), Code::kInvalidArgument);
  bad_id.set_rollout_id("dup");
  ASSERT_TRUE(engine_->Start(bad_id).ok());
  EXPECT_EQ(engine_->Start(bad_id).status().code(), Code::kAlreadyExists);
  WaitDone("dup");
  EXPECT_EQ(engine_->Resume([] { v1::ResumeRolloutRequest q; q.set_rollout_id("nope"); return q; }()).status().code(),
            Code::kNotFound);
}

// Cancel mid-run, then resume in the same engine: finished episodes stay,
// the others fast-forward through their logged calls on a rebuilt sandbox
// and complete; the sandbox of each holds every bash call's effect once.
TEST_F(RolloutEngineTest, CancelledRolloutResumes_FastForwardAndNoDoubleEffects) {
  const int kTasks = 12, kTurns = 4;
  auto req = Request(testing::CountingTasks(*rootfs_, kTasks, kTurns), testing::CountingScript(kTurns, "0.15"), 12);
  req.set_rollout_id("cancel-resume");
  ASSERT_TRUE(engine_->Start(req).ok());
  // Let every episode log a couple of steps.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < until && engine_->stats().live_tool_calls < kTasks * 2)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto n = engine_->Cancel("cancel-resume");
  ASSERT_TRUE(n.ok());
  auto p = WaitDone("cancel-resume");
  EXPECT_EQ(p.state(), "cancelled");
  EXPECT_LT(p.done(), static_cast<uint32_t>(kTasks));
  const uint64_t live_before = engine_->stats().live_tool_calls;

  v1::ResumeRolloutRequest rq;
  rq.set_rollout_id("cancel-resume");
  auto resumed = engine_->Resume(rq);
  ASSERT_TRUE(resumed.ok()) << resumed.status().message();
  EXPECT_EQ(resumed->already_done() + resumed->to_run(), static_cast<uint32_t>(kTasks));
  p = WaitDone("cancel-resume");
  EXPECT_EQ(p.state(), "finished");
  EXPECT_EQ(p.done(), static_cast<uint32_t>(kTasks));
  EXPECT_DOUBLE_EQ(p.mean_reward(), 1.0);
  auto st = engine_->stats();
  EXPECT_GT(st.replayed_policy_calls, 0u);
  EXPECT_GT(st.replayed_tool_calls, 0u);
  // Every tool call ran live exactly once across both runs.
  EXPECT_EQ(st.live_tool_calls, static_cast<uint64_t>(kTasks * (kTurns + 1)))
      << "before cancel " << live_before << ", replayed " << st.replayed_tool_calls;
  bool some_rebuilt = false;
  for (const auto& l : Export("cancel-resume")) {
    EXPECT_EQ(l["reward"], 1.0) << l["episode_id"];
    if (l["rebuilt"].get<bool>()) {
      some_rebuilt = true;
      EXPECT_THAT(l["rebuild_note"].get<std::string>(), HasSubstr("re-applied"));
      EXPECT_GT(l["replayed"]["tool_calls"].get<int>(), 0);
    }
  }
  EXPECT_TRUE(some_rebuilt);
}

// What a turn waits for on the disk: the tool intent (before the tool runs)
// and the tool result with the step record (appended asynchronously), two
// synced writes; the policy call's intent and result are deferred (a lost
// policy answer is asked again), carried to the disk by the tool intent's
// sync. Every call and step is in the log afterwards.
TEST_F(RolloutEngineTest, ATurnWaitsForTwoSyncs_PolicyCallsDeferred) {
  const int kTurns = 5;  // bash calls, then submit: kTurns + 1 turns with one tool call each
  const uint64_t turns = kTurns + 1;
  replay::CommitStats before = log_->GetCommitStats();
  auto started = engine_->Start(Request(testing::CountingTasks(*rootfs_, 1, kTurns, "function"),
                                        testing::CountingScript(kTurns), 1));
  ASSERT_TRUE(started.ok()) << started.status().message();
  auto p = WaitDone(started->rollout_id());
  ASSERT_EQ(p.done(), 1u);
  replay::CommitStats after = log_->GetCommitStats();
  uint64_t syncs = after.syncs - before.syncs, deferred = after.deferred - before.deferred;
  // Besides the turns: the rollout's definition, the episode's first and
  // last record, the rollout's end.
  EXPECT_LE(syncs, 2 * turns + 4) << "deferred " << deferred;
  EXPECT_GE(syncs, 2 * turns);
  EXPECT_GE(deferred, 2 * turns) << "policy intent and result of each turn";
  // The step records (with the last tool result) are appended asynchronously:
  // no pool thread sleeps through their sync.
  EXPECT_EQ(after.async - before.async, turns);
  const std::string ep = started->rollout_id() + "/count-0#0";
  auto steps = log_->ReadSteps(ep);
  ASSERT_TRUE(steps.ok());
  ASSERT_EQ(steps->size(), turns);
  for (const auto& s : *steps) {
    EXPECT_TRUE(log_->GetCall({ep, s.step(), 0}).value()->has_result) << "policy call of turn " << s.step();
    EXPECT_TRUE(log_->GetCall({ep, s.step(), 1}).value()->has_result) << "tool call of turn " << s.step();
  }
}

TEST_F(RolloutEngineTest, PolicyServerDown_EpisodesRetryThenFailWithPolicyError) {
  // Nothing listens on the port: UNAVAILABLE, retried with backoff until
  // unavailable_wait_s, then policy_error.
  auto req = Request(testing::CountingTasks(*rootfs_, 2, 1, "function"), "", 2);
  req.mutable_policy()->set_kind("sglang");
  req.mutable_policy()->set_url("http://127.0.0.1:9");
  req.mutable_policy()->set_unavailable_wait_s(2);
  auto t0 = std::chrono::steady_clock::now();
  auto started = engine_->Start(req);
  ASSERT_TRUE(started.ok()) << started.status().message();
  auto p = WaitDone(started->rollout_id());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_EQ(p.failed(), 2u);
  auto d = engine_->GetEpisode(started->rollout_id() + "/count-0#0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->summary().stop_reason(), "policy_error");
  EXPECT_GT(d->summary().policy_retries(), 1u);
  EXPECT_THAT(d->summary().failure_reason(), HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace paddock
