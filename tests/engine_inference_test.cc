// The Engine contract over the CPU model: determinism, batching, prefix reuse,
// sampling controls, stop conditions, constraints and bad requests.
#include <cmath>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "policy/engine/embedded_engine.h"
#include "policy/engine/sampler.h"
#include "tests/engine_test_util.h"

namespace paddock::policy::engine {
namespace {

using testing::MicroConfig;

std::unique_ptr<EmbeddedEngine> MicroEngine(EngineOptions options = {}, int threads = 2) {
  auto w = SeededWeights(MicroConfig(), 5);
  auto m = Model::Create(std::move(w.value()), threads);
  return EmbeddedEngine::Create(std::move(m.value()), options);
}

GenerateJob Job(std::vector<int32_t> prompt, uint64_t seed, int max_new = 24, double temperature = 1.0) {
  GenerateJob job;
  job.prompt = std::move(prompt);
  job.sampling.seed = seed;
  job.sampling.max_new_tokens = max_new;
  job.sampling.temperature = temperature;
  job.sampling.ignore_eos = true;
  return job;
}

std::vector<int32_t> Prompt(size_t n, int salt) {
  std::vector<int32_t> p;
  for (size_t i = 0; i < n; ++i) p.push_back(static_cast<int32_t>((i * 131 + salt * 17 + 3) % 500 + 2));
  return p;
}

GenerateOutput Gen(Engine& e, GenerateJob job) {
  auto r = e.Generate(std::move(job));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r.value()) : GenerateOutput{};
}

TEST(EngineInference, SameSeedSameTokens) {
  auto e = MicroEngine();
  auto a = Gen(*e, Job(Prompt(30, 1), 42));
  auto b = Gen(*e, Job(Prompt(30, 1), 42));
  auto c = Gen(*e, Job(Prompt(30, 1), 43));
  ASSERT_EQ(a.tokens.size(), 24u);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.logprobs, b.logprobs);
  EXPECT_NE(a.tokens, c.tokens);
  EXPECT_EQ(a.finish, Finish::kLength);
  for (float lp : a.logprobs) EXPECT_LE(lp, 0.0f);
  // A fresh engine (other thread count) gives the same tokens.
  auto e2 = MicroEngine({}, 1);
  auto d = Gen(*e2, Job(Prompt(30, 1), 42));
  EXPECT_EQ(a.tokens, d.tokens);
  EXPECT_EQ(a.logprobs, d.logprobs);
}

TEST(EngineInference, BatchedEqualsUnbatched) {
  const int n = 12;
  std::vector<GenerateOutput> alone(n), together(n);
  {
    EngineOptions o;
    o.max_batch = 1;
    o.prefix_cache_entries = 0;
    auto e = MicroEngine(o);
    for (int i = 0; i < n; ++i) alone[i] = Gen(*e, Job(Prompt(10 + 7 * i, i), 100 + i, 16 + i));
  }
  EngineOptions o;
  o.prefix_cache_entries = 0;
  o.prefill_chunk = 16;  // prompts prefill over several steps beside others' decoding
  auto e = MicroEngine(o);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&, i] { together[i] = Gen(*e, Job(Prompt(10 + 7 * i, i), 100 + i, 16 + i)); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(alone[i].tokens, together[i].tokens) << i;
    EXPECT_EQ(alone[i].logprobs, together[i].logprobs) << i;
  }
  EXPECT_GT(e->stats().max_step_sequences, 1u) << "requests were never stepped together";
}

TEST(EngineInference, PrefixReuseEqualsRecomputation) {
  auto e = MicroEngine();
  auto p1 = Prompt(37, 2);
  auto first = Gen(*e, Job(p1, 9, 12, 0.0));
  EXPECT_EQ(first.cached_prompt_tokens, 0u);
  // Next turn: the previous prompt, the reply, and a new observation.
  auto p2 = p1;
  p2.insert(p2.end(), first.tokens.begin(), first.tokens.end());
  for (int32_t t : {7, 8, 9, 10, 11}) p2.push_back(t);
  auto second = Gen(*e, Job(p2, 9, 12));
  // Everything fed last time: the prompt and all sampled tokens but the last.
  EXPECT_EQ(second.cached_prompt_tokens, p1.size() + first.tokens.size() - 1);
  EXPECT_EQ(second.prompt_tokens, p2.size());
  EngineOptions o;
  o.prefix_cache_entries = 0;
  auto fresh = MicroEngine(o);
  auto recomputed = Gen(*fresh, Job(p2, 9, 12));
  EXPECT_EQ(recomputed.cached_prompt_tokens, 0u);
  EXPECT_EQ(second.tokens, recomputed.tokens);
  EXPECT_EQ(second.logprobs, recomputed.logprobs);
  // A prompt that diverges from the cached one is not served from it.
  auto p3 = p2;
  p3[5] = p3[5] == 3 ? 4 : 3;
  EXPECT_EQ(Gen(*e, Job(p3, 1, 2)).cached_prompt_tokens, 0u);
}

TEST(EngineInference, GreedyAndTopKOneAgree) {
  auto e = MicroEngine();
  auto greedy = Gen(*e, Job(Prompt(20, 3), 1, 10, 0.0));
  auto job = Job(Prompt(20, 3), 77, 10, 0.7);
  job.sampling.top_k = 1;
  auto topk1 = Gen(*e, std::move(job));
  EXPECT_EQ(greedy.tokens, topk1.tokens);
  for (float lp : topk1.logprobs) EXPECT_EQ(lp, 0.0f);  // the only token left
  for (float lp : greedy.logprobs) EXPECT_LT(lp, 0.0f);  // full distribution at T=1
}

TEST(EngineInference, StopTokenAndMaxTokens) {
  auto e = MicroEngine();
  auto greedy = Gen(*e, Job(Prompt(15, 4), 1, 10, 0.0));
  ASSERT_EQ(greedy.tokens.size(), 10u);
  auto job = Job(Prompt(15, 4), 1, 10, 0.0);
  int32_t stop = greedy.tokens[3];
  job.sampling.stop_token_ids = {stop};
  auto stopped = Gen(*e, std::move(job));
  EXPECT_EQ(stopped.finish, Finish::kStopToken);
  ASSERT_TRUE(stopped.matched_stop_token.has_value());
  EXPECT_EQ(*stopped.matched_stop_token, stop);
  EXPECT_EQ(stopped.tokens.back(), stop);
  EXPECT_LE(stopped.tokens.size(), 4u);
  auto three = Gen(*e, Job(Prompt(15, 4), 1, 3, 0.0));
  EXPECT_EQ(three.finish, Finish::kLength);
  EXPECT_EQ(three.tokens, std::vector<int32_t>(greedy.tokens.begin(), greedy.tokens.begin() + 3));
}

// Allows a fixed set; complete after `length` tokens.
class SetConstraint : public TokenConstraint {
 public:
  SetConstraint(std::vector<int32_t> ids, size_t length) : ids_(std::move(ids)), length_(length) {}
  void AllowedNext(std::vector<uint8_t>& allowed) override {
    for (int32_t id : ids_) allowed[id] = 1;
  }
  void Accept(int32_t token) override {
    EXPECT_NE(std::find(ids_.begin(), ids_.end(), token), ids_.end());
    ++accepted_;
  }
  bool Complete() const override { return accepted_ >= length_; }

 private:
  std::vector<int32_t> ids_;
  size_t length_, accepted_ = 0;
};

TEST(EngineInference, ConstraintMasksAndRenormalises) {
  auto e = MicroEngine();
  auto job = Job(Prompt(12, 5), 3, 50);
  job.constraint = std::make_unique<SetConstraint>(std::vector<int32_t>{100, 200, 300}, 6);
  auto out = Gen(*e, std::move(job));
  EXPECT_EQ(out.finish, Finish::kConstraintComplete);
  ASSERT_EQ(out.tokens.size(), 6u);
  for (int32_t t : out.tokens) EXPECT_TRUE(t == 100 || t == 200 || t == 300) << t;
  // One allowed token: probability 1 after renormalisation.
  job = Job(Prompt(12, 5), 3, 50);
  job.constraint = std::make_unique<SetConstraint>(std::vector<int32_t>{77}, 4);
  out = Gen(*e, std::move(job));
  EXPECT_EQ(out.tokens, std::vector<int32_t>(4, 77));
  for (float lp : out.logprobs) EXPECT_EQ(lp, 0.0f);
  // A constraint that ends on EOS finishes with kEos (unless EOS is ignored).
  job = Job(Prompt(12, 5), 3, 50);
  job.sampling.ignore_eos = false;
  job.constraint = std::make_unique<SetConstraint>(std::vector<int32_t>{1}, 1);
  out = Gen(*e, std::move(job));
  EXPECT_EQ(out.finish, Finish::kEos);
  EXPECT_EQ(out.tokens, std::vector<int32_t>{1});
  // Nothing allowed: a clear error, not a hang.
  job = Job(Prompt(12, 5), 3, 50);
  job.constraint = std::make_unique<SetConstraint>(std::vector<int32_t>{}, 1);
  auto bad = e->Generate(std::move(job));
  EXPECT_EQ(bad.status().code(), Code::kFailedPrecondition);
}

TEST(EngineInference, BadRequestsAreRefused) {
  auto e = MicroEngine();
  EXPECT_EQ(e->Generate(Job({}, 1)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(e->Generate(Job({1, 2, 512}, 1)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(e->Generate(Job({1, -1}, 1)).status().code(), Code::kInvalidArgument);
  auto job = Job({1, 2}, 1);
  job.sampling.temperature = -1;
  EXPECT_EQ(e->Generate(std::move(job)).status().code(), Code::kInvalidArgument);
  job = Job({1, 2}, 1);
  job.sampling.top_p = 0;
  EXPECT_EQ(e->Generate(std::move(job)).status().code(), Code::kInvalidArgument);
  job = Job({1, 2}, 1);
  job.sampling.top_k = -3;
  EXPECT_EQ(e->Generate(std::move(job)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(e->Generate(Job(std::vector<int32_t>(4096, 5), 1)).status().code(), Code::kInvalidArgument);
  auto zero = e->Generate(Job({1, 2}, 1, 0));
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero.value().tokens.empty());
  EXPECT_EQ(zero.value().finish, Finish::kLength);
}

TEST(EngineSampler, TopPKeepsTheNucleus) {
  // Probabilities 0.5, 0.25, 0.125, ... : top_p 0.7 keeps exactly the first two.
  std::vector<float> logits(16);
  for (int i = 0; i < 16; ++i) logits[i] = -static_cast<float>(i) * std::log(2.0f);
  Sampling s;
  s.top_p = 0.7;
  SequenceRng rng(5);
  std::set<int32_t> seen;
  for (int i = 0; i < 400; ++i) {
    auto t = SampleToken(logits, s, nullptr, rng).value();
    seen.insert(t.token);
    float want = t.token == 0 ? std::log(2.0f / 3) : std::log(1.0f / 3);
    EXPECT_NEAR(t.logprob, want, 1e-5);
  }
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1}));
  // Temperature sharpens: at T=0.1 token 0 dominates.
  s = Sampling{};
  s.temperature = 0.1;
  int zeros = 0;
  for (int i = 0; i < 200; ++i) zeros += SampleToken(logits, s, nullptr, rng).value().token == 0;
  EXPECT_GT(zeros, 195);
}

TEST(EngineInference, DescribesItselfAndItsVocabulary) {
  EngineOptions o;
  o.threads = 1;
  auto e = EmbeddedEngine::Create(o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e.value()->vocab_size(), 128815);  // DeepSeek's tokenizer.json: highest id 128814
  EXPECT_EQ(e.value()->eos_token_id(), 1);     // <｜end▁of▁sentence｜>
  EXPECT_NE(e.value()->describe().find("tiny: 4 layers (csa,hca,csa,hca)"), std::string::npos);
  auto out = e.value()->Generate(Job({0, 100, 2000, 128000}, 1, 4));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out.value().tokens.size(), 4u);
  EngineOptions bad;
  bad.config = "v4-flash-shape";
  EXPECT_EQ(EmbeddedEngine::Create(bad).status().code(), Code::kInvalidArgument);
  bad.config = "tiny";
  bad.weights_path = "/nonexistent/model.safetensors";
  EXPECT_EQ(EmbeddedEngine::Create(bad).status().code(), Code::kNotFound);
}

TEST(EngineInference, SmallConfigRunsWithThreadsSizedToTheMachine) {
  EngineOptions o;
  o.config = "small";  // threads 0: std::thread::hardware_concurrency()
  auto e = EmbeddedEngine::Create(o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e.value()->model()->threads(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  auto out = e.value()->Generate(Job(Prompt(40, 9), 5, 6));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out.value().tokens.size(), 6u);
  EXPECT_NE(e.value()->describe().find("small: 6 layers (window,window,csa,hca,csa,hca)"), std::string::npos);
}

}  // namespace
}  // namespace paddock::policy::engine
