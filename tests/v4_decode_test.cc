// DeepSeek-V4 completion decoder and streaming DSML parser.
//  - every case of tests/data/v4/decoding_public.jsonl (accepted → exact message,
//    expected_error → rejected);
//  - a straightforward port of the reference decoder (read-until-first-marker,
//    as encoding_dsv4.py does it) as a differential oracle for strict mode on
//    thousands of truncated and spliced completions;
//  - chunking invariance (1, 2, 7 and random byte chunks) in both modes;
//  - tolerant mode: one test per error kind; invalid UTF-8; cut-off completions.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <variant>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/v4/decode/decoder.h"
#include "policy/v4/decode/dsml_parser.h"

namespace paddock::v4 {
namespace {

using json = nlohmann::json;
using Kind = DsmlEvent::Kind;

struct Case {
  std::string id, mutation, completion;
  bool thinking = false;
  bool expect_error = false;
  json expected;
};

std::vector<Case> LoadCases() {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/decoding_public.jsonl");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line);
    Case c;
    c.id = j.at("id").get<std::string>();
    c.mutation = j.value("mutation", "");
    c.completion = j.at("completion").get<std::string>();
    c.thinking = j.at("thinking_mode").get<std::string>() == "thinking";
    c.expect_error = j.value("expected_error", false);
    if (j.contains("expected")) c.expected = j["expected"];
    cases.push_back(std::move(c));
  }
  return cases;
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = LoadCases();
  return cases;
}

// ---- A direct port of the reference decoder (not streaming), as an oracle ----

const std::string kEos = "<｜end▁of▁sentence｜>";
const std::string kBos = "<｜begin▁of▁sentence｜>";
const std::string kDsml = "｜DSML｜";

struct Read {
  size_t index;
  std::string content;
  std::string stop;  // "" = None
};

Read ReadUntilStop(size_t index, const std::string& text, const std::vector<std::string>& stops) {
  size_t min_pos = text.size();
  std::string matched;
  for (const auto& s : stops) {
    size_t pos = text.find(s, index);
    if (pos != std::string::npos && pos < min_pos) {
      min_pos = pos;
      matched = s;
    }
  }
  if (!matched.empty()) return {min_pos + matched.size(), text.substr(index, min_pos - index), matched};
  return {text.size(), text.substr(std::min(index, text.size())), ""};
}

// Python regexes on str; std::regex works on bytes, which is equivalent here
// except for \s (Unicode whitespace), handled by hand for the ASCII subset and
// the few non-ASCII spaces.
bool RefInvokeName(const std::string& s, std::string* name) {
  size_t i = 0;
  auto is_space = [&](size_t at, size_t* len) {
    unsigned char c = s[at];
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return *len = 1, true;
    static const char* kSpaces[] = {"\xC2\x85", "\xC2\xA0", "\xE3\x80\x80", "\xE2\x80\xA8",
                                    "\xE2\x80\xA9", "\xE2\x80\x80"};
    for (const char* sp : kSpaces)
      if (s.compare(at, std::strlen(sp), sp) == 0) return *len = std::strlen(sp), true;
    return false;
  };
  size_t len;
  while (i < s.size() && is_space(i, &len)) i += len;
  static const std::regex re("^name=\"([\\s\\S]*?)\">\n\n?$");
  std::smatch m;
  std::string rest = s.substr(i);
  if (!std::regex_match(rest, m, re)) return false;
  // std::regex's $ does not match before a final newline; emulate: prefer the
  // shortest name, as Python's non-greedy group with $ does.
  *name = m[1];
  if (rest.size() >= 4 && rest.compare(rest.size() - 4, 4, "\">\n\n") == 0)
    *name = rest.substr(6, rest.size() - 10);
  return true;
}

bool RefParam(const std::string& s, std::string* name, std::string* flag, std::string* value) {
  static const std::regex re("^ name=\"([\\s\\S]*?)\" string=\"(true|false)\">([\\s\\S]*?)<\n?$");
  std::smatch m;
  if (!std::regex_match(s, m, re)) return false;
  *name = m[1];
  *flag = m[2];
  *value = m[3];
  return true;
}

std::string PyJson(const std::string& s) { return JsonQuote(s); }

std::optional<json> ReferenceDecode(const std::string& text, bool thinking) {
  const std::string tc_start = "\n\n<" + kDsml + "tool_calls";
  const std::string tc_end = "</" + kDsml + "tool_calls>";
  std::string summary, reasoning;
  json tool_calls = json::array();
  size_t index = 0;
  std::string stop;
  if (thinking) {
    Read r = ReadUntilStop(index, text, {"</think>", tc_start});
    index = r.index;
    reasoning = r.content;
    if (r.stop != "</think>") return std::nullopt;
  }
  Read r = ReadUntilStop(index, text, {kEos, tc_start});
  index = r.index;
  summary = r.content;
  stop = r.stop;
  bool tool_calling = stop == tc_start;
  if (!tool_calling && stop != kEos) return std::nullopt;
  if (tool_calling) {
    while (index < text.size()) {
      Read a = ReadUntilStop(index, text, {"<" + kDsml + "invoke", tc_end});
      index = a.index;
      stop = a.stop;
      if (a.content != ">\n") return std::nullopt;
      if (stop == tc_end) break;
      if (stop.empty()) return std::nullopt;
      Read h = ReadUntilStop(index, text, {"<" + kDsml + "parameter", "</" + kDsml + "invoke"});
      index = h.index;
      stop = h.stop;
      std::string tool_name;
      if (!RefInvokeName(h.content, &tool_name)) return std::nullopt;
      std::vector<std::pair<std::string, std::pair<std::string, std::string>>> args;
      while (stop == "<" + kDsml + "parameter") {
        Read p = ReadUntilStop(index, text, {"/" + kDsml + "parameter"});
        index = p.index;
        std::string name, flag, value;
        if (!RefParam(p.content, &name, &flag, &value)) return std::nullopt;
        for (const auto& a2 : args)
          if (a2.first == name) return std::nullopt;
        args.push_back({name, {value, flag}});
        Read g = ReadUntilStop(index, text, {"<" + kDsml + "parameter", "</" + kDsml + "invoke"});
        index = g.index;
        stop = g.stop;
        if (g.content != ">\n") return std::nullopt;
      }
      std::string arguments = "{";
      for (size_t i = 0; i < args.size(); ++i) {
        if (i) arguments += ", ";
        arguments += PyJson(args[i].first) + ": " +
                     (args[i].second.second == "true" ? PyJson(args[i].second.first)
                                                      : args[i].second.first);
      }
      arguments += "}";
      tool_calls.push_back(
          {{"type", "function"}, {"function", {{"name", tool_name}, {"arguments", arguments}}}});
    }
    Read t = ReadUntilStop(index, text, {kEos});
    index = t.index;
    stop = t.stop;
    if (!t.content.empty()) return std::nullopt;
  }
  if (index != text.size() || !(stop == kEos || stop.empty())) return std::nullopt;
  for (const std::string& sp : {kBos, kEos, std::string("<think>"), std::string("</think>"), kDsml}) {
    if (summary.find(sp) != std::string::npos || reasoning.find(sp) != std::string::npos)
      return std::nullopt;
  }
  return json{{"role", "assistant"},
              {"content", summary},
              {"reasoning_content", reasoning},
              {"tool_calls", tool_calls}};
}

bool ValidUtf8(const std::string& s) {
  json j = s;
  try {
    (void)j.dump();
    return true;
  } catch (...) {
    return false;
  }
}

// ---- helpers ----

struct ParseRun {
  std::vector<DsmlEvent> events;  // coalesced
  std::vector<DecodeError> errors;
};

ParseRun ParseChunked(const std::string& text, const DsmlParserOptions& options,
                 const std::vector<size_t>& sizes) {
  DsmlParser parser(options);
  std::vector<DsmlEvent> events;
  size_t pos = 0, k = 0;
  while (pos < text.size()) {
    size_t n = sizes.empty() ? text.size() : sizes[k++ % sizes.size()];
    n = std::max<size_t>(1, std::min(n, text.size() - pos));
    parser.Feed(std::string_view(text).substr(pos, n));
    for (auto& e : parser.TakeEvents()) events.push_back(std::move(e));
    pos += n;
  }
  parser.Finish();
  for (auto& e : parser.TakeEvents()) events.push_back(std::move(e));
  return {CoalesceEvents(events), parser.errors()};
}

ParseRun ParseWhole(const std::string& text, DsmlMode mode, bool thinking,
               const json* tools = nullptr) {
  DsmlParserOptions o;
  o.mode = mode;
  o.thinking_mode = thinking;
  o.tools = tools;
  return ParseChunked(text, o, {});
}

std::vector<DecodeErrorKind> Kinds(const ParseRun& r) {
  std::vector<DecodeErrorKind> k;
  for (const auto& e : r.errors) k.push_back(e.kind);
  return k;
}

bool HasKind(const ParseRun& r, DecodeErrorKind kind) {
  for (const auto& e : r.errors)
    if (e.kind == kind) return true;
  return false;
}

long CountKind(const ParseRun& r, DecodeErrorKind kind) {
  long n = 0;
  for (const auto& e : r.errors) n += e.kind == kind;
  return n;
}

std::string KindList(const ParseRun& r) {
  std::string s;
  for (const auto& e : r.errors) s += std::string(DecodeErrorKindName(e.kind)) + " ";
  return s;
}

std::vector<json> ToolCalls(const ParseRun& r) {
  std::vector<json> calls;
  for (const auto& e : r.events)
    if (e.kind == Kind::kToolCallEnd) calls.push_back({{"name", e.text}, {"arguments", e.value}});
  return calls;
}

std::string Text(const ParseRun& r, Kind kind) {
  std::string s;
  for (const auto& e : r.events)
    if (e.kind == kind) s += e.text;
  return s;
}

std::string Label(const Case& c) {
  return c.id + (c.mutation.empty() ? "" : " (mutation " + c.mutation + ")");
}

// ---- the conformance vectors ----

TEST(V4Decode, PublicVectors) {
  ASSERT_FALSE(Cases().empty());
  int passed = 0;
  for (const Case& c : Cases()) {
    auto result = DecodeCompletion(c.completion, c.thinking);
    bool ok;
    if (c.expect_error) {
      ok = std::holds_alternative<DecodeError>(result);
      EXPECT_TRUE(ok) << Label(c) << ": accepted, expected an error; got "
                      << std::get<json>(result).dump();
    } else if (auto* err = std::get_if<DecodeError>(&result)) {
      ok = false;
      ADD_FAILURE() << Label(c) << ": rejected (" << DecodeErrorKindName(err->kind) << " @"
                    << err->offset << ": " << err->message << ")";
    } else {
      ok = std::get<json>(result) == c.expected;
      EXPECT_TRUE(ok) << Label(c) << ":\n got      " << std::get<json>(result).dump()
                      << "\n expected " << c.expected.dump();
    }
    passed += ok;
  }
  std::printf("decoding_public.jsonl: %d/%zu pass\n", passed, Cases().size());
}

TEST(V4Decode, OracleAgreesOnPublicVectors) {
  // The port of the reference is itself checked against the vectors.
  for (const Case& c : Cases()) {
    auto ref = ReferenceDecode(c.completion, c.thinking);
    if (c.expect_error) {
      EXPECT_FALSE(ref.has_value()) << Label(c);
    } else {
      ASSERT_TRUE(ref.has_value()) << Label(c);
      EXPECT_EQ(*ref, c.expected) << Label(c);
    }
  }
}

TEST(V4Decode, ErrorKindsOfPublicMutations) {
  // The kind reported for each mutation family, for the CLI and reward shaping.
  const std::map<std::string, DecodeErrorKind> kinds = {
      {"unclosed_invoke", DecodeErrorKind::kUnclosedBlock},
      {"drop_close_block", DecodeErrorKind::kUnclosedBlock},
      {"truncated", DecodeErrorKind::kUnclosedBlock},
      {"bad_invoke_name", DecodeErrorKind::kMalformedBlock},
      {"bad_string_flag", DecodeErrorKind::kMalformedParameter},
      {"no_think_end", DecodeErrorKind::kMissingThinkEnd},
      {"text_after_calls", DecodeErrorKind::kTextAfterToolCalls},
  };
  for (const Case& c : Cases()) {
    if (!c.expect_error || !kinds.count(c.mutation)) continue;
    auto result = DecodeCompletion(c.completion, c.thinking);
    ASSERT_TRUE(std::holds_alternative<DecodeError>(result)) << Label(c);
    EXPECT_STREQ(DecodeErrorKindName(std::get<DecodeError>(result).kind),
                 DecodeErrorKindName(kinds.at(c.mutation)))
        << Label(c) << ": " << std::get<DecodeError>(result).message;
  }
}

// Strict mode against the reference port on many variants of every completion:
// every truncation, and splices of markers at many positions.
TEST(V4Decode, StrictModeEqualsReferenceOnVariants) {
  const std::vector<std::string> inserts = {
      "<｜end▁of▁sentence｜>", "</think>", "<think>", "\n\n<｜DSML｜tool_calls>\n",
      "<｜DSML｜invoke name=\"x\">\n", "</｜DSML｜invoke>\n", "</｜DSML｜tool_calls>",
      "<｜DSML｜parameter name=\"p\" string=\"true\">v</｜DSML｜parameter>\n", "\n", ">", "<",
      "｜DSML｜", "</｜DSML｜parameter>", "\" string=\"false\">", "<\n"};
  std::mt19937 rng(1234);
  size_t checked = 0, accepted = 0;
  auto check = [&](const std::string& text, bool thinking, const std::string& what) {
    if (!ValidUtf8(text)) return;
    auto ref = ReferenceDecode(text, thinking);
    auto got = DecodeCompletion(text, thinking);
    ++checked;
    if (ref) {
      ++accepted;
      ASSERT_TRUE(std::holds_alternative<json>(got))
          << what << ": reference accepts, strict rejects: "
          << std::get<DecodeError>(got).message << "\n" << json(text).dump();
      ASSERT_EQ(std::get<json>(got), *ref) << what << "\n" << json(text).dump();
    } else {
      ASSERT_TRUE(std::holds_alternative<DecodeError>(got))
          << what << ": reference rejects, strict accepts\n" << json(text).dump();
    }
  };
  for (const Case& c : Cases()) {
    for (size_t cut = 0; cut <= c.completion.size(); ++cut)
      check(c.completion.substr(0, cut), c.thinking, Label(c) + " cut at " + std::to_string(cut));
    for (int k = 0; k < 40; ++k) {
      std::string t = c.completion;
      int edits = 1 + rng() % 2;
      for (int e = 0; e < edits; ++e) {
        size_t at = rng() % (t.size() + 1);
        if (rng() % 3 == 0 && !t.empty()) {
          size_t len = 1 + rng() % 8;
          t.erase(std::min(at, t.size() - 1), len);
        } else {
          t.insert(std::min(at, t.size()), inserts[rng() % inserts.size()]);
        }
      }
      check(t, c.thinking, Label(c) + " spliced");
      check(t, !c.thinking, Label(c) + " spliced, other mode");
    }
  }
  std::printf("strict vs reference: %zu variants, %zu accepted\n", checked, accepted);
}

// ---- chunking invariance ----

TEST(V4Decode, ChunkingDoesNotChangeEvents) {
  std::mt19937 rng(42);
  std::vector<std::string> texts;
  for (const Case& c : Cases()) texts.push_back(c.completion);
  // Plus some with invalid UTF-8 and split multi-byte characters.
  texts.push_back("abc\xE4\xB8</think>x\xFF<｜end▁of▁sentence｜>");
  texts.push_back("</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\xC0\">\n");
  for (size_t t = 0; t < texts.size(); ++t) {
    for (bool thinking : {false, true}) {
      for (DsmlMode mode : {DsmlMode::kStrict, DsmlMode::kTolerant}) {
        DsmlParserOptions o;
        o.thinking_mode = thinking;
        o.mode = mode;
        ParseRun whole = ParseChunked(texts[t], o, {});
        std::vector<std::vector<size_t>> splits = {{1}, {2}, {7}};
        for (int r = 0; r < 4; ++r) {
          std::vector<size_t> sizes;
          for (int i = 0; i < 64; ++i) sizes.push_back(1 + rng() % 23);
          splits.push_back(sizes);
        }
        for (const auto& sizes : splits) {
          ParseRun part = ParseChunked(texts[t], o, sizes);
          std::string where = "text " + std::to_string(t) + (t < Cases().size() ? " " + Label(Cases()[t]) : "") +
                              (thinking ? " thinking" : " chat") +
                              (mode == DsmlMode::kStrict ? " strict" : " tolerant") + " chunk " +
                              std::to_string(sizes[0]);
          ASSERT_EQ(DescribeEvents(part.events), DescribeEvents(whole.events)) << where;
          ASSERT_EQ(part.errors.size(), whole.errors.size()) << where;
          for (size_t i = 0; i < part.errors.size(); ++i) {
            EXPECT_EQ(part.errors[i].kind, whole.errors[i].kind) << where;
            EXPECT_EQ(part.errors[i].offset, whole.errors[i].offset) << where;
          }
        }
      }
    }
  }
}

TEST(V4Decode, StreamingEmitsTextBeforeTheTurnEnds) {
  DsmlParser parser({.thinking_mode = true});
  parser.Feed("Let me think");
  auto ev = parser.TakeEvents();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, Kind::kReasoning);
  EXPECT_EQ(ev[0].text, "Let me think");
  parser.Feed(". </thi");  // a marker split across chunks is held back
  ev = parser.TakeEvents();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, ". ");
  parser.Feed("nk>Answer\n");
  ev = parser.TakeEvents();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, Kind::kContent);
  EXPECT_EQ(ev[0].text, "Answer");  // "\n" could start "\n\n<｜DSML｜tool_calls"
  parser.Feed("\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"false\">1</｜DSML｜parameter>\n");
  ev = parser.TakeEvents();
  ASSERT_EQ(ev.size(), 2u) << DescribeEvents(ev);
  EXPECT_EQ(ev[0].kind, Kind::kToolCallStart);
  EXPECT_EQ(ev[0].text, "f");
  EXPECT_EQ(ev[1].kind, Kind::kParameter);
  EXPECT_EQ(ev[1].text, "a");
  EXPECT_EQ(ev[1].value, "1");
  EXPECT_FALSE(ev[1].is_string);
  parser.Feed("</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sen");
  ev = parser.TakeEvents();
  ASSERT_EQ(ev.size(), 1u) << DescribeEvents(ev);
  EXPECT_EQ(ev[0].kind, Kind::kToolCallEnd);
  EXPECT_EQ(ev[0].value, "{\"a\": 1}");
  parser.Feed("tence｜>");
  parser.Finish();
  ev = parser.TakeEvents();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, Kind::kEndOfTurn);
  EXPECT_FALSE(parser.failed());
}

// ---- tolerant mode, one test per error kind ----

const std::string kCallsOpen = "\n\n<｜DSML｜tool_calls>\n";
const std::string kCallsClose = "</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
std::string Param(const std::string& name, const std::string& value, bool str = true) {
  return "<｜DSML｜parameter name=\"" + name + "\" string=\"" + (str ? "true" : "false") + "\">" +
         value + "</｜DSML｜parameter>\n";
}
std::string Invoke(const std::string& name, const std::string& params) {
  return "<｜DSML｜invoke name=\"" + name + "\">\n" + params + "</｜DSML｜invoke>\n";
}

const json& Tools() {
  static const json tools = json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {
      "type": "object",
      "properties": {"city": {"type": "string"},
                     "unit": {"type": "string", "enum": ["c", "f"]},
                     "days": {"type": "integer", "minimum": 1},
                     "tags": {"type": "array", "items": {"type": "string"}},
                     "opts": {"type": "object", "properties": {"x": {"type": "boolean"}},
                              "additionalProperties": false}},
      "required": ["city"],
      "additionalProperties": false}}},
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
  ])");
  return tools;
}

TEST(V4DecodeTolerant, ValidCompletionHasNoErrorsAndSameResultAsStrict) {
  for (const Case& c : Cases()) {
    if (c.expect_error) continue;
    ParseRun strict = ParseWhole(c.completion, DsmlMode::kStrict, c.thinking);
    ParseRun tolerant = ParseWhole(c.completion, DsmlMode::kTolerant, c.thinking);
    ASSERT_TRUE(strict.errors.empty()) << Label(c);
    // Completions without <｜end▁of▁sentence｜> after the block are accepted by
    // the reference; tolerant mode still notes nothing for them.
    EXPECT_EQ(DescribeEvents(tolerant.events), DescribeEvents(strict.events)) << Label(c);
    EXPECT_TRUE(tolerant.errors.empty()) << Label(c) << ": " << KindList(tolerant);
  }
}

TEST(V4DecodeTolerant, TolerantReportsSomethingForEveryRejectedVector) {
  for (const Case& c : Cases()) {
    if (!c.expect_error) continue;
    ParseRun r = ParseWhole(c.completion, DsmlMode::kTolerant, c.thinking);
    EXPECT_FALSE(r.errors.empty()) << Label(c);
    EXPECT_EQ(std::count_if(r.events.begin(), r.events.end(),
                            [](const DsmlEvent& e) { return e.kind == Kind::kEndOfTurn; }),
              1)
        << Label(c);
  }
}

TEST(V4DecodeTolerant, UnclosedInvokeIsClosedAtTheNextInvoke) {
  std::string text = kCallsOpen + "<｜DSML｜invoke name=\"a\">\n" + Param("x", "1") + "\n" +
                     Invoke("b", Param("y", "2", false)) + kCallsClose;
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
  EXPECT_TRUE(HasKind(r, DecodeErrorKind::kUnclosedBlock)) << KindList(r);
  auto calls = ToolCalls(r);
  ASSERT_EQ(calls.size(), 2u) << DescribeEvents(r.events);
  EXPECT_EQ(calls[0], json({{"name", "a"}, {"arguments", "{\"x\": \"1\"}"}}));
  EXPECT_EQ(calls[1], json({{"name", "b"}, {"arguments", "{\"y\": 2}"}}));
  auto strict = DecodeCompletion(text, false);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(strict));
  EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kUnclosedBlock);
}

TEST(V4DecodeTolerant, UnclosedParameterAndToolCallsBlock) {
  std::string text = kCallsOpen + "<｜DSML｜invoke name=\"a\">\n" +
                     "<｜DSML｜parameter name=\"x\" string=\"true\">one\n" + Param("y", "two") +
                     "</｜DSML｜invoke>\n<｜end▁of▁sentence｜>";
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
  EXPECT_GE(CountKind(r, DecodeErrorKind::kUnclosedBlock), 2)
      << KindList(r);
  auto calls = ToolCalls(r);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0]["arguments"], "{\"x\": \"one\\n\", \"y\": \"two\"}");
}

TEST(V4DecodeTolerant, UnknownTool) {
  std::string text = kCallsOpen + Invoke("launch_rockets", Param("n", "3", false)) + kCallsClose;
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false, &Tools());
  EXPECT_EQ(Kinds(r), std::vector<DecodeErrorKind>{DecodeErrorKind::kUnknownTool});
  EXPECT_EQ(ToolCalls(r).size(), 1u);  // still reported, so the harness can answer it
  auto strict = DecodeCompletion(text, false, &Tools());
  ASSERT_TRUE(std::holds_alternative<DecodeError>(strict));
  EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kUnknownTool);
  // Without tools there is nothing to check against.
  EXPECT_TRUE(std::holds_alternative<json>(DecodeCompletion(text, false)));
}

TEST(V4DecodeTolerant, MalformedParameter) {
  std::string text = kCallsOpen +
                     Invoke("get_weather", "<｜DSML｜parameter name=\"city\" string=\"yes\">Paris</｜DSML｜parameter>\n" +
                                               Param("days", "two", false)) +
                     kCallsClose;
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
  EXPECT_EQ(CountKind(r, DecodeErrorKind::kMalformedParameter), 2)
      << KindList(r);
  auto calls = ToolCalls(r);
  ASSERT_EQ(calls.size(), 1u);
  // The bad flag is recovered as a string (the value is not JSON); "two" is kept verbatim.
  EXPECT_EQ(calls[0]["arguments"], "{\"city\": \"Paris\", \"days\": two}");
  // Strict: the bad flag is a format error; non-JSON with string="false" is
  // only an error when tools (schemas) are given, like the reference.
  auto strict = DecodeCompletion(text, false);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(strict));
  EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kMalformedParameter);
  std::string only_json = kCallsOpen + Invoke("get_weather", Param("days", "two", false)) + kCallsClose;
  EXPECT_TRUE(std::holds_alternative<json>(DecodeCompletion(only_json, false)));
  auto with_tools = DecodeCompletion(only_json, false, &Tools());
  ASSERT_TRUE(std::holds_alternative<DecodeError>(with_tools));
  EXPECT_EQ(std::get<DecodeError>(with_tools).kind, DecodeErrorKind::kMalformedParameter);
}

TEST(V4DecodeTolerant, DuplicateParameterKeepsTheFirst) {
  std::string text = kCallsOpen + Invoke("f", Param("a", "1") + Param("a", "2") + Param("b", "3")) +
                     kCallsClose;
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
  EXPECT_EQ(Kinds(r), std::vector<DecodeErrorKind>{DecodeErrorKind::kDuplicateParameter});
  EXPECT_EQ(ToolCalls(r).at(0)["arguments"], "{\"a\": \"1\", \"b\": \"3\"}");
  auto strict = DecodeCompletion(text, false);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(strict));
  EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kDuplicateParameter);
}

TEST(V4DecodeTolerant, SchemaMismatch) {
  struct Sub {
    std::string params;
    bool ok;
  };
  const std::vector<Sub> subs = {
      {Param("city", "Paris"), true},
      {Param("city", "Paris") + Param("unit", "c") + Param("days", "3", false) +
           Param("tags", "[\"a\"]", false) + Param("opts", "{\"x\": true}", false),
       true},
      {Param("city", "Paris") + Param("days", "3.0", false), true},  // integral number
      {Param("unit", "c"), false},                                  // required city missing
      {Param("city", "1", false), false},                           // wrong type
      {Param("city", "Paris") + Param("unit", "kelvin"), false},    // not in enum
      {Param("city", "Paris") + Param("days", "0", false), false},  // below minimum
      {Param("city", "Paris") + Param("days", "2.5", false), false},
      {Param("city", "Paris") + Param("tags", "[1]", false), false},
      {Param("city", "Paris") + Param("opts", "{\"y\": 1}", false), false},
      {Param("city", "Paris") + Param("extra", "1"), false},  // additionalProperties false
  };
  for (const Sub& s : subs) {
    std::string text = kCallsOpen + Invoke("get_weather", s.params) + kCallsClose;
    ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false, &Tools());
    if (s.ok) {
      EXPECT_TRUE(r.errors.empty()) << s.params << ": " << KindList(r);
    } else {
      EXPECT_EQ(Kinds(r), std::vector<DecodeErrorKind>{DecodeErrorKind::kSchemaMismatch})
          << s.params << ": " << KindList(r);
      EXPECT_EQ(ToolCalls(r).size(), 1u);
      auto strict = DecodeCompletion(text, false, &Tools());
      ASSERT_TRUE(std::holds_alternative<DecodeError>(strict)) << s.params;
      EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kSchemaMismatch);
    }
  }
}

TEST(V4DecodeTolerant, CheckJsonSchemaCommonCases) {
  json schema = json::parse(R"({"anyOf": [{"type": "string"}, {"type": "null"}]})");
  EXPECT_FALSE(CheckJsonSchema("x", schema));
  EXPECT_FALSE(CheckJsonSchema(nullptr, schema));
  EXPECT_TRUE(CheckJsonSchema(1, schema));
  EXPECT_FALSE(CheckJsonSchema(1, json::parse(R"({"type": ["integer", "string"]})")));
  EXPECT_TRUE(CheckJsonSchema(true, json::parse(R"({"type": ["integer", "string"]})")));
  EXPECT_TRUE(CheckJsonSchema("abcd", json::parse(R"({"type": "string", "maxLength": 3})")));
  EXPECT_FALSE(CheckJsonSchema("日本語", json::parse(R"({"type": "string", "maxLength": 3})")));
  EXPECT_TRUE(CheckJsonSchema(json::array({1, 2}), json::parse(R"({"maxItems": 1})")));
  EXPECT_FALSE(CheckJsonSchema(json::object(), json(true)));
  EXPECT_TRUE(CheckJsonSchema(json::object(), json(false)));
}

TEST(V4DecodeTolerant, MissingThinkEnd) {
  std::string text = "reasoning without end" + kCallsOpen + Invoke("f", Param("a", "1")) + kCallsClose;
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, true);
  EXPECT_EQ(Kinds(r), std::vector<DecodeErrorKind>{DecodeErrorKind::kMissingThinkEnd});
  EXPECT_EQ(Text(r, Kind::kReasoning), "reasoning without end");
  EXPECT_EQ(ToolCalls(r).size(), 1u);
  ParseRun r2 = ParseWhole("only reasoning<｜end▁of▁sentence｜>", DsmlMode::kTolerant, true);
  EXPECT_EQ(Kinds(r2), std::vector<DecodeErrorKind>{DecodeErrorKind::kMissingThinkEnd});
}

TEST(V4DecodeTolerant, TextAfterToolCallsAndAfterEndOfSentence) {
  std::string text = kCallsOpen + Invoke("f", Param("a", "1")) +
                     "</｜DSML｜tool_calls>trailing<｜end▁of▁sentence｜>more";
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
  EXPECT_EQ(Kinds(r), (std::vector<DecodeErrorKind>{DecodeErrorKind::kTextAfterToolCalls,
                                                    DecodeErrorKind::kTextAfterEndOfSentence}));
  EXPECT_EQ(ToolCalls(r).size(), 1u);
  auto strict = DecodeCompletion("Hi.<｜end▁of▁sentence｜>junk", false);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(strict));
  EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kTextAfterEndOfSentence);
  EXPECT_EQ(std::get<DecodeError>(strict).offset, std::string("Hi.<｜end▁of▁sentence｜>").size());
}

TEST(V4DecodeTolerant, SpecialTokenInContentIsDropped) {
  ParseRun r = ParseWhole("a<think>b</think>c<｜end▁of▁sentence｜>", DsmlMode::kTolerant, false);
  EXPECT_EQ(Kinds(r), (std::vector<DecodeErrorKind>{DecodeErrorKind::kSpecialTokenInContent,
                                                    DecodeErrorKind::kSpecialTokenInContent}));
  EXPECT_EQ(Text(r, Kind::kContent), "abc");
  EXPECT_EQ(r.errors[0].offset, 1u);
  auto strict = DecodeCompletion("a<think>b<｜end▁of▁sentence｜>", false);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(strict));
  EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kSpecialTokenInContent);
  EXPECT_EQ(std::get<DecodeError>(strict).offset, 1u);
  // A structural error wins over the special token, as in the reference.
  auto both = DecodeCompletion("a<think>b", false);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(both));
  EXPECT_EQ(std::get<DecodeError>(both).kind, DecodeErrorKind::kMissingEndOfSentence);
}

TEST(V4DecodeTolerant, MissingEndOfSentence) {
  ParseRun r = ParseWhole("no end", DsmlMode::kTolerant, false);
  EXPECT_EQ(Kinds(r), std::vector<DecodeErrorKind>{DecodeErrorKind::kMissingEndOfSentence});
  EXPECT_EQ(Text(r, Kind::kContent), "no end");
  EXPECT_EQ(r.events.back().kind, Kind::kEndOfTurn);
}

TEST(V4DecodeTolerant, MalformedInvokeHeaderIsSalvagedOrSkipped) {
  std::string text = kCallsOpen + "<｜DSML｜invoke nam=\"a\">\n" + Param("x", "1") + "</｜DSML｜invoke>\n" +
                     Invoke("b", Param("y", "2")) + "<｜DSML｜invoke  name=\"c\" extra>\n" +
                     Param("z", "3") + "</｜DSML｜invoke>\n" + kCallsClose;
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
  EXPECT_EQ(CountKind(r, DecodeErrorKind::kMalformedBlock), 2)
      << KindList(r);
  auto calls = ToolCalls(r);
  ASSERT_EQ(calls.size(), 2u) << DescribeEvents(r.events);  // "a" has no readable name
  EXPECT_EQ(calls[0]["name"], "b");
  EXPECT_EQ(calls[1]["name"], "c");
}

// ---- invalid UTF-8 ----

TEST(V4Decode, InvalidUtf8) {
  const std::vector<std::pair<std::string, size_t>> bad = {
      {"ab\xFF<｜end▁of▁sentence｜>", 2},
      {"ab\xC0\xAF<｜end▁of▁sentence｜>", 2},          // overlong
      {"ab\xED\xA0\x80<｜end▁of▁sentence｜>", 2},      // surrogate
      {"ab\xE4\xB8<｜end▁of▁sentence｜>", 2},          // truncated sequence
      {"ab<｜end▁of▁sentence｜>\xE4", 2 + kEos.size()},  // truncated at the very end
      {"ab\xF4\x90\x80\x80<｜end▁of▁sentence｜>", 2},  // above U+10FFFF
  };
  for (const auto& [text, offset] : bad) {
    auto strict = DecodeCompletion(text, false);
    ASSERT_TRUE(std::holds_alternative<DecodeError>(strict)) << "offset " << offset;
    EXPECT_EQ(std::get<DecodeError>(strict).kind, DecodeErrorKind::kInvalidUtf8);
    EXPECT_EQ(std::get<DecodeError>(strict).offset, offset);
    ParseRun r = ParseWhole(text, DsmlMode::kTolerant, false);
    ASSERT_FALSE(r.errors.empty());
    EXPECT_EQ(r.errors[0].kind, DecodeErrorKind::kInvalidUtf8);
    EXPECT_EQ(r.errors[0].offset, offset);
    if (offset == 2) EXPECT_NE(Text(r, Kind::kContent).find("\xEF\xBF\xBD"), std::string::npos);
  }
  // Offsets after a replaced byte still point into the original input.
  ParseRun r = ParseWhole("\xFFx<think>", DsmlMode::kTolerant, false);
  ASSERT_EQ(r.errors.size(), 3u) << KindList(r);
  EXPECT_EQ(r.errors[1].kind, DecodeErrorKind::kSpecialTokenInContent);
  EXPECT_EQ(r.errors[1].offset, 2u);
  // Valid multi-byte characters split across chunks are fine.
  std::string ok = "</think>北京🚀<｜end▁of▁sentence｜>";
  DsmlParserOptions o{.thinking_mode = true};
  ParseRun split = ParseChunked(ok, o, {1});
  EXPECT_TRUE(split.errors.empty()) << KindList(split);
  EXPECT_EQ(Text(split, Kind::kContent), "北京🚀");
}

// ---- completions cut off mid-DSML ----

TEST(V4Decode, CutOffMidDsml) {
  std::string full = "</think>Sure." + kCallsOpen + Invoke("a", Param("x", "1") + Param("y", "[1]", false)) +
                     Invoke("b", Param("z", "北京")) + kCallsClose;
  const size_t block = full.find("\n\n<｜DSML｜tool_calls");
  const size_t block_end = full.find("</｜DSML｜tool_calls>");
  for (size_t cut = block + 6; cut < block_end; ++cut) {  // from "\n\n<｜" on
    std::string text = full.substr(0, cut);
    ParseRun r = ParseWhole(text, DsmlMode::kTolerant, true);
    EXPECT_TRUE(HasKind(r, DecodeErrorKind::kUnclosedBlock) || HasKind(r, DecodeErrorKind::kInvalidUtf8))
        << "cut at " << cut << ": " << KindList(r);
    EXPECT_EQ(Text(r, Kind::kContent), "Sure.");
    EXPECT_EQ(r.events.back().kind, Kind::kEndOfTurn);
    // Strict mode: rejected with unclosed_block, except at the block boundaries
    // where the reference accepts a cut-off turn (checked against it above).
    auto strict = DecodeCompletion(text, true);
    if (auto* e = std::get_if<DecodeError>(&strict)) {
      EXPECT_TRUE(e->kind == DecodeErrorKind::kUnclosedBlock || e->kind == DecodeErrorKind::kInvalidUtf8 ||
                  e->kind == DecodeErrorKind::kMissingEndOfSentence)
          << "cut at " << cut << ": " << DecodeErrorKindName(e->kind);
    }
  }
  // Cut right after the first invoke: it is recovered whole.
  std::string text = full.substr(0, full.find("<｜DSML｜invoke name=\"b\""));
  ParseRun r = ParseWhole(text, DsmlMode::kTolerant, true);
  ASSERT_EQ(ToolCalls(r).size(), 1u);
  EXPECT_EQ(ToolCalls(r)[0]["arguments"], "{\"x\": \"1\", \"y\": [1]}");
}

TEST(V4Decode, ErrorKindNames) {
  EXPECT_STREQ(DecodeErrorKindName(DecodeErrorKind::kUnclosedBlock), "unclosed_block");
  EXPECT_STREQ(DecodeErrorKindName(DecodeErrorKind::kSchemaMismatch), "schema_mismatch");
  EXPECT_STREQ(DecodeErrorKindName(DecodeErrorKind::kTextAfterEndOfSentence), "text_after_end_of_sentence");
}

}  // namespace
}  // namespace paddock::v4
