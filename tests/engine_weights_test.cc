// safetensors: round trip, and every kind of bad file refused with a reason.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/engine/model.h"
#include "policy/engine/numerics.h"
#include "policy/engine/weights.h"
#include "tests/engine_test_util.h"

namespace paddock::policy::engine {
namespace {

using testing::MicroConfig;
using testing::TempPath;

std::vector<RawTensor> RawOf(const Weights& w) {
  std::vector<RawTensor> raw;
  for (const auto& spec : TensorSpecs(w.config)) {
    RawTensor t{spec.name, "F32", spec.shape, {}};
    std::vector<float> v;
    if (spec.name == "embed.weight") {
      for (uint16_t b : w.embed) v.push_back(Bf16ToFloat(b));
    } else {
      const float* p = w.Get(spec.name);
      v.assign(p, p + spec.numel());
    }
    t.bytes.resize(v.size() * 4);
    std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
    raw.push_back(std::move(t));
  }
  return raw;
}

std::vector<float> LastLogits(Model& model, const std::vector<int32_t>& prompt) {
  SequenceState s = model.NewSequence();
  std::vector<float> logits;
  Model::Chunk chunk{&s, prompt, true};
  model.Forward(std::span<const Model::Chunk>(&chunk, 1), logits);
  return logits;
}

TEST(EngineWeights, SafetensorsRoundTripGivesTheSameModel) {
  Config c = MicroConfig();
  auto seeded = SeededWeights(c, 7);
  ASSERT_TRUE(seeded.ok()) << seeded.status().ToString();
  std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(SaveSafetensors(seeded.value(), path).ok());
  auto loaded = LoadSafetensors(path, c);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded.value().embed, seeded.value().embed);
  EXPECT_EQ(loaded.value().tensors, seeded.value().tensors);
  auto a = Model::Create(std::move(seeded.value()), 1);
  auto b = Model::Create(std::move(loaded.value()), 1);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<int32_t> prompt = {5, 17, 200, 3, 9, 44, 2, 311, 12, 13};
  EXPECT_EQ(LastLogits(*a.value(), prompt), LastLogits(*b.value(), prompt));
}

TEST(EngineWeights, BF16FilesLoadToo) {
  Config c = MicroConfig();
  auto w = SeededWeights(c, 3).value();
  auto raw = RawOf(w);
  for (auto& t : raw) {
    std::vector<uint8_t> b16(t.bytes.size() / 2);
    for (size_t i = 0; i < t.bytes.size() / 4; ++i) {
      float f;
      std::memcpy(&f, &t.bytes[4 * i], 4);
      uint16_t h = FloatToBf16(f);
      std::memcpy(&b16[2 * i], &h, 2);
    }
    t.dtype = "BF16";
    t.bytes = b16;
  }
  std::string path = TempPath("bf16.safetensors");
  ASSERT_TRUE(WriteSafetensorsFile(path, raw, {}).ok());
  auto loaded = LoadSafetensors(path, c);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const float* wq = loaded.value().Get("layers.0.attn.wq");
  EXPECT_EQ(wq[0], Bf16ToFloat(FloatToBf16(w.Get("layers.0.attn.wq")[0])));
}

struct BadCase {
  const char* what;
  Code code;
  const char* needle;  // the error must mention it
};

class EngineWeightsBadFile : public ::testing::Test {
 protected:
  Config c_ = MicroConfig();
  Weights w_ = SeededWeights(MicroConfig(), 1).value();
  std::string path_ = TempPath("bad.safetensors");

  Status LoadWith(std::vector<RawTensor> raw, std::map<std::string, std::string> meta = {}) {
    EXPECT_TRUE(WriteSafetensorsFile(path_, raw, meta).ok());
    return LoadSafetensors(path_, c_).status();
  }
  void ExpectError(const Status& st, Code code, const std::string& needle) {
    EXPECT_EQ(st.code(), code) << st.ToString();
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.ToString();
  }
};

TEST_F(EngineWeightsBadFile, WrongDtypeNamesTheTensor) {
  auto raw = RawOf(w_);
  raw[3].dtype = "F16";
  raw[3].bytes.resize(raw[3].bytes.size() / 2);
  ExpectError(LoadWith(raw), Code::kInvalidArgument, raw[3].name + "': dtype F16 is not supported");
}

TEST_F(EngineWeightsBadFile, WrongShapeNamesTheTensorAndBothShapes) {
  auto raw = RawOf(w_);
  auto& t = raw[2];  // layers.0.attn.wq [64, 32]
  ASSERT_EQ(t.name, "layers.0.attn.wq");
  t.shape = {32, 64};
  ExpectError(LoadWith(raw), Code::kInvalidArgument, "'layers.0.attn.wq': shape [32, 64] but config 'micro' expects [64, 32]");
}

TEST_F(EngineWeightsBadFile, MissingAndUnexpectedTensors) {
  auto raw = RawOf(w_);
  raw.pop_back();  // norm.weight
  ExpectError(LoadWith(raw), Code::kInvalidArgument, "missing tensor 'norm.weight'");
  raw = RawOf(w_);
  raw.push_back({"layers.9.attn.wq", "F32", {1}, {0, 0, 0, 0}});
  ExpectError(LoadWith(raw), Code::kInvalidArgument, "unexpected tensor 'layers.9.attn.wq'");
}

TEST_F(EngineWeightsBadFile, NonFiniteValueNamesTheTensor) {
  auto raw = RawOf(w_);
  float nan = std::nanf("");
  std::memcpy(raw[1].bytes.data() + 8, &nan, 4);
  ExpectError(LoadWith(raw), Code::kInvalidArgument, "'" + raw[1].name + "': non-finite value");
}

TEST_F(EngineWeightsBadFile, TruncatedFileIsDataLoss) {
  ASSERT_TRUE(SaveSafetensors(w_, path_).ok());
  auto size = std::filesystem::file_size(path_);
  std::filesystem::resize_file(path_, size - 100);
  auto st = LoadSafetensors(path_, c_).status();
  ExpectError(st, Code::kDataLoss, "truncated: tensor 'norm.weight'");
  std::filesystem::resize_file(path_, 5);
  ExpectError(LoadSafetensors(path_, c_).status(), Code::kDataLoss, "shorter than the 8-byte header length");
  // Header length pointing past the end.
  {
    std::ofstream f(path_, std::ios::binary | std::ios::trunc);
    uint64_t len = 1000;
    f.write(reinterpret_cast<const char*>(&len), 8);
    f << "{}";
  }
  ExpectError(LoadSafetensors(path_, c_).status(), Code::kDataLoss, "the header says 1000 bytes but only 2 follow");
}

TEST_F(EngineWeightsBadFile, GarbageHeaderIsInvalidArgument) {
  {
    std::ofstream f(path_, std::ios::binary | std::ios::trunc);
    std::string junk = "{not json";
    uint64_t len = junk.size();
    f.write(reinterpret_cast<const char*>(&len), 8);
    f << junk;
  }
  ExpectError(LoadSafetensors(path_, c_).status(), Code::kInvalidArgument, "header is not valid JSON");
  {
    std::ofstream f(path_, std::ios::binary | std::ios::trunc);
    f << "this is a text file, not a model at all";
  }
  ExpectError(LoadSafetensors(path_, c_).status(), Code::kInvalidArgument, "implausible");
}

TEST_F(EngineWeightsBadFile, OffsetsThatDisagreeWithTheShape) {
  auto raw = RawOf(w_);
  raw[0].bytes.resize(raw[0].bytes.size() - 4);  // embed one value short
  ExpectError(LoadWith(raw), Code::kInvalidArgument, "'embed.weight': data_offsets");
}

TEST_F(EngineWeightsBadFile, FileSavedForAnotherConfig) {
  ExpectError(LoadWith(RawOf(w_), {{"paddock.config", R"({"name":"small"})"}}), Code::kInvalidArgument,
              "saved for config 'small' but the engine is configured 'micro'");
}

TEST_F(EngineWeightsBadFile, MissingFileIsNotFound) {
  auto st = LoadSafetensors(TempPath("does-not-exist.safetensors"), c_).status();
  EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
}

TEST(EngineWeights, ReportOnlyShapeIsRefused) {
  auto c = ConfigByName("v4-flash-shape").value();
  auto w = SeededWeights(c, 1);
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ConfigByName("huge").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace paddock::policy::engine
