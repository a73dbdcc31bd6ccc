// Part 6: the KV formula equals the bytes the caches really hold, and the
// V4-Flash-shaped config lands near the published ~2% of a GQA-8 BF16 cache.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/engine/kv_report.h"
#include "policy/engine/model.h"
#include "tests/engine_test_util.h"

namespace paddock::policy::engine {
namespace {

TEST(EngineKvReport, MeasuredCacheBytesAt64kEqualTheFormula) {
  Config c = ConfigByName("tiny").value();
  auto m = Model::Create(SeededWeights(c, 1).value(), 2).value();
  SequenceState s = m->NewSequence();
  m->FillSynthetic(s, 65536, 3);
  EXPECT_EQ(s.length, 65536u);
  EXPECT_EQ(s.CacheBytes(), PredictedCacheBytes(c, 65536));
  // Spelled out for tiny: entries of 48 FP8 + 16 BF16 dims + 1 scale byte = 81 B;
  // per layer a 128-entry window, CSA 16384 blocks of 81 + 20 B (32 4-bit + FP32
  // scale), HCA 512 blocks of 81 B.
  EXPECT_EQ(EntryBytes(c), 81u);
  EXPECT_EQ(IndexKeyBytes(c), 20u);
  EXPECT_EQ(PredictedCacheBytes(c, 65536), 4u * 128 * 81 + 2u * 16384 * (81 + 20) + 2u * 512 * 81);
}

TEST(EngineKvReport, FormulaMatchesRealPrefillAtOddLengths) {
  Config c = testing::MicroConfig();
  auto m = Model::Create(SeededWeights(c, 1).value(), 1).value();
  SequenceState s = m->NewSequence();
  std::vector<float> logits;
  size_t fed = 0;
  for (size_t n : {1, 3, 5, 9, 30}) {
    std::vector<int32_t> tokens(n, 7);
    Model::Chunk chunk{&s, tokens, false};
    m->Forward(std::span<const Model::Chunk>(&chunk, 1), logits);
    fed += n;
    EXPECT_EQ(s.CacheBytes(), PredictedCacheBytes(c, fed)) << fed;
  }
}

TEST(EngineKvReport, V4FlashShapeIsAboutTwoPercentOfGqaAtOneMillion) {
  Config c = ConfigByName("v4-flash-shape").value();
  KvReport r = ComputeKvReport(c, 1048576);
  double ratio = r.bytes / r.gqa_bytes;
  EXPECT_GT(ratio, 0.015);
  EXPECT_LT(ratio, 0.025);
  EXPECT_LT(r.flops, r.gqa_flops * 0.15);
  // GQA-8 BF16 of 43 layers x 128 dims: 2 * 8 * 128 * 2 B * 43 per token.
  EXPECT_DOUBLE_EQ(r.gqa_bytes_per_token(), 2.0 * 8 * 128 * 2 * 43);
}

TEST(EngineKvReport, TextAndJsonAndErrors) {
  auto text = RunKvReport("v4-flash-shape", 1048576, false);
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text.value().find("% of GQA"), std::string::npos);
  auto json = RunKvReport("tiny", 65536, true);
  ASSERT_TRUE(json.ok());
  auto j = nlohmann::json::parse(json.value());
  EXPECT_EQ(j["context"], 65536);
  EXPECT_EQ(j["kv_bytes"].get<double>(), double(PredictedCacheBytes(ConfigByName("tiny").value(), 65536)));
  EXPECT_EQ(RunKvReport("nope", 10, false).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(RunKvReport("tiny", 0, false).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace paddock::policy::engine
