// Token-in-token-out episode context and the context manager (policy/v4/context),
// on the multi-turn tool conversations of tests/data/v4/encoding_public.jsonl
// and the task-token conversations of encoding_tasks_public.jsonl, with the
// real DeepSeek tokenizer (skipped when tokenizer.json is not installed).
//
// What the vector test shows, per conversation: the policy turns are fed as
// ids (the tokenizer's ids for the text the reference renders for that turn),
// observations are appended as rendered suffixes; then the kept ids must decode
// to exactly the rendered text and be what is sent to the backend, and where
// they differ from tokenizing the whole text at once (BPE merging across a
// seam between segments) the case is counted and printed.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#ifdef PADDOCK_HAVE_V4_DECODE
#include "policy/v4/decode/decoder.h"
#endif
#include "policy/v4/context/context_manager.h"
#include "policy/v4/context/episode_context.h"
#include "policy/v4/context/observation_cut.h"
#include "policy/v4/context/stop_reason.h"
#include "policy/v4/context/suffix_render.h"
#include "policy/v4/encode/encoder.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace paddock::v4 {
namespace {

using ojson = nlohmann::ordered_json;

std::shared_ptr<const Tokenizer> Tok() {
  static std::shared_ptr<const Tokenizer> tok = [] {
    auto t = Tokenizer::Load(Tokenizer::DefaultPath());
    return t.ok() ? t.value() : nullptr;
  }();
  return tok;
}

#define REQUIRE_TOKENIZER()                                                              \
  if (!Tok()) GTEST_SKIP() << "no tokenizer at " << Tokenizer::DefaultPath()             \
                           << " (scripts/install-deps.sh fetches it)"

// The cases of tests/data/v4/`file` with an assistant message (and a tool
// message, when `need_tool`).
std::vector<ojson> Conversations(const std::string& file, bool need_tool) {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/" + file);
  std::vector<ojson> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ojson c = ojson::parse(line);
    bool tool = false, assistant = false;
    for (const ojson& m : c["messages"]) {
      tool |= m["role"] == "tool";
      assistant |= m["role"] == "assistant";
    }
    if ((tool || !need_tool) && assistant) out.push_back(std::move(c));
  }
  return out;
}

std::vector<ojson> ToolConversations() { return Conversations("encoding_public.jsonl", true); }
// Task tokens on one user message, often followed by the task's answer.
std::vector<ojson> TaskConversations() { return Conversations("encoding_tasks_public.jsonl", false); }

ojson WithMessages(const ojson& c, size_t n) {
  ojson r = c;
  r.erase("expected_prompt");
  r.erase("id");
  r["messages"] = ojson::array();
  for (size_t i = 0; i < n; ++i) r["messages"].push_back(c["messages"][i]);
  return r;
}

bool HasTools(const ojson& c) {
  for (const ojson& m : c["messages"])
    if (m.contains("tools") && !m["tools"].is_null()) return true;
  return false;
}

// Reasoning of earlier turns is dropped on a new user turn: the one setting in
// which the format is not append-only.
bool DropsReasoning(const ojson& c) {
  return c.value("thinking_mode", "chat") == "thinking" && c.value("drop_thinking", true) && !HasTools(c);
}

std::string Piece(const Tokenizer& tok, uint32_t id) {
  std::string s = tok.Decode(std::span<const uint32_t>(&id, 1));
  return nlohmann::json(s).dump();
}

// ---------------------------------------------------------------------------
// The prefix property, on the vectors: render(conversation[:k]) is a prefix of
// render(conversation) at every turn boundary k.

void ExpectRenderPrefixProperty(const std::vector<ojson>& cases, const char* what) {
  int checked = 0, violations = 0, unexpected = 0;
  for (const ojson& c : cases) {
    const size_t n = c["messages"].size();
    for (size_t k = 1; k < n; ++k) {
      // Turn boundaries: before an assistant turn, or after a run of tool results.
      const ojson& m = c["messages"][k];
      bool boundary = m["role"] == "assistant" || (c["messages"][k - 1]["role"] == "tool" && m["role"] != "tool");
      if (!boundary) continue;
      auto check = CheckRenderPrefix(WithMessages(c, k), WithMessages(c, n));
      ASSERT_TRUE(check.ok()) << c["id"] << ": " << check.status().ToString();
      ++checked;
      if (check->holds) continue;
      ++violations;
      bool expected = DropsReasoning(c);
      if (!expected) ++unexpected;
      std::printf("  prefix property fails: %s cut at message %zu (thinking, drop_thinking, no tools: %s), "
                  "renders part at byte %zu\n",
                  c["id"].get<std::string>().c_str(), k, expected ? "yes" : "NO", check->first_difference);
    }
  }
  std::printf("render prefix property: %d turn boundaries in %zu %s, %d violations "
              "(all where reasoning is dropped on a new user turn: %s)\n",
              checked, cases.size(), what, violations, unexpected == 0 ? "yes" : "no");
  EXPECT_EQ(unexpected, 0) << "the format must be append-only whenever reasoning is kept";
}

TEST(V4Context, RenderPrefixPropertyOnToolConversations) {
  std::vector<ojson> cases = ToolConversations();
  ASSERT_GT(cases.size(), 50u);
  ExpectRenderPrefixProperty(cases, "tool conversations");
}

TEST(V4Context, RenderPrefixPropertyOnTaskConversations) {
  std::vector<ojson> cases = TaskConversations();
  ASSERT_GT(cases.size(), 50u);
  ExpectRenderPrefixProperty(cases, "task conversations");
}

// ---------------------------------------------------------------------------
// The episode on every multi-turn tool conversation.

struct Replay {
  EpisodeContext ctx;
  std::vector<AppendReport> reports;
};

// Feeds conversation `c` to an EpisodeContext: prompt = messages before the
// first assistant turn; each assistant turn as policy output ids (`encode_turn`
// makes them from the text the reference renders for it); each run of other
// messages as one observation. `on_turn(ctx, text, message)` sees each policy
// turn before it is appended.
template <typename EncodeTurn, typename OnTurn>
Result<Replay> Feed(const ojson& c, EncodeTurn encode_turn, OnTurn on_turn) {
  const ojson& msgs = c["messages"];
  size_t first = 0;
  while (first < msgs.size() && msgs[first]["role"] != "assistant") ++first;
  PADDOCK_ASSIGN_OR_RETURN(EpisodeContext ctx,
                           EpisodeContext::Start(Tok(), WithMessages(c, first), {.verify_with_full_render = true}));
  Replay r{std::move(ctx), {}};
  size_t k = first;
  while (k < msgs.size()) {
    if (msgs[k]["role"] == "assistant") {
      PADDOCK_ASSIGN_OR_RETURN(PrefixCheck turn, CheckRenderPrefix(WithMessages(c, k), WithMessages(c, k + 1)));
      if (!turn.holds) return Error(Code::kInternal, "assistant turn {} is not an extension", k);
      on_turn(r.ctx, turn.suffix(), msgs[k]);
      std::vector<uint32_t> ids = encode_turn(turn.suffix());
      PADDOCK_RETURN_IF_ERROR(r.ctx.AppendPolicyOutput(ids, msgs[k]));
      ++k;
      continue;
    }
    ojson run = ojson::array();
    while (k < msgs.size() && msgs[k]["role"] != "assistant") run.push_back(msgs[k++]);
    PADDOCK_ASSIGN_OR_RETURN(AppendReport rep, r.ctx.AppendObservation(run));
    r.reports.push_back(rep);
  }
  return r;
}

template <typename EncodeTurn>
Result<Replay> Feed(const ojson& c, EncodeTurn encode_turn) {
  return Feed(c, encode_turn, [](const EpisodeContext&, const std::string&, const ojson&) {});
}

// Every observation of a fed conversation was rendered incrementally and
// verified; it equals the full render's suffix wherever the format is
// append-only (only a drop_thinking conversation may break the prefix).
void CheckAppends(const Replay& fed, const ojson& c, const std::string& id, int* appends, int* verified_equal,
                  int* prefix_violations) {
  for (const AppendReport& rep : fed.reports) {
    ++*appends;
    EXPECT_EQ(rep.path, AppendReport::Path::kIncremental) << id;
    ASSERT_TRUE(rep.verified) << id;
    if (!rep.prefix_holds) {
      ++*prefix_violations;
      EXPECT_TRUE(DropsReasoning(c)) << id << ": unexpected prefix violation";
      continue;
    }
    EXPECT_TRUE(rep.matches_full_render) << id << ": incremental render differs from the full render";
    *verified_equal += rep.matches_full_render;
  }
}


void ExpectMaskFollowsSegments(const EpisodeContext& ctx, const std::string& id) {
  ASSERT_EQ(ctx.loss_mask().size(), ctx.ids().size()) << id;
  size_t at = 0;
  for (const Segment& s : ctx.segments()) {
    EXPECT_EQ(s.begin, at) << id;
    at = s.end;
    for (size_t i = s.begin; i < s.end; ++i)
      ASSERT_EQ(ctx.loss_mask()[i], s.kind == SegmentKind::kPolicyOutput ? 1 : 0)
          << id << ": token " << i << " in a " << SegmentKindName(s.kind) << " segment";
  }
  EXPECT_EQ(at, ctx.ids().size()) << id;
}

TEST(V4Context, KeptIdsOnToolConversationsVersusWholeRetokenization) {
  REQUIRE_TOKENIZER();
  const Tokenizer& tok = *Tok();
  std::vector<ojson> cases = ToolConversations();
  int conversations = 0, differing = 0, seams_total = 0, seams_differing = 0, text_equal_render = 0,
      appends = 0, verified_equal = 0, prefix_violations = 0;
  size_t shown = 0;
  for (const ojson& c : cases) {
    const std::string id = c["id"];
    auto fed = Feed(c, [&](const std::string& text) { return tok.Encode(text); });
    ASSERT_TRUE(fed.ok()) << id << ": " << fed.status().ToString();
    const EpisodeContext& ctx = fed->ctx;
    ++conversations;

    // The kept ids decode to exactly the kept text, and they are what is sent.
    ASSERT_EQ(tok.Decode(ctx.ids()), ctx.text()) << id;
    ASSERT_EQ(ctx.BackendInput().data(), ctx.ids().data()) << id;
    ASSERT_EQ(ctx.BackendInput().size(), ctx.ids().size()) << id;
    ExpectMaskFollowsSegments(ctx, id);

    // Incremental renders agree with whole-conversation renders wherever the
    // format is append-only; the text then is the reference's prompt.
    CheckAppends(*fed, c, id, &appends, &verified_equal, &prefix_violations);
    if (::testing::Test::HasFatalFailure()) return;
    if (!DropsReasoning(c)) {
      EXPECT_EQ(ctx.text(), c["expected_prompt"].get<std::string>()) << id;
    }
    if (ctx.text() == c["expected_prompt"].get<std::string>()) ++text_equal_render;

    // Kept ids versus tokenizing the whole text at once.
    std::vector<uint32_t> whole = tok.Encode(ctx.text());
    seams_total += static_cast<int>(ctx.segments().size()) - 1;
    if (whole == ctx.ids()) continue;
    ++differing;
    // Which seams: compare segment by segment against the whole tokenization,
    // aligned on text offsets.
    for (size_t si = 1; si < ctx.segments().size(); ++si) {
      const Segment& s = ctx.segments()[si];
      // The ids of the whole tokenization up to this seam's text offset.
      std::string upto;
      size_t w = 0;
      while (w < whole.size() && upto.size() < s.text_begin) upto += tok.Decode(std::span(&whole[w++], 1));
      if (upto.size() == s.text_begin) continue;  // the whole tokenization also breaks here
      ++seams_differing;
      if (shown++ < 8) {
        std::string kept_near, whole_near;
        for (size_t i = s.begin >= 2 ? s.begin - 2 : 0; i < std::min(s.begin + 2, ctx.ids().size()); ++i)
          kept_near += (i == s.begin ? " | " : " ") + Piece(tok, ctx.ids()[i]);
        for (size_t i = w >= 3 ? w - 3 : 0; i < std::min(w + 1, whole.size()); ++i)
          whole_near += " " + Piece(tok, whole[i]);
        std::printf("  %s: seam %s→%s at byte %zu merges in the whole tokenization\n    kept: %s\n    whole:%s\n",
                    id.c_str(), SegmentKindName(ctx.segments()[si - 1].kind), SegmentKindName(s.kind), s.text_begin,
                    kept_near.c_str(), whole_near.c_str());
      }
    }
  }
  std::printf("token-in-token-out on %d tool conversations: %d seams between segments; kept ids differ from "
              "tokenizing the whole text at once in %d conversations (%d seams); %d observation appends, %d "
              "equal to the full render's suffix, %d where the full render is not append-only; text equals the "
              "reference prompt in %d\n",
              conversations, seams_total, differing, seams_differing, appends, verified_equal, prefix_violations,
              text_equal_render);
  EXPECT_GT(conversations, 50);
}

// The task conversations fed turn by turn: every observation is rendered
// incrementally and equals the full render's suffix wherever the format is
// append-only, and the kept text is the reference's prompt.
TEST(V4Context, TaskConversationsIncrementallyEqualTheFullRender) {
  REQUIRE_TOKENIZER();
  const Tokenizer& tok = *Tok();
  std::vector<ojson> cases = TaskConversations();
  ASSERT_GT(cases.size(), 50u);
  int appends = 0, verified_equal = 0, prefix_violations = 0, text_equal = 0, task_answers = 0;
  for (const ojson& c : cases) {
    const std::string id = c["id"];
    auto fed = Feed(c, [&](const std::string& text) { return tok.Encode(text); },
                    [&](const EpisodeContext& ctx, const std::string&, const ojson&) {
                      task_answers += AnswersTask(ctx.messages());
                    });
    ASSERT_TRUE(fed.ok()) << id << ": " << fed.status().ToString();
    const EpisodeContext& ctx = fed->ctx;
    ASSERT_EQ(tok.Decode(ctx.ids()), ctx.text()) << id;
    ExpectMaskFollowsSegments(ctx, id);
    CheckAppends(*fed, c, id, &appends, &verified_equal, &prefix_violations);
    if (::testing::Test::HasFatalFailure()) return;
    if (!DropsReasoning(c)) EXPECT_EQ(ctx.text(), c["expected_prompt"].get<std::string>()) << id;
    text_equal += ctx.text() == c["expected_prompt"].get<std::string>();
  }
  std::printf("token-in-token-out on %zu task conversations: %d task answers as policy turns; %d observation "
              "appends, %d equal to the full render's suffix, %d where the full render is not append-only; text "
              "equals the reference prompt in %d\n",
              cases.size(), task_answers, appends, verified_equal, prefix_violations, text_equal);
  EXPECT_GT(task_answers, 30);
}

#ifdef PADDOCK_HAVE_V4_DECODE
// The arguments of a call as the decoder gives them back: an object, or the
// single "arguments" parameter the encoder makes of anything else.
nlohmann::json ArgumentsValue(const ojson& arguments) {
  nlohmann::json v = arguments;
  if (arguments.is_string()) {
    v = nlohmann::json::parse(arguments.get<std::string>(), nullptr, false);
    if (v.is_discarded()) v = arguments.get<std::string>();
  }
  if (v.is_object()) return v;
  return {{"arguments", v}};
}

// Whether a message's text holds the DSML marker, which the format cannot
// carry inside content or a string parameter (the decoder reads it as markup).
bool HoldsDsmlMarker(const ojson& m) {
  if (m.value("content", "").find("｜DSML｜") != std::string::npos) return true;
  if (m.contains("tool_calls"))
    for (const ojson& call : m["tool_calls"])
      if (ArgumentsValue(call["function"]["arguments"]).dump().find("｜DSML｜") != std::string::npos)
        return true;
  return false;
}

// Each policy turn, decoded as the context says (with reasoning or, for a
// task's answer, without), gives back its message.
void ExpectTurnsDecode(const std::vector<ojson>& cases, int* turns, int* without_reasoning) {
  for (const ojson& c : cases) {
    const std::string id = c["id"];
    auto fed = Feed(c, [&](const std::string& text) { return Tok()->Encode(text); },
                    [&](const EpisodeContext& ctx, const std::string& text, const ojson& m) {
                      const bool reasoning = ctx.NextTurnHasReasoning();
                      EXPECT_EQ(reasoning, NextTurnHasReasoning(ctx.Request())) << id;
                      if (HoldsDsmlMarker(m)) return;
                      ++*turns;
                      *without_reasoning += c["thinking_mode"] == "thinking" && !reasoning;
                      auto decoded = DecodeCompletion(text, reasoning);
                      if (auto* e = std::get_if<DecodeError>(&decoded)) {
                        ADD_FAILURE() << id << ": " << DecodeErrorKindName(e->kind) << ": " << e->message << "\n"
                                      << nlohmann::json(text).dump();
                        return;
                      }
                      const nlohmann::json& got = std::get<nlohmann::json>(decoded);
                      EXPECT_EQ(got["content"], m.value("content", "")) << id;
                      std::string want_reasoning = reasoning ? m.value("reasoning_content", "") : "";
                      EXPECT_EQ(got["reasoning_content"], want_reasoning) << id;
                      const ojson calls = m.contains("tool_calls") ? m["tool_calls"] : ojson::array();
                      ASSERT_EQ(got["tool_calls"].size(), calls.size()) << id;
                      for (size_t i = 0; i < calls.size(); ++i) {
                        const nlohmann::json& g = got["tool_calls"][i]["function"];
                        EXPECT_EQ(g["name"], calls[i]["function"]["name"]) << id;
                        EXPECT_EQ(nlohmann::json::parse(g["arguments"].get<std::string>()),
                                  ArgumentsValue(calls[i]["function"]["arguments"]))
                            << id << " call " << i;
                      }
                    });
    ASSERT_TRUE(fed.ok()) << id << ": " << fed.status().ToString();
  }
}

TEST(V4Context, PolicyTurnsDecodeBackToTheirMessages) {
  REQUIRE_TOKENIZER();
  int turns = 0, without = 0;
  ExpectTurnsDecode(ToolConversations(), &turns, &without);
  EXPECT_EQ(without, 0);  // no task there: every thinking-mode turn reasons
  int task_turns = 0, task_without = 0;
  ExpectTurnsDecode(TaskConversations(), &task_turns, &task_without);
  std::printf("decoded %d policy turns of tool conversations and %d of task conversations (%d task answers in "
              "thinking mode, decoded without reasoning)\n",
              turns, task_turns, task_without);
  EXPECT_GT(task_without, 10);
}
#endif

// A policy that samples a non-canonical segmentation (one token per character
// here): its ids are kept as generated, so the context differs from any
// retokenization, yet decodes to the same text and is what the backend gets.
TEST(V4Context, PolicyIdsAreNeverRetokenized) {
  REQUIRE_TOKENIZER();
  const Tokenizer& tok = *Tok();
  std::vector<ojson> cases = ToolConversations();
  auto per_char = [&](const std::string& text) {
    std::vector<uint32_t> ids;
    std::string_view eos = kEndOfSentence;
    std::string_view body = text;
    bool ends = body.size() >= eos.size() && body.substr(body.size() - eos.size()) == eos;
    if (ends) body.remove_suffix(eos.size());
    for (size_t i = 0; i < body.size();) {
      size_t len = 1;
      while (i + len < body.size() && (static_cast<unsigned char>(body[i + len]) & 0xC0) == 0x80) ++len;
      for (uint32_t x : tok.Encode(body.substr(i, len))) ids.push_back(x);
      i += len;
    }
    if (ends) ids.push_back(*tok.TokenId(kEndOfSentence));
    return ids;
  };
  int differ = 0;
  for (size_t i = 0; i < 10 && i < cases.size(); ++i) {
    auto fed = Feed(cases[i], per_char);
    ASSERT_TRUE(fed.ok()) << fed.status().ToString();
    const EpisodeContext& ctx = fed->ctx;
    EXPECT_EQ(tok.Decode(ctx.ids()), ctx.text());
    for (const Segment& s : ctx.segments()) {
      if (s.kind != SegmentKind::kPolicyOutput) continue;
      std::vector<uint32_t> kept(ctx.ids().begin() + s.begin, ctx.ids().begin() + s.end);
      EXPECT_EQ(kept, per_char(ctx.text().substr(s.text_begin, s.text_end - s.text_begin)));
    }
    differ += tok.Encode(ctx.text()) != ctx.ids();
  }
  EXPECT_EQ(differ, 10);
}

// ---------------------------------------------------------------------------
// Loss mask and segments.

ojson ToolRequest() {
  return ojson::parse(R"({"thinking_mode":"thinking","drop_thinking":true,"messages":[
    {"role":"system","content":"You are a coding agent.","tools":[{"type":"function","function":{
      "name":"bash","description":"Run a shell command","parameters":{"type":"object",
      "properties":{"cmd":{"type":"string"}},"required":["cmd"]}}}]},
    {"role":"user","content":"List the files."}]})");
}

ojson Call(const std::string& id, const std::string& cmd) {
  return {{"id", id}, {"type", "function"},
          {"function", {{"name", "bash"}, {"arguments", ojson{{"cmd", cmd}}.dump()}}}};
}

// The assistant turn as the reference renders it after `ctx` (what a model
// would generate), tokenized.
std::vector<uint32_t> TurnIds(const EpisodeContext& ctx, const ojson& message) {
  ojson after = ctx.Request();
  after["messages"].push_back(message);
  auto check = CheckRenderPrefix(ctx.Request(), after);
  EXPECT_TRUE(check.ok() && check->holds);
  return Tok()->Encode(check->suffix());
}

TEST(V4Context, LossMaskIsOneExactlyOnPolicyTokens) {
  REQUIRE_TOKENIZER();
  auto ctx = EpisodeContext::Start(Tok(), ToolRequest());
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  const size_t prompt = ctx->size();
  ojson a1 = {{"role", "assistant"}, {"reasoning_content", "Use ls."}, {"content", ""},
              {"tool_calls", ojson::array({Call("c1", "ls"), Call("c2", "pwd")})}};
  std::vector<uint32_t> out1 = TurnIds(*ctx, a1);
  ASSERT_TRUE(ctx->AppendPolicyOutput(out1, a1).ok());
  // Results arrive out of call order; the codec orders them by the calls.
  auto rep = ctx->AppendObservation(ojson::array({{{"role", "tool"}, {"tool_call_id", "c2"}, {"content", "/work"}},
                                                  {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "a.txt"}}}));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_FALSE(rep->closed_turn);
  const Segment& obs = ctx->segments().back();
  std::string obs_text = ctx->text().substr(obs.text_begin);
  EXPECT_EQ(obs_text,
            "<｜User｜><tool_result>a.txt</tool_result>\n\n<tool_result>/work</tool_result><｜Assistant｜><think>");
  ojson a2 = {{"role", "assistant"}, {"reasoning_content", "Done."}, {"content", "a.txt"}};
  std::vector<uint32_t> out2 = TurnIds(*ctx, a2);
  ASSERT_TRUE(ctx->AppendPolicyOutput(out2, a2).ok());

  ASSERT_EQ(ctx->segments().size(), 4u);
  EXPECT_EQ(ctx->segments()[0].kind, SegmentKind::kPrompt);
  EXPECT_EQ(ctx->segments()[1].kind, SegmentKind::kPolicyOutput);
  EXPECT_EQ(ctx->segments()[2].kind, SegmentKind::kObservation);
  EXPECT_EQ(ctx->segments()[3].kind, SegmentKind::kPolicyOutput);
  size_t ones = 0;
  for (uint8_t m : ctx->loss_mask()) ones += m;
  EXPECT_EQ(ones, out1.size() + out2.size());
  for (size_t i = 0; i < prompt; ++i) EXPECT_EQ(ctx->loss_mask()[i], 0);
  ExpectMaskFollowsSegments(*ctx, "tool request");
  // Policy ids are stored verbatim.
  EXPECT_TRUE(std::equal(out1.begin(), out1.end(), ctx->ids().begin() + ctx->segments()[1].begin));
  EXPECT_EQ(Tok()->Decode(ctx->ids()), ctx->text());
  auto full = EncodePrompt(ctx->Request());
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(ctx->text(), *full);
  EXPECT_EQ(ctx->stats().incremental, 1u);
}

TEST(V4Context, UnterminatedPolicyTurnIsClosedOutsideTheLossMask) {
  REQUIRE_TOKENIZER();
  auto ctx = EpisodeContext::Start(Tok(), ToolRequest());
  ASSERT_TRUE(ctx.ok());
  ojson a1 = {{"role", "assistant"}, {"reasoning_content", "x"}, {"content", "partial answer"}};
  std::vector<uint32_t> out = Tok()->Encode("x</think>partial answer");  // cut by a length limit: no EOS
  ASSERT_TRUE(ctx->AppendPolicyOutput(out, a1).ok());
  EXPECT_FALSE(ctx->last_turn_ended());
  auto rep = ctx->AppendObservation(ojson::array({{{"role", "user"}, {"content", "go on"}}}));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->closed_turn);
  const Segment& obs = ctx->segments().back();
  EXPECT_EQ(ctx->ids()[obs.begin], *Tok()->TokenId(kEndOfSentence));
  EXPECT_EQ(ctx->loss_mask()[obs.begin], 0);
  EXPECT_EQ(ctx->text().substr(obs.text_begin), "<｜end▁of▁sentence｜><｜User｜>go on<｜Assistant｜><think>");
  EXPECT_EQ(EncodePrompt(ctx->Request()).value(), ctx->text());
}

TEST(V4Context, BadObservationLeavesTheContextUnchanged) {
  REQUIRE_TOKENIZER();
  auto ctx = EpisodeContext::Start(Tok(), ToolRequest());
  ASSERT_TRUE(ctx.ok());
  ojson a1 = {{"role", "assistant"}, {"content", ""}, {"tool_calls", ojson::array({Call("c1", "ls")})}};
  ASSERT_TRUE(ctx->AppendPolicyOutput(TurnIds(*ctx, a1), a1).ok());
  const size_t before = ctx->size();
  auto bad = ctx->AppendObservation(ojson::array({{{"role", "tool"}, {"tool_call_id", "nope"}, {"content", "x"}}}));
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << bad.status().ToString();
  EXPECT_EQ(ctx->AppendObservation(ojson::array()).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ctx->AppendObservation(ojson::array({{{"role", "wizard"}, {"content", "x"}}})).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(ctx->size(), before);
  // Two policy turns in a row are refused.
  EXPECT_EQ(ctx->AppendPolicyOutput(std::vector<uint32_t>{1}, {{"role", "assistant"}}).code(),
            Code::kFailedPrecondition);
}

// A task message in an episode: the prompt ends with the task's token, the
// answer is decoded without reasoning, and the next turns think again.
TEST(V4Context, TaskAnswerInAnEpisode) {
  REQUIRE_TOKENIZER();
  ojson req = ojson::parse(R"({"thinking_mode":"thinking","drop_thinking":false,"messages":[
    {"role":"system","content":"S"},{"role":"user","content":"Find the weather.","task":"query"}]})");
  auto ctx = EpisodeContext::Start(Tok(), req, {.verify_with_full_render = true});
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  EXPECT_TRUE(ctx->text().ends_with("Find the weather.<｜query｜>"));
  EXPECT_FALSE(ctx->NextTurnHasReasoning());
  ojson answer = {{"role", "assistant"}, {"content", "weather today"}};
  std::vector<uint32_t> ids = TurnIds(*ctx, answer);
  EXPECT_EQ(Tok()->Decode(ids), "weather today<｜end▁of▁sentence｜>");
  ASSERT_TRUE(ctx->AppendPolicyOutput(ids, answer).ok());
  EXPECT_TRUE(ctx->NextTurnHasReasoning());
  // An action task as an observation.
  auto rep = ctx->AppendObservation(ojson::array({{{"role", "user"}, {"content", "Now act."}, {"task", "action"}}}));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->matches_full_render);
  EXPECT_EQ(ctx->text().substr(ctx->segments().back().text_begin),
            "<｜User｜>Now act.<｜Assistant｜><think><｜action｜>");
  EXPECT_FALSE(ctx->NextTurnHasReasoning());
  ojson act = {{"role", "assistant"}, {"content", "search"}};
  ASSERT_TRUE(ctx->AppendPolicyOutput(TurnIds(*ctx, act), act).ok());
  rep = ctx->AppendObservation(ojson::array({{{"role", "user"}, {"content", "Thanks."}}}));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->matches_full_render);
  EXPECT_TRUE(ctx->NextTurnHasReasoning());
  EXPECT_EQ(EncodePrompt(ctx->Request()).value(), ctx->text());
}

// Two observations in a row: a user message right after tool results would
// join their turn and reopen it, which the kept ids cannot follow, so it is
// refused and the context is unchanged; a reminder extends the render.
TEST(V4Context, ObservationAfterAnObservation) {
  REQUIRE_TOKENIZER();
  auto ctx = EpisodeContext::Start(Tok(), ToolRequest());
  ASSERT_TRUE(ctx.ok());
  ojson a1 = {{"role", "assistant"}, {"content", ""}, {"tool_calls", ojson::array({Call("c1", "ls")})}};
  ASSERT_TRUE(ctx->AppendPolicyOutput(TurnIds(*ctx, a1), a1).ok());
  ASSERT_TRUE(ctx->AppendObservation(ojson::array({{{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "x"}}})).ok());
  const size_t before = ctx->size();
  auto joined = ctx->AppendObservation(ojson::array({{{"role", "user"}, {"content", "more"}}}));
  EXPECT_EQ(joined.status().code(), Code::kFailedPrecondition) << joined.status().ToString();
  EXPECT_EQ(ctx->size(), before);
  auto rep = ctx->AppendObservation(ojson::array({{{"role", "latest_reminder"}, {"content", "R"}}}));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(rep->path, AppendReport::Path::kIncremental);
  EXPECT_EQ(ctx->text().substr(ctx->segments().back().text_begin), "<｜latest_reminder｜>R");
  EXPECT_EQ(EncodePrompt(ctx->Request()).value(), ctx->text());
}

// ---------------------------------------------------------------------------
// Cutting long observations.

TEST(V4ContextCut, ShortTextIsKept) {
  REQUIRE_TOKENIZER();
  CutText c = CutHeadTail(*Tok(), "hello world", 100);
  EXPECT_FALSE(c.cut);
  EXPECT_EQ(c.text, "hello world");
}

TEST(V4ContextCut, LongTextKeepsHeadAndTailAroundTheMarker) {
  REQUIRE_TOKENIZER();
  std::string text;
  for (int i = 0; i < 2000; ++i) text += fmt::format("line {} of the build log: 日本語のテキスト ok\n", i);
  for (size_t limit : {16, 64, 200, 1000}) {
    CutText c = CutHeadTail(*Tok(), text, limit);
    ASSERT_TRUE(c.cut);
    EXPECT_LE(Tok()->Encode(c.text).size(), limit) << limit;
    EXPECT_EQ(c.text.rfind("line 0 ", 0), 0u) << limit;
    EXPECT_NE(c.text.find(fmt::format("\n[... {} tokens omitted ...]\n", c.tokens_omitted)), std::string::npos);
    EXPECT_EQ(c.text.back(), '\n');
    EXPECT_GT(c.tokens_omitted, c.tokens_before - limit) << limit;
    // Valid UTF-8 throughout: the encoder accepts it.
    ojson req = {{"messages", ojson::array({{{"role", "user"}, {"content", c.text}}})}};
    EXPECT_TRUE(EncodePrompt(req).ok()) << limit;
  }
  CutText tiny = CutHeadTail(*Tok(), text, 1);  // smaller than the marker: the marker alone
  EXPECT_TRUE(tiny.cut);
  EXPECT_EQ(tiny.tokens_omitted, tiny.tokens_before);
}

// ---------------------------------------------------------------------------
// Stop reasons.

TEST(V4ContextStop, NamesRoundTrip) {
  for (const char* n : {"eos", "no_tool_call", "budget", "max_turns", "policy_error", "format_error"}) {
    auto r = ParseStopReason(n);
    ASSERT_TRUE(r.has_value()) << n;
    EXPECT_STREQ(StopReasonName(*r), n);
  }
  EXPECT_FALSE(ParseStopReason("length").has_value());
}

struct Episode {
  std::unique_ptr<ContextManager> cm;
  int call = 0;
  explicit Episode(ContextLimits limits) {
    auto ctx = EpisodeContext::Start(Tok(), ToolRequest());
    EXPECT_TRUE(ctx.ok());
    cm = std::make_unique<ContextManager>(std::move(ctx).value(), limits);
  }
  PolicyTurn ToolTurn() {
    ojson m = {{"role", "assistant"}, {"reasoning_content", "r"}, {"content", ""},
               {"tool_calls", ojson::array({Call(fmt::format("c{}", ++call), "ls")})}};
    return {Status::Ok(), TurnIds(cm->context(), m), m, ""};
  }
  PolicyTurn AnswerTurn() {
    ojson m = {{"role", "assistant"}, {"reasoning_content", "r"}, {"content", "All done."}};
    return {Status::Ok(), TurnIds(cm->context(), m), m, ""};
  }
  ojson Result(const std::string& content) {
    return ojson::array({{{"role", "tool"}, {"tool_call_id", fmt::format("c{}", call)}, {"content", content}}});
  }
};

TEST(V4ContextStop, Eos) {
  REQUIRE_TOKENIZER();
  Episode e({});
  auto s = e.cm->OnPolicyTurn(e.ToolTurn());
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->has_value());
  auto o = e.cm->OnObservation(e.Result("a.txt"));
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_FALSE(o->has_value());
  s = e.cm->OnPolicyTurn(e.AnswerTurn());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, StopReason::kEos);
  EXPECT_EQ(e.cm->turns(), 2u);
  EXPECT_EQ(e.cm->OnPolicyTurn(e.AnswerTurn()).status().code(), Code::kFailedPrecondition);
  EXPECT_EQ(e.cm->MaxNewTokens(), 0u);
}

TEST(V4ContextStop, NoToolCall) {
  REQUIRE_TOKENIZER();
  // Required tool calls: an answer without one ends the episode as no_tool_call.
  Episode e({.tool_calls_required = true});
  auto s = e.cm->OnPolicyTurn(e.AnswerTurn());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, StopReason::kNoToolCall);
  // A turn that stopped without EOS (a stop string) and no tool calls.
  Episode f({});
  PolicyTurn t = f.AnswerTurn();
  t.ids.pop_back();
  s = f.cm->OnPolicyTurn(t);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, StopReason::kNoToolCall);
}

TEST(V4ContextStop, MaxTurns) {
  REQUIRE_TOKENIZER();
  Episode e({.max_turns = 2});
  ASSERT_FALSE(e.cm->OnPolicyTurn(e.ToolTurn())->has_value());
  ASSERT_FALSE(e.cm->OnObservation(e.Result("x"))->has_value());
  auto s = e.cm->OnPolicyTurn(e.ToolTurn());
  EXPECT_EQ(*s, StopReason::kMaxTurns);
}

TEST(V4ContextStop, PolicyError) {
  REQUIRE_TOKENIZER();
  Episode e({});
  const size_t before = e.cm->context().size();
  auto s = e.cm->OnPolicyTurn({Error(Code::kUnavailable, "connection refused"), {}, std::nullopt, ""});
  EXPECT_EQ(*s, StopReason::kPolicyError);
  EXPECT_NE(e.cm->stop_detail().find("connection refused"), std::string::npos);
  EXPECT_EQ(e.cm->context().size(), before);  // nothing appended
}

TEST(V4ContextStop, FormatError) {
  REQUIRE_TOKENIZER();
  Episode e({});
  std::vector<uint32_t> ids = Tok()->Encode("r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\"><｜end▁of▁sentence｜>");
  auto s = e.cm->OnPolicyTurn({Status::Ok(), ids, std::nullopt, "unclosed_block"});
  EXPECT_EQ(*s, StopReason::kFormatError);
  EXPECT_EQ(e.cm->stop_detail(), "unclosed_block");
  // The ids are still kept for training, under the loss mask.
  const Segment& last = e.cm->context().segments().back();
  EXPECT_EQ(last.kind, SegmentKind::kPolicyOutput);
  EXPECT_EQ(last.size(), ids.size());
}

TEST(V4ContextStop, BudgetWhenTheOutputIsCutByIt) {
  REQUIRE_TOKENIZER();
  Episode probe({});
  const size_t prompt = probe.cm->context().size();
  Episode e({.max_context_tokens = prompt + 5, .min_turn_tokens = 1});
  EXPECT_EQ(e.cm->MaxNewTokens(), 5u);
  std::vector<uint32_t> ids = Tok()->Encode("r</think>I will now");
  ids.resize(5);
  auto s = e.cm->OnPolicyTurn({Status::Ok(), ids, std::nullopt, "missing_end_of_sentence"});
  EXPECT_EQ(*s, StopReason::kBudget);
}

TEST(V4ContextStop, BudgetAfterAnObservation) {
  REQUIRE_TOKENIZER();
  Episode probe({});
  const size_t prompt = probe.cm->context().size();
  Episode e({.max_context_tokens = prompt + 200, .max_observation_tokens = 1000, .min_turn_tokens = 64});
  ASSERT_FALSE(e.cm->OnPolicyTurn(e.ToolTurn())->has_value());
  std::string big;
  for (int i = 0; i < 60; ++i) big += fmt::format("file_{}.txt\n", i);
  auto o = e.cm->OnObservation(e.Result(big));
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(**o, StopReason::kBudget);
}

TEST(V4ContextStop, BudgetWhenThePromptFillsIt) {
  REQUIRE_TOKENIZER();
  Episode e({.max_context_tokens = 10});
  EXPECT_EQ(e.cm->stop_reason(), StopReason::kBudget);
}

TEST(V4ContextStop, LongObservationIsCutInTheContext) {
  REQUIRE_TOKENIZER();
  Episode e({.max_observation_tokens = 100});
  ASSERT_FALSE(e.cm->OnPolicyTurn(e.ToolTurn())->has_value());
  std::string log;
  for (int i = 0; i < 500; ++i) log += fmt::format("test_{} PASSED\n", i);
  const size_t before = e.cm->context().size();
  auto o = e.cm->OnObservation(e.Result(log));
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_FALSE(o->has_value());
  EXPECT_EQ(e.cm->observations_cut(), 1u);
  EXPECT_GT(e.cm->tokens_omitted(), 1000u);
  const std::string& text = e.cm->context().text();
  EXPECT_NE(text.find("test_0 PASSED"), std::string::npos);
  EXPECT_NE(text.find("test_499 PASSED"), std::string::npos);
  EXPECT_EQ(text.find("test_250 PASSED"), std::string::npos);
  EXPECT_NE(text.find("tokens omitted ...]"), std::string::npos);
  // The observation segment: the cut result plus the turn's framing tokens.
  EXPECT_LE(e.cm->context().size() - before, 100u + 20u);
}

}  // namespace
}  // namespace paddock::v4
