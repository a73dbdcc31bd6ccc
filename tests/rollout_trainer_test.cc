// What a trainer relies on, in process on real parts (tests/rollout_engine_fixture.h):
// groups delivered when all their samples have ended, consumption that
// resumes where the consumer acknowledged (also from the log after a restart),
// outcome classes that keep the platform's failures out of training, and
// infra retries from the log.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "tests/rollout_engine_fixture.h"
#include "tests/rollout_test_util.h"

namespace paddock {
namespace {

using ::testing::HasSubstr;

// Tasks whose verifier gives each sample a coin-flip reward, so groups have a spread.
std::string CoinTasks(const std::string& rootfs, int tasks) {
  std::string out;
  for (int i = 0; i < tasks; ++i) {
    nlohmann::json t = {{"id", "coin-" + std::to_string(i)},
                        {"image", rootfs},
                        {"substrate", "function"},
                        {"instruction", "Run a command, then submit."},
                        {"tools", {"bash", "submit"}},
                        {"max_turns", 6},
                        {"verifier", "test $(( $(od -An -N1 -tu1 /dev/urandom) % 2 )) = 0"}};
    out += t.dump() + "\n";
  }
  return out;
}

void ExpectCompleteGroup(const v1::EpisodeGroup& g, uint32_t samples) {
  ASSERT_EQ(g.episodes_size(), static_cast<int>(samples)) << g.group_id();
  ASSERT_EQ(g.samples_jsonl_size(), static_cast<int>(samples)) << g.group_id();
  double sum = 0, sq = 0;
  uint32_t n = 0;
  for (int i = 0; i < g.episodes_size(); ++i) {
    const auto& e = g.episodes(i);
    EXPECT_EQ(e.sample(), static_cast<uint32_t>(i)) << "samples in order";
    EXPECT_TRUE(e.state() == "finished" || e.state() == "failed") << e.episode_id() << " " << e.state();
    EXPECT_EQ(e.group_id(), g.group_id());
    auto line = nlohmann::json::parse(g.samples_jsonl(i));
    EXPECT_EQ(line["episode_id"], e.episode_id());
    EXPECT_EQ(line["group_id"], g.group_id());
    EXPECT_EQ(line["token_ids"].size(), line["loss_mask"].size());
    if (e.train()) {
      sum += e.reward();
      sq += e.reward() * e.reward();
      ++n;
    }
  }
  ASSERT_EQ(g.trainable(), n);
  if (n) {
    EXPECT_NEAR(g.reward_mean(), sum / n, 1e-12);
    EXPECT_NEAR(g.reward_std(), std::sqrt(std::max(0.0, sq / n - (sum / n) * (sum / n))), 1e-12);
  }
}

TEST_F(RolloutEngineTest, GroupsStreamAsTheyComplete_ARestartedConsumerResumesWhereItAcknowledged) {
  const int kTasks = 4;
  const uint32_t kSamples = 8;
  auto req = Request(CoinTasks(*rootfs_, kTasks), testing::CountingScript(2, "0.2"), 8);
  req.set_samples_per_task(kSamples);
  auto started = engine_->Start(req);
  ASSERT_TRUE(started.ok()) << started.status().message();
  const std::string rid = started->rollout_id();

  v1::StreamGroupsRequest sreq;
  sreq.set_rollout_id(rid);
  sreq.set_consumer("trainer");
  sreq.set_follow(true);
  // The first consumer acknowledges two groups, takes a third without
  // acknowledging it, and goes away.
  std::vector<std::string> acked, taken;
  Status st = engine_->StreamGroups(
      sreq,
      [&](const v1::EpisodeGroup& g) {
        ExpectCompleteGroup(g, kSamples);
        taken.push_back(g.group_id());
        if (taken.size() == 3) return false;
        v1::AckGroupsRequest a;
        a.set_rollout_id(rid);
        a.set_consumer("trainer");
        a.add_group_ids(g.group_id());
        auto r = engine_->AckGroups(a);
        EXPECT_TRUE(r.ok()) << r.status().message();
        if (r.ok()) {
          EXPECT_EQ(r->acknowledged(), 1u);
        }
        acked.push_back(g.group_id());
        return true;
      },
      [] { return false; });
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(taken.size(), 3u);

  // Restarted, it gets the unacknowledged third again and the fourth, never the first two.
  std::vector<std::string> second;
  st = engine_->StreamGroups(
      sreq,
      [&](const v1::EpisodeGroup& g) {
        ExpectCompleteGroup(g, kSamples);
        second.push_back(g.group_id());
        v1::AckGroupsRequest a;
        a.set_rollout_id(rid);
        a.set_consumer("trainer");
        a.add_group_ids(g.group_id());
        EXPECT_TRUE(engine_->AckGroups(a).ok());
        return true;
      },
      [] { return false; });
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(second.size(), 2u);
  EXPECT_THAT(second, ::testing::Contains(taken[2]));
  for (const auto& id : acked) EXPECT_THAT(second, ::testing::Not(::testing::Contains(id)));
  std::set<std::string> all(acked.begin(), acked.end());
  all.insert(second.begin(), second.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kTasks));

  auto p = WaitDone(rid);
  EXPECT_EQ(p.groups_total(), static_cast<uint32_t>(kTasks));
  EXPECT_EQ(p.groups_done(), static_cast<uint32_t>(kTasks));

  // A daemon restart (a new engine over the same log): the groups come from the log.
  engine_ = std::make_unique<rollout::RolloutEngine>(*manager_, *log_, rollout::EngineOptions{.blocking_threads = 4});
  size_t again = 0, fresh = 0;
  ASSERT_TRUE(engine_->StreamGroups(sreq, [&](const v1::EpisodeGroup&) { return ++again, true; }, [] { return false; }).ok());
  EXPECT_EQ(again, 0u) << "every group was acknowledged";
  sreq.set_consumer("evaluator");
  ASSERT_TRUE(engine_
                  ->StreamGroups(sreq,
                                 [&](const v1::EpisodeGroup& g) {
                                   ExpectCompleteGroup(g, kSamples);
                                   EXPECT_EQ(g.sequence(), ++fresh);
                                   return true;
                                 },
                                 [] { return false; })
                  .ok());
  EXPECT_EQ(fresh, static_cast<size_t>(kTasks));
  auto from_log = engine_->Progress(rid);
  ASSERT_TRUE(from_log.ok());
  EXPECT_EQ(from_log->groups_done(), static_cast<uint32_t>(kTasks));

  // Bad acknowledgements are refused with what is wrong.
  v1::AckGroupsRequest bad;
  bad.set_rollout_id(rid);
  bad.set_consumer("trainer");
  bad.add_group_ids(rid + "/no-such-task");
  auto r = engine_->AckGroups(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("no-such-task"));
  bad.clear_group_ids();
  bad.set_consumer("../etc");
  EXPECT_EQ(engine_->AckGroups(bad).status().code(), Code::kInvalidArgument);
  sreq.set_rollout_id("no-such-rollout");
  EXPECT_EQ(engine_->StreamGroups(sreq, [](const v1::EpisodeGroup&) { return true; }, [] { return false; }).code(),
            Code::kNotFound);
}

std::string OneTask(const std::string& rootfs, const std::string& substrate, const std::string& verifier,
                    int turns = 1) {
  nlohmann::json t = {{"id", "t"},
                      {"image", rootfs},
                      {"substrate", substrate},
                      {"instruction", "Append a line per turn to /tmp/ran, then submit."},
                      {"tools", {"bash", "submit"}},
                      {"max_turns", turns + 4},
                      {"setup", {"rm -f /tmp/ran"}},
                      {"verifier", verifier}};
  return t.dump() + "\n";
}

TEST_F(RolloutEngineTest, AVerifierThatCrashesEndsInfra_MaskedFromTraining_RetriesRecorded) {
  for (uint32_t retries : {0u, 1u}) {
    auto req = Request(OneTask(*rootfs_, "function", "kill -SEGV $$"), testing::CountingScript(1), 1);
    req.set_retry_infra(retries);
    auto started = engine_->Start(req);
    ASSERT_TRUE(started.ok()) << started.status().message();
    auto p = WaitDone(started->rollout_id());
    EXPECT_EQ(p.failed(), 1u);
    EXPECT_EQ(p.infra(), 1u);
    auto lines = Export(started->rollout_id());
    ASSERT_EQ(lines.size(), 1u);
    const auto& l = lines[0];
    EXPECT_EQ(l["outcome"]["class"], "infra");
    EXPECT_EQ(l["outcome"]["reason"], "verifier_crash");
    EXPECT_EQ(l["train"], false);
    EXPECT_EQ(l["stop_reason"], "submit") << "what the agent did stays recorded";
    EXPECT_THAT(l["failure_reason"].get<std::string>(), HasSubstr("signal 11"));
    // A retry runs the verifier again (it crashes again here) and is recorded.
    EXPECT_EQ(l["infra_retries"], retries);
    if (retries) {
      EXPECT_THAT(l["retry_note"].get<std::string>(), HasSubstr("retry 1: verifier_crash"));
    }
  }
}

TEST_F(RolloutEngineTest, AgentEndsAreTrainedOn_StepTimingsInTheExport) {
  auto started = engine_->Start(Request(OneTask(*rootfs_, "container", testing::CountingVerifier(2), 2),
                                        testing::CountingScript(2), 1));
  ASSERT_TRUE(started.ok()) << started.status().message();
  auto p = WaitDone(started->rollout_id());
  EXPECT_EQ(p.done(), 1u);
  EXPECT_EQ(p.infra(), 0u);
  auto lines = Export(started->rollout_id());
  ASSERT_EQ(lines.size(), 1u);
  const auto& l = lines[0];
  EXPECT_EQ(l["outcome"]["class"], "agent");
  EXPECT_EQ(l["outcome"]["reason"], "submit");
  EXPECT_EQ(l["train"], true);
  EXPECT_EQ(l["reward"], 1.0);
  EXPECT_EQ(l["group_id"], started->rollout_id() + "/t");
  ASSERT_EQ(l["steps"].size(), 3u);
  int64_t tools = 0;
  for (size_t i = 0; i < l["steps"].size(); ++i) {
    const auto& s = l["steps"][i];
    EXPECT_EQ(s["step"], i + 1);
    EXPECT_GT(s["started_unix_ms"].get<int64_t>(), 0);
    EXPECT_GE(s["timings_us"]["policy_queue"].get<int64_t>(), 0);
    EXPECT_GE(s["timings_us"]["total"].get<int64_t>(), s["timings_us"]["tools"].get<int64_t>());
    tools += s["timings_us"]["tools"].get<int64_t>();
  }
  EXPECT_GT(l["steps"][0]["timings_us"]["tools"].get<int64_t>(), 0) << "step 1 ran a bash call";
  EXPECT_EQ(tools, l["timings_us"]["tools"].get<int64_t>()) << "the steps add up to the episode";
  EXPECT_GE(l["timings_us"]["queue"].get<int64_t>(), 0);
  EXPECT_GT(l["timings_us"]["sandbox_start"].get<int64_t>(), 0);
}

// Kills every process of the episode's container from the host (its init
// first among them), once the sandbox exists. Returns how many it killed.
int KillContainerFromOutside(SandboxManager& manager, const std::string& state_dir) {
  for (int i = 0; i < 400; ++i) {
    auto list = manager.List();
    if (!list.empty()) {
      SubstrateEnv env;
      env.state_dir = state_dir;
      std::ifstream in("/sys/fs/cgroup/pids/" + env.cgroup_root() + "/ct-" + list[0].id + "/cgroup.procs");
      int killed = 0;
      for (pid_t pid; in >> pid;) killed += kill(pid, SIGKILL) == 0;
      if (killed) return killed;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return 0;
}

TEST_F(RolloutEngineTest, SandboxKilledFromOutsideEndsInfra_RetryInfraFinishesIt) {
  for (uint32_t retries : {0u, 1u}) {
    // Three bash calls of a second each: the kill lands in one of them.
    auto req = Request(OneTask(*rootfs_, "container", testing::CountingVerifier(3), 3),
                       testing::CountingScript(3, "1"), 1);
    req.set_retry_infra(retries);
    auto started = engine_->Start(req);
    ASSERT_TRUE(started.ok()) << started.status().message();
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    ASSERT_GT(KillContainerFromOutside(*manager_, dir_ + "/state"), 0);
    auto p = WaitDone(started->rollout_id());
    auto lines = Export(started->rollout_id());
    ASSERT_EQ(lines.size(), 1u);
    const auto& l = lines[0];
    if (retries == 0) {
      EXPECT_EQ(p.failed(), 1u);
      EXPECT_EQ(l["outcome"]["class"], "infra");
      EXPECT_EQ(l["outcome"]["reason"], "sandbox_lost");
      EXPECT_EQ(l["train"], false);
      EXPECT_EQ(l["infra_retries"], 0);
    } else {
      // Run again from the log in a new sandbox: the logged calls replayed and
      // re-applied, each effect in the sandbox once, and the agent's reward.
      EXPECT_EQ(p.done(), 1u);
      EXPECT_EQ(l["outcome"]["class"], "agent");
      EXPECT_EQ(l["train"], true);
      EXPECT_EQ(l["reward"], 1.0);
      EXPECT_EQ(l["infra_retries"], 1);
      EXPECT_THAT(l["retry_note"].get<std::string>(), HasSubstr("sandbox_lost"));
      EXPECT_EQ(p.infra_retries(), 1u);
    }
  }
}

TEST_F(RolloutEngineTest, PolicyServerDownPastItsBudgetEndsInfra) {
  auto req = Request(OneTask(*rootfs_, "function", "true"), "", 1);
  req.mutable_policy()->set_kind("sglang");
  req.mutable_policy()->set_url("http://127.0.0.1:9");
  req.mutable_policy()->set_unavailable_wait_s(1);
  auto started = engine_->Start(req);
  ASSERT_TRUE(started.ok()) << started.status().message();
  WaitDone(started->rollout_id());
  auto d = engine_->GetEpisode(started->rollout_id() + "/t#0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->summary().outcome_class(), "infra");
  EXPECT_EQ(d->summary().outcome_reason(), "policy_unavailable");
  EXPECT_FALSE(d->summary().train());
}

// Fork at turn 2 of a container episode that wrote a file at turn 1: every
// fork sees the file, has the parent's first two turns token for token
// (replayed, not regenerated), and runs in a sandbox of its own afterwards.
TEST_F(RolloutEngineTest, ForkAtTurn2_EveryForkSeesTurn1sFile_SamePrefix_IndependentAfter) {
  nlohmann::json script = nlohmann::json::array(
      {testing::DsmlCall("bash", {{"command", "echo hello > /tmp/f1; echo wrote"}}),
       testing::DsmlCall("bash", {{"command", "echo two"}}),
       testing::DsmlCall("bash", {{"command", "cat /tmp/f1; echo x >> /tmp/shared; wc -l < /tmp/shared"}}),
       testing::DsmlCall("submit", {{"answer", "done"}})});
  auto started = engine_->Start(Request(OneTask(*rootfs_, "container", "test -f /tmp/f1", 4), script.dump(), 1));
  ASSERT_TRUE(started.ok()) << started.status().message();
  ASSERT_EQ(WaitDone(started->rollout_id()).done(), 1u);
  const std::string parent = started->rollout_id() + "/t#0";
  auto parent_steps = log_->ReadSteps(parent);
  ASSERT_TRUE(parent_steps.ok());
  ASSERT_EQ(parent_steps->size(), 4u);

  const uint32_t kForks = 4;
  v1::ForkEpisodeRequest fr;
  fr.set_episode_id(parent);
  fr.set_at_step(2);
  fr.set_samples(kForks);
  auto forked = engine_->Fork(fr);
  ASSERT_TRUE(forked.ok()) << forked.status().message();
  EXPECT_EQ(forked->episodes(), kForks);
  auto p = WaitDone(forked->rollout_id());
  EXPECT_EQ(p.done(), kForks);
  for (uint32_t i = 0; i < kForks; ++i) {
    const std::string ep = forked->rollout_id() + "/t#" + std::to_string(i);
    auto steps = log_->ReadSteps(ep);
    ASSERT_TRUE(steps.ok());
    ASSERT_EQ(steps->size(), 4u) << ep;
    for (int s = 0; s < 2; ++s)
      EXPECT_EQ((*steps)[s].policy_response().SerializeAsString(), (*parent_steps)[s].policy_response().SerializeAsString())
          << ep << " turn " << s + 1 << ": the prefix is the parent's";
    ASSERT_EQ((*steps)[2].observations_size(), 1);
    const std::string out = (*steps)[2].observations(0).content();
    EXPECT_THAT(out, HasSubstr("hello")) << ep << ": turn 1's file is there";
    EXPECT_THAT(out, HasSubstr("1")) << out;
    EXPECT_THAT(out, ::testing::Not(HasSubstr("2"))) << ep << ": another fork's write is not: " << out;
    auto d = engine_->GetEpisode(ep);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->summary().replayed_policy_calls(), 2u) << "turns 1 and 2 answered from the log";
    EXPECT_EQ(d->summary().reward(), 1.0);
  }
  auto lines = Export(forked->rollout_id());
  ASSERT_EQ(lines.size(), kForks);
  for (const auto& l : lines) {
    EXPECT_EQ(l["fork"]["parent"], parent);
    EXPECT_EQ(l["fork"]["at_step"], 2);
  }
  EXPECT_TRUE(Export(started->rollout_id())[0]["fork"].is_null());

  // What cannot be forked is refused with the reason.
  fr.set_at_step(0);
  EXPECT_EQ(engine_->Fork(fr).status().code(), Code::kInvalidArgument);
  fr.set_at_step(4);  // the submit turn ended the episode
  EXPECT_EQ(engine_->Fork(fr).status().code(), Code::kFailedPrecondition);
  fr.set_at_step(9);
  auto r = engine_->Fork(fr);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("4 logged turns"));
  fr.set_episode_id(started->rollout_id() + "/nope#0");
  fr.set_at_step(1);
  EXPECT_EQ(engine_->Fork(fr).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace paddock
