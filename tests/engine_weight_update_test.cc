// EmbeddedEngine::UpdateWeightsFromDisk: new weights change the tokens and
// the version; a bad file changes nothing; a request running during an
// update finishes on the weights it started with, token for token, while a
// request admitted after it runs on the new ones beside it.
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "policy/engine/embedded_engine.h"
#include "policy/engine/weights.h"
#include "tests/engine_test_util.h"

namespace paddock::policy::engine {
namespace {

using testing::MicroConfig;
using testing::TempPath;

std::unique_ptr<EmbeddedEngine> MicroEngine(uint64_t seed) {
  auto w = SeededWeights(MicroConfig(), seed);
  EXPECT_TRUE(w.ok());
  auto m = Model::Create(std::move(w.value()), 2);
  EXPECT_TRUE(m.ok());
  EngineOptions o;
  return EmbeddedEngine::Create(std::move(m.value()), o);
}

std::string SavedMicro(uint64_t seed, const std::string& name) {
  auto w = SeededWeights(MicroConfig(), seed);
  EXPECT_TRUE(w.ok());
  std::string path = TempPath(name);
  EXPECT_TRUE(SaveSafetensors(w.value(), path).ok());
  return path;
}

GenerateJob Job(int max_new, uint64_t seed = 7) {
  GenerateJob job;
  job.prompt = {5, 17, 99, 230, 41};
  job.sampling.temperature = 0.9;
  job.sampling.seed = seed;
  job.sampling.max_new_tokens = max_new;
  job.sampling.ignore_eos = true;
  return job;
}

GenerateOutput Gen(Engine& e, GenerateJob job) {
  auto r = e.Generate(std::move(job));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : GenerateOutput{};
}

TEST(EngineWeightUpdate, NewWeightsChangeTokensAndVersion) {
  auto engine = MicroEngine(1);
  EXPECT_EQ(engine->weight_version(), "seed-1");
  GenerateOutput a = Gen(*engine, Job(16));
  EXPECT_EQ(a.weight_version, "seed-1");

  auto up = engine->UpdateWeightsFromDisk({SavedMicro(2, "w2.safetensors"), "v2", false});
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  EXPECT_EQ(up.value().version, "v2");
  EXPECT_EQ(engine->weight_version(), "v2");
  EXPECT_NE(engine->weights_source().find("w2.safetensors"), std::string::npos);
  GenerateOutput b = Gen(*engine, Job(16));
  EXPECT_EQ(b.weight_version, "v2");
  EXPECT_NE(b.tokens, a.tokens) << "seed-2 weights generated the same tokens as seed-1";
  EXPECT_EQ(b.tokens, Gen(*MicroEngine(2), Job(16)).tokens) << "reloaded weights differ from seeded ones";

  // Back to seed 1 from a file, no version given: derived from the file, and
  // the tokens are seed 1's again (the prefix cache of seed 2 is not reused).
  std::string w1 = SavedMicro(1, "w1.safetensors");
  auto back = engine->UpdateWeightsFromDisk({w1, "", false});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back.value().version.rfind("w1.safetensors@", 0), 0u) << back.value().version;
  EXPECT_EQ(back.value().version.size(), std::string("w1.safetensors@").size() + 8);
  GenerateOutput c = Gen(*engine, Job(16));
  EXPECT_EQ(c.tokens, a.tokens);
  EXPECT_EQ(c.weight_version, back.value().version);
  EXPECT_EQ(engine->stats().weight_updates, 2u);
}

TEST(EngineWeightUpdate, BadFilesKeepTheOldWeights) {
  auto engine = MicroEngine(1);
  GenerateOutput before = Gen(*engine, Job(12));

  Config other = MicroConfig();
  other.d_model = 64;  // same name, other shapes
  auto wrong = SeededWeights(other, 3);
  ASSERT_TRUE(wrong.ok());
  std::string wrong_path = TempPath("wrong_shapes.safetensors");
  ASSERT_TRUE(SaveSafetensors(wrong.value(), wrong_path).ok());
  std::string garbage = TempPath("garbage.safetensors");
  std::ofstream(garbage) << "this is not a safetensors file at all";
  std::string fifo = TempPath("weights.fifo");
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);

  struct Case {
    std::string path;
    Code code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {TempPath("missing.safetensors"), Code::kNotFound, "missing.safetensors"},
      {wrong_path, Code::kInvalidArgument, "shape"},
      {garbage, Code::kInvalidArgument, "garbage.safetensors"},
      {std::filesystem::path(garbage).parent_path().string(), Code::kInvalidArgument, "not a regular file"},
      {fifo, Code::kInvalidArgument, "not a regular file"},  // and open() does not wait for a writer
      {"", Code::kInvalidArgument, "empty"},
  };
  for (const auto& c : cases) {
    auto r = engine->UpdateWeightsFromDisk({c.path, "never", false});
    ASSERT_FALSE(r.ok()) << c.path;
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().ToString();
    EXPECT_EQ(engine->weight_version(), "seed-1");
  }
  GenerateOutput after = Gen(*engine, Job(12));
  EXPECT_EQ(after.tokens, before.tokens);
  EXPECT_EQ(after.weight_version, "seed-1");
  EXPECT_EQ(engine->stats().weight_update_failures, cases.size());
  EXPECT_EQ(engine->stats().weight_updates, 0u);
}

// Waits until the engine is stepping at least one sequence.
void AwaitRunning(EmbeddedEngine& e) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (e.stats().active == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
}

TEST(EngineWeightUpdate, RunningRequestFinishesOnItsWeights) {
  constexpr int kLong = 3000;
  const std::vector<int32_t> reference = Gen(*MicroEngine(1), Job(kLong)).tokens;
  const std::vector<int32_t> new_reference = Gen(*MicroEngine(2), Job(40, 3)).tokens;
  std::string w2 = SavedMicro(2, "w2_inflight.safetensors");

  auto engine = MicroEngine(1);
  GenerateOutput running;
  std::thread t([&] { running = Gen(*engine, Job(kLong)); });
  AwaitRunning(*engine);
  auto up = engine->UpdateWeightsFromDisk({w2, "v2", false});
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  EXPECT_EQ(up.value().still_running, 1u) << "the long request ended before the update: make it longer";
  // Admitted after the update, stepped beside the old request on the new weights.
  GenerateOutput fresh = Gen(*engine, Job(40, 3));
  t.join();
  EXPECT_EQ(fresh.weight_version, "v2");
  EXPECT_EQ(fresh.tokens, new_reference);
  EXPECT_EQ(running.weight_version, "seed-1");
  EXPECT_EQ(running.finish, Finish::kLength);
  EXPECT_EQ(running.tokens, reference) << "the running request's tokens changed with the update";
}

TEST(EngineWeightUpdate, AbortInFlightCancelsRequestsOnOldWeights) {
  auto engine = MicroEngine(1);
  std::string w2 = SavedMicro(2, "w2_abort.safetensors");
  GenerateOutput running;
  std::thread t([&] { running = Gen(*engine, Job(4000)); });
  AwaitRunning(*engine);
  auto up = engine->UpdateWeightsFromDisk({w2, "v2", true});
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  t.join();
  EXPECT_EQ(up.value().aborted, 1u);
  EXPECT_EQ(running.finish, Finish::kCancelled);
  EXPECT_EQ(running.weight_version, "seed-1");
  EXPECT_LT(running.tokens.size(), 4000u);
  EXPECT_EQ(Gen(*engine, Job(8)).weight_version, "v2");
}

}  // namespace
}  // namespace paddock::policy::engine
