// Constrained decoding (policy/engine/constrain): random sampling under the
// tool constraint, with the real DeepSeek vocabulary, always yields a
// completion the strict V4 decoder parses, with tool calls that follow the
// schemas; bad tool lists are refused; without the constraint nothing is cut.
#include <cmath>
#include <random>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/engine/constrain/tool_grammar.h"
#include "policy/v4/decode/decoder.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace {

using paddock::policy::engine::TokenConstraint;
using paddock::policy::engine::constrain::GrammarOptions;
using paddock::policy::engine::constrain::TokenBytes;
using paddock::policy::engine::constrain::ToolGrammar;
using paddock::v4::Tokenizer;
using json = nlohmann::json;

std::shared_ptr<const Tokenizer> Tok() {
  static std::shared_ptr<const Tokenizer> tok = [] {
    auto t = Tokenizer::Load(Tokenizer::DefaultPath());
    return t.ok() ? t.value() : nullptr;
  }();
  return tok;
}

std::shared_ptr<const TokenBytes> Vocab() {
  static std::shared_ptr<const TokenBytes> v = Tok() ? TokenBytes::Build(*Tok()) : nullptr;
  return v;
}

#define REQUIRE_TOKENIZER() \
  if (!Tok()) GTEST_SKIP() << "no tokenizer at " << Tokenizer::DefaultPath() << " (scripts/install-deps.sh)"

json Tools() {
  return json::parse(R"([
    {"type":"function","function":{"name":"get_weather","description":"weather",
      "parameters":{"type":"object","properties":{
        "location":{"type":"string"},
        "unit":{"type":"string","enum":["celsius","fahrenheit"]}},
        "required":["location"]}}},
    {"type":"function","function":{"name":"run_command",
      "parameters":{"type":"object","properties":{
        "command":{"type":"string","maxLength":40},
        "timeout":{"type":"integer"},
        "env":{"type":"object","properties":{"name":{"type":"string"},"value":{"type":"string"}},
               "required":["name","value"]},
        "args":{"type":"array","items":{"type":"string"},"maxItems":3}},
        "required":["command","env"]}}},
    {"type":"function","function":{"name":"set_flags",
      "parameters":{"type":"object","properties":{
        "enabled":{"type":"boolean"},
        "ratio":{"type":"number"},
        "mode":{"enum":[1,2,"x",null]},
        "tags":{"type":"array","items":{"type":"integer"}},
        "nested":{"type":"array","items":{"type":"array","items":{"type":"boolean"}}}},
        "required":["enabled","mode"]}}},
    {"type":"function","function":{"name":"ping","parameters":{"type":"object","properties":{}}}}
  ])");
}

struct Sample {
  std::vector<uint32_t> ids;
  std::string text;
  bool complete = false;
};

// Tokens whose bytes occur inside the format's markers: the sampler favours
// them so that tool calls, early ends and closed values happen often.
const std::vector<uint8_t>& Structural() {
  static const std::vector<uint8_t> s = [] {
    const TokenBytes& v = *Vocab();
    std::vector<uint8_t> out(v.vocab_size());
    const std::vector<std::string> markers = {"</think>", "\n\n<｜DSML｜tool_calls>\n", "<｜DSML｜invoke name=\"",
                                              "\">\n", "</｜DSML｜invoke>\n", "</｜DSML｜tool_calls>",
                                              "</｜DSML｜parameter>\n"};
    for (size_t id = 0; id < out.size(); ++id) {
      const std::string& b = v.bytes(static_cast<int32_t>(id));
      if (b.empty() || v.special(static_cast<int32_t>(id))) continue;
      for (const auto& m : markers) out[id] = out[id] || m.find(b) != std::string::npos;
    }
    return out;
  }();
  return s;
}

// Random logits (normal, with a bonus for structural tokens and EOS), softmax
// sampling restricted to `allowed`.
Sample SampleUnder(TokenConstraint* c, uint64_t seed, int max_tokens, double eos_bonus = 5) {
  const TokenBytes& v = *Vocab();
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<uint8_t> allowed(v.vocab_size());
  Sample out;
  for (int step = 0; step < max_tokens; ++step) {
    std::fill(allowed.begin(), allowed.end(), 0);
    if (c) {
      c->AllowedNext(allowed);
    } else {
      std::fill(allowed.begin(), allowed.end(), 1);
    }
    std::vector<std::pair<double, int32_t>> cand;
    for (size_t id = 0; id < allowed.size(); ++id) {
      if (!allowed[id]) continue;
      const std::string& b = v.bytes(static_cast<int32_t>(id));
      double logit = normal(rng);
      if (static_cast<int32_t>(id) == v.eos_id()) logit += eos_bonus;
      if (Structural()[id]) logit += 7;
      cand.push_back({logit, static_cast<int32_t>(id)});
    }
    EXPECT_FALSE(cand.empty()) << "no token allowed at step " << step << " after: " << json(Tok()->Decode(out.ids)).dump();
    if (cand.empty()) return out;
    double mx = -1e9;
    for (auto& [l, id] : cand) mx = std::max(mx, l);
    double sum = 0;
    for (auto& [l, id] : cand) sum += std::exp(l - mx);
    double r = std::uniform_real_distribution<double>(0, sum)(rng);
    int32_t pick = cand.back().second;
    for (auto& [l, id] : cand) {
      r -= std::exp(l - mx);
      if (r <= 0) {
        pick = id;
        break;
      }
    }
    out.ids.push_back(static_cast<uint32_t>(pick));
    if (c) c->Accept(pick);
    if (pick == v.eos_id() || (c && c->Complete())) {
      out.complete = true;
      break;
    }
  }
  out.text = Tok()->Decode(out.ids);
  return out;
}

// Every call names a known tool, its arguments are a JSON object over the
// tool's properties with the required ones present (the decoder has already
// checked the schema).
void ExpectCallsFollowSchemas(const json& message, const json& tools, const std::string& text) {
  std::map<std::string, json> by_name;
  for (const auto& t : tools) by_name[t["function"]["name"]] = t["function"]["parameters"];
  for (const auto& call : message["tool_calls"]) {
    std::string name = call["function"]["name"];
    ASSERT_TRUE(by_name.count(name)) << name << "\n" << text;
    json args = json::parse(call["function"]["arguments"].get<std::string>());
    ASSERT_TRUE(args.is_object()) << text;
    const json& schema = by_name[name];
    for (auto it = args.begin(); it != args.end(); ++it)
      EXPECT_TRUE(schema["properties"].contains(it.key())) << it.key() << "\n" << text;
    if (schema.contains("required"))
      for (const auto& r : schema["required"]) EXPECT_TRUE(args.contains(r.get<std::string>())) << text;
  }
}

struct Totals {
  int runs = 0, with_calls = 0, calls = 0, text_only = 0;
  std::set<std::string> names;
};

void RunMany(const json& tools, GrammarOptions opts, int seeds, int max_tokens, Totals* totals,
             double eos_bonus = 5) {
  auto g = ToolGrammar::Build(tools, Vocab(), opts);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  for (int seed = 1; seed <= seeds; ++seed) {
    auto c = g.value()->NewConstraint(max_tokens);
    Sample s = SampleUnder(c.get(), static_cast<uint64_t>(seed) * 7919 + (opts.thinking ? 1 : 0), max_tokens, eos_bonus);
    if (getenv("CONSTRAIN_TEST_VERBOSE")) fprintf(stderr, "seed %d: %zu tokens: %s\n", seed, s.ids.size(), json(s.text).dump().c_str());
    ASSERT_TRUE(s.complete) << "seed " << seed << ": not complete within " << max_tokens << " tokens:\n" << s.text;
    ASSERT_EQ(s.ids.back(), static_cast<uint32_t>(Vocab()->eos_id())) << s.text;
    auto decoded = paddock::v4::DecodeCompletion(s.text, opts.thinking, &tools);
    ASSERT_TRUE(std::holds_alternative<json>(decoded))
        << "seed " << seed << ": " << std::get<paddock::v4::DecodeError>(decoded).message << " at "
        << std::get<paddock::v4::DecodeError>(decoded).offset << "\n" << json(s.text).dump();
    const json& msg = std::get<json>(decoded);
    ExpectCallsFollowSchemas(msg, tools, s.text);
    ++totals->runs;
    if (msg["tool_calls"].empty()) {
      ++totals->text_only;
    } else {
      ++totals->with_calls;
      totals->calls += static_cast<int>(msg["tool_calls"].size());
      for (const auto& call : msg["tool_calls"]) totals->names.insert(call["function"]["name"]);
    }
  }
}

TEST(ConstrainTest, RandomSamplingAlwaysParsesThinkingMode) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;
  o.thinking = true;
  o.max_reasoning_chars = 48;
  o.max_content_chars = 48;
  o.max_string_chars = 24;
  Totals t;
  RunMany(Tools(), o, 15, 600, &t);
  EXPECT_EQ(t.runs, 15);
  EXPECT_GT(t.text_only, 0) << "no sample ended with plain text";
  // Random text rarely spells the tool-call opener by chance; require it.
  o.require_tool_call = true;
  Totals calls;
  RunMany(Tools(), o, 15, 600, &calls);
  EXPECT_EQ(calls.with_calls, calls.runs);
  EXPECT_GE(calls.names.size(), 3u);
}

TEST(ConstrainTest, RequiredToolCallChatMode) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;
  o.thinking = false;
  o.require_tool_call = true;
  o.max_content_chars = 16;
  o.max_string_chars = 16;
  Totals t;
  RunMany(Tools(), o, 30, 600, &t);
  EXPECT_EQ(t.with_calls, t.runs) << "tool_choice required but a sample ended without a call";
  EXPECT_GE(t.names.size(), 3u);
}

TEST(ConstrainTest, OnlyNamedToolIsCalled) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;
  o.thinking = false;
  o.require_tool_call = true;
  o.only_tools = {"run_command"};
  o.max_content_chars = 8;
  o.max_string_chars = 12;
  Totals t;
  RunMany(Tools(), o, 15, 600, &t);
  EXPECT_EQ(t.names, std::set<std::string>{"run_command"});
}

TEST(ConstrainTest, TightTokenBudgetStillEndsWellFormed) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;  // default caps (512 chars) far beyond the budget
  o.thinking = true;
  o.require_tool_call = true;
  Totals t;
  // The constraint closes open blocks early enough for 300 tokens.
  RunMany(Tools(), o, 8, 300, &t);
  EXPECT_EQ(t.with_calls, t.runs);
}

TEST(ConstrainTest, NoToolsMeansTextThenEos) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;
  o.thinking = true;
  o.max_reasoning_chars = 32;
  o.max_content_chars = 32;
  Totals t;
  RunMany(json::array(), o, 10, 300, &t);
  EXPECT_EQ(t.text_only, t.runs);
}

TEST(ConstrainTest, SpecialTokensOtherThanEosNeverAllowed) {
  REQUIRE_TOKENIZER();
  auto g = ToolGrammar::Build(Tools(), Vocab(), {});
  ASSERT_TRUE(g.ok());
  auto c = g.value()->NewConstraint();
  std::vector<uint8_t> allowed(Vocab()->vocab_size());
  c->AllowedNext(allowed);  // reasoning: free text
  size_t n = 0;
  for (size_t id = 0; id < allowed.size(); ++id) {
    if (Vocab()->special(static_cast<int32_t>(id))) EXPECT_FALSE(allowed[id]) << id;
    n += allowed[id];
  }
  EXPECT_GT(n, 100000u) << "free text should allow nearly the whole vocabulary";
  // "</think>" closes reasoning; the content region then allows EOS.
  for (uint32_t id : Tok()->Encode("thinking done</think>")) c->Accept(static_cast<int32_t>(id));
  std::fill(allowed.begin(), allowed.end(), 0);
  c->AllowedNext(allowed);
  EXPECT_TRUE(allowed[static_cast<size_t>(Vocab()->eos_id())]);
  // A forbidden marker spelled in content is refused: after "<think" no ">".
  for (uint32_t id : Tok()->Encode("<think")) c->Accept(static_cast<int32_t>(id));
  std::fill(allowed.begin(), allowed.end(), 0);
  c->AllowedNext(allowed);
  auto gt = Tok()->Encode(">");
  ASSERT_EQ(gt.size(), 1u);
  EXPECT_FALSE(allowed[gt[0]]);
  EXPECT_FALSE(c->Complete());
}

TEST(ConstrainTest, NoEosWhileAMarkerUnderWayHoldsDsml) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;
  o.thinking = false;
  auto g = ToolGrammar::Build(Tools(), Vocab(), o);
  ASSERT_TRUE(g.ok());
  auto c = g.value()->NewConstraint();
  std::vector<uint8_t> allowed(Vocab()->vocab_size());
  // "\n\n<｜DSML｜tool" is on its way to the tool-call opener; ending here
  // would leave ｜DSML｜ in the content, which the strict decoder refuses.
  for (uint32_t id : Tok()->Encode("ok\n\n<｜DSML｜tool")) {
    std::fill(allowed.begin(), allowed.end(), 0);
    c->AllowedNext(allowed);
    ASSERT_TRUE(allowed[id]) << id;
    c->Accept(static_cast<int32_t>(id));
  }
  std::fill(allowed.begin(), allowed.end(), 0);
  c->AllowedNext(allowed);
  EXPECT_FALSE(allowed[static_cast<size_t>(Vocab()->eos_id())]);
  auto rest = Tok()->Encode("_calls");
  EXPECT_TRUE(allowed[rest[0]]);
  auto DecodeOk = [&](const std::string& text) {
    json tools = Tools();
    return std::holds_alternative<json>(paddock::v4::DecodeCompletion(text, false, &tools));
  };
  EXPECT_FALSE(DecodeOk("ok\n\n<｜DSML｜tool<｜end▁of▁sentence｜>")) << "the case the constraint must avoid";
}

TEST(ConstrainTest, MasksAreCachedPerState) {
  REQUIRE_TOKENIZER();
  GrammarOptions o;
  o.max_reasoning_chars = 400;
  auto g = ToolGrammar::Build(Tools(), Vocab(), o);
  ASSERT_TRUE(g.ok());
  std::vector<uint8_t> allowed(Vocab()->vocab_size());
  auto c = g.value()->NewConstraint();
  auto ids = Tok()->Encode("plain words in reasoning and more plain words, again and again");
  for (uint32_t id : ids) {
    std::fill(allowed.begin(), allowed.end(), 0);
    c->AllowedNext(allowed);
    ASSERT_TRUE(allowed[id]);
    c->Accept(static_cast<int32_t>(id));
  }
  // ASCII words keep the automaton in one state: one computed mask, the rest hits.
  EXPECT_LE(g.value()->mask_misses(), 2u);
  EXPECT_GE(g.value()->mask_hits(), ids.size() - 2);
}

TEST(ConstrainTest, BadToolListsAreRefused) {
  REQUIRE_TOKENIZER();
  auto refuse = [](const json& tools, GrammarOptions o, const std::string& needle) {
    auto g = ToolGrammar::Build(tools, Vocab(), o);
    ASSERT_FALSE(g.ok()) << tools.dump();
    EXPECT_EQ(g.status().code(), paddock::Code::kInvalidArgument);
    EXPECT_NE(g.status().message().find(needle), std::string::npos) << g.status().message();
  };
  refuse(json::object(), {}, "tools");
  refuse(json::parse(R"([{"function":{"parameters":{}}}])"), {}, "tools[0].function.name");
  refuse(json::parse(R"([{"name":"a\"b"}])"), {}, "tools[0].name");
  refuse(json::parse(R"([{"name":"f","parameters":[1]}])"), {}, "tools[0].parameters");
  refuse(json::parse(R"([{"name":"f"},{"name":"f"}])"), {}, "duplicate");
  refuse(json::parse(R"([{"name":"f","parameters":{"properties":{"x":{"enum":[]}}}}])"), {}, "x");
  GrammarOptions named;
  named.only_tools = {"missing"};
  refuse(json::parse(R"([{"name":"f"}])"), named, "missing");
  GrammarOptions required;
  required.require_tool_call = true;
  refuse(json::array(), required, "tool_choice");
}

TEST(ConstrainTest, WithoutConstraintSamplingIsFree) {
  REQUIRE_TOKENIZER();
  // The same sampler without a constraint: ids outside any grammar (special
  // tokens, stray DSML markers) are reachable, and the text rarely parses.
  int unparsed = 0;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    Sample s = SampleUnder(nullptr, seed, 40);
    auto decoded = paddock::v4::DecodeCompletion(s.text, true, nullptr);
    unparsed += std::holds_alternative<paddock::v4::DecodeError>(decoded);
  }
  EXPECT_EQ(unparsed, 5);
}

}  // namespace
