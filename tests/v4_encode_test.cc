// The V4 encoder against every case of tests/data/v4/encoding_public.jsonl and
// encoding_tasks_public.jsonl (byte equality), the task-token rules on
// conversations of their own, and its answers to bad input.
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/v4/encode/encoder.h"

namespace paddock::v4 {
namespace {

using ojson = nlohmann::ordered_json;

std::vector<ojson> LoadCases(const std::string& file = "encoding_public.jsonl") {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/" + file);
  std::vector<ojson> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) cases.push_back(ojson::parse(line));
  }
  return cases;
}

// "offset 123: expected «…» got «…»" around the first difference.
std::string DescribeDifference(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  size_t from = i > 40 ? i - 40 : 0;
  return "first difference at byte offset " + std::to_string(i) + "\n  expected: ..." +
         want.substr(from, 120) + "\n  actual:   ..." + got.substr(from, 120);
}

// Encodes every case; returns how many are byte-exact (failures reported).
int ByteExact(const std::vector<ojson>& cases) {
  int passed = 0;
  for (const ojson& c : cases) {
    const std::string id = c.value("id", "?");
    const std::string want = c["expected_prompt"].get<std::string>();
    auto got = EncodePrompt(c);
    if (!got.ok()) {
      ADD_FAILURE() << id << ": " << got.status().ToString();
      continue;
    }
    if (*got != want) {
      // PADDOCK_V4_DUMP_DIR=<dir>: write the actual prompt to <dir>/<id>.txt for diffing.
      if (const char* dir = std::getenv("PADDOCK_V4_DUMP_DIR")) std::ofstream(std::string(dir) + "/" + id + ".txt") << *got;
      ADD_FAILURE() << id << ": " << DescribeDifference(want, *got);
      continue;
    }
    ++passed;
  }
  return passed;
}

TEST(V4Encode, EveryPublicVectorIsByteExact) {
  std::vector<ojson> cases = LoadCases();
  ASSERT_EQ(cases.size(), 150u) << "encoding_public.jsonl missing or truncated";
  int passed = ByteExact(cases);
  std::printf("encoding_public.jsonl: %d/%zu byte-exact\n", passed, cases.size());
  EXPECT_EQ(passed, static_cast<int>(cases.size()));
}

// Task tokens on any user message, with and without the task's answer after it.
TEST(V4Encode, EveryTaskVectorIsByteExact) {
  std::vector<ojson> cases = LoadCases("encoding_tasks_public.jsonl");
  ASSERT_EQ(cases.size(), 80u) << "encoding_tasks_public.jsonl missing or truncated";
  int passed = ByteExact(cases);
  std::printf("encoding_tasks_public.jsonl: %d/%zu byte-exact\n", passed, cases.size());
  EXPECT_EQ(passed, static_cast<int>(cases.size()));
}

TEST(V4Encode, TextEntryPointKeepsKeyOrder) {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/encoding_public.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  ojson c = ojson::parse(line);
  auto got = EncodePromptText(line);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, c["expected_prompt"].get<std::string>());
}

// Expects INVALID_ARGUMENT whose message contains `needle`.
void ExpectInvalid(const Result<std::string>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok()) << "accepted; prompt: " << r.value();
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "message \"" << r.status().message() << "\" does not mention \"" << needle << "\"";
}

ojson Req(ojson messages) {
  return ojson{{"messages", std::move(messages)}, {"thinking_mode", "chat"}, {"drop_thinking", true},
               {"reasoning_effort", nullptr}};
}

TEST(V4Encode, PlainJsonOverloadRendersTheSame) {
  // nlohmann::json sorts keys; for a conversation without schemas or
  // arguments the prompt is the same as with ordered_json.
  nlohmann::json r = {{"messages",
                       {{{"role", "system"}, {"content", "S"}},
                        {{"role", "user"}, {"content", "hi"}},
                        {{"role", "assistant"}, {"content", "yo"}, {"reasoning_content", "r"}},
                        {{"role", "user"}, {"content", "again"}}}},
                      {"thinking_mode", "thinking"},
                      {"drop_thinking", false}};
  auto got = EncodePrompt(r);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got,
            "<｜begin▁of▁sentence｜>S<｜User｜>hi<｜Assistant｜><think>r</think>yo<｜end▁of▁sentence｜>"
            "<｜User｜>again<｜Assistant｜><think>");
}

TEST(V4Encode, ArgumentsThatAreNotAnObjectBecomeOneParameter) {
  ojson call = {{"id", "c1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "not json"}}}};
  auto got = EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}},
                               {{"role", "assistant"}, {"content", ""}, {"tool_calls", {call}}}}));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_NE(got->find("<｜DSML｜parameter name=\"arguments\" string=\"true\">not json</｜DSML｜parameter>"),
            std::string::npos)
      << *got;
}

// ---- task tokens and how turns close, on conversations of their own ----

constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";

ojson Req(ojson messages, const char* mode, bool drop) {
  return ojson{{"messages", std::move(messages)}, {"thinking_mode", mode}, {"drop_thinking", drop},
               {"reasoning_effort", nullptr}};
}

void ExpectPrompt(const ojson& request, std::string_view want) {
  auto got = EncodePrompt(request);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, std::string(kBos) + std::string(want)) << DescribeDifference(std::string(kBos) + std::string(want), *got);
}

ojson User(const std::string& content, const std::string& task = "") {
  ojson m = {{"role", "user"}, {"content", content}};
  if (!task.empty()) m["task"] = task;
  return m;
}

ojson Assistant(const std::string& content, const std::string& reasoning = "") {
  return {{"role", "assistant"}, {"content", content}, {"reasoning_content", reasoning}};
}

TEST(V4EncodeTasks, ActionOpensTheAssistantTurnThenTheActionToken) {
  ojson msgs = {User("Q1", "action"), Assistant("yes", "r"), User("Q2")};
  // The answer carries no thinking block, in either mode; later turns do.
  ExpectPrompt(Req(msgs, "thinking", false),
               "<｜User｜>Q1<｜Assistant｜><think><｜action｜>yes<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜><think>");
  ExpectPrompt(Req(msgs, "chat", true),
               "<｜User｜>Q1<｜Assistant｜></think><｜action｜>yes<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜></think>");
  // As the last message (the prompt for the answer).
  ExpectPrompt(Req({User("Q1", "action")}, "thinking", true), "<｜User｜>Q1<｜Assistant｜><think><｜action｜>");
}

TEST(V4EncodeTasks, OtherTasksEndWithTheirToken) {
  for (const char* task : {"query", "authority", "domain", "title", "read_url"}) {
    std::string token = std::string("<｜") + task + "｜>";
    ExpectPrompt(Req({User("Q", task)}, "thinking", true), "<｜User｜>Q" + token);
    ExpectPrompt(Req({User("Q", task), Assistant("no", "r"), User("more")}, "thinking", false),
                 "<｜User｜>Q" + token + "no<｜end▁of▁sentence｜><｜User｜>more<｜Assistant｜><think>");
  }
}

TEST(V4EncodeTasks, OnlyTheAnswerRightAfterTheTaskLosesItsThinkingBlock) {
  // A second assistant message after the answer thinks again.
  ExpectPrompt(Req({User("Q", "authority"), Assistant("no", "r"), Assistant("then", "r2")}, "thinking", true),
               "<｜User｜>Q<｜authority｜>no<｜end▁of▁sentence｜>r2</think>then<｜end▁of▁sentence｜>");
  // A latest_reminder between the task and the assistant: the task's token is
  // written (a reminder follows), and the assistant message thinks.
  ExpectPrompt(Req({User("Q", "domain"), {{"role", "latest_reminder"}, {"content", "R"}}, Assistant("d", "r")},
                   "thinking", false),
               "<｜User｜>Q<｜domain｜><｜latest_reminder｜>Rr</think>d<｜end▁of▁sentence｜>");
}

TEST(V4EncodeTasks, ClosingTokensOnlyBeforeAnAssistantOrReminderOrAtTheEnd) {
  // A task message followed by another user message: neither its token nor
  // the assistant's opening, and the user message stays a turn of its own.
  ExpectPrompt(Req({User("Q1", "query"), User("Q2")}, "chat", true),
               "<｜User｜>Q1<｜User｜>Q2<｜Assistant｜></think>");
  ExpectPrompt(Req({{{"role", "system"}, {"content", "S"}}, User("Q", "read_url"), {{"role", "system"}, {"content", "S2"}},
                    User("u")},
                   "chat", true),
               "S<｜User｜>QS2<｜User｜>u<｜Assistant｜></think>");
  // A developer message is a user turn: closed when last or before an assistant.
  ExpectPrompt(Req({{{"role", "developer"}, {"content", "D"}}}, "chat", true), "<｜User｜>D<｜Assistant｜></think>");
  ExpectPrompt(Req({{{"role", "developer"}, {"content", "D"}}, Assistant("a")}, "chat", true),
               "<｜User｜>D<｜Assistant｜></think>a<｜end▁of▁sentence｜>");
}

TEST(V4EncodeTasks, UserMessagesJoinTheUserTurnBeforeThem) {
  // After user text without a task, or after tool results, a user message
  // joins that turn after a blank line (its own task is then not rendered).
  ExpectPrompt(Req({User("a"), User("b")}, "chat", true), "<｜User｜>a\n\nb<｜Assistant｜></think>");
  ExpectPrompt(Req({User("a"), User("b", "title")}, "chat", true), "<｜User｜>a\n\nb<｜Assistant｜></think>");
  ojson call = {{"id", "c1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", R"({"x": "y"})"}}}};
  ExpectPrompt(Req({User("go"), {{"role", "assistant"}, {"content", ""}, {"tool_calls", {call}}},
                    {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "out"}}, User("more")},
                   "thinking", false),
               "<｜User｜>go<｜Assistant｜><think></think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
               "<｜DSML｜parameter name=\"x\" string=\"true\">y</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
               "</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>out</tool_result>\n\nmore"
               "<｜Assistant｜><think>");
}

TEST(V4EncodeTasks, DroppedThinkingLeavesOutEarlierDeveloperMessages) {
  // Thinking mode with drop_thinking and no tools: developer messages before
  // the last user turn are left out, like the reasoning of earlier answers.
  ExpectPrompt(Req({{{"role", "developer"}, {"content", "D"}}, User("a"), Assistant("x", "r"), User("b")}, "thinking",
                   true),
               "<｜User｜>a<｜Assistant｜></think>x<｜end▁of▁sentence｜><｜User｜>b<｜Assistant｜><think>");
  ExpectPrompt(Req({{{"role", "developer"}, {"content", "D"}}, User("a")}, "chat", true),
               "<｜User｜>D<｜User｜>a<｜Assistant｜></think>");
}

TEST(V4EncodeTasks, NextTurnHasReasoning) {
  auto req = [](ojson msgs, const char* mode = "thinking") { return Req(std::move(msgs), mode, true); };
  EXPECT_TRUE(NextTurnHasReasoning(req({User("Q")})));
  EXPECT_FALSE(NextTurnHasReasoning(req({User("Q")}, "chat")));
  for (const char* task : {"action", "query", "authority", "domain", "title", "read_url"}) {
    EXPECT_FALSE(NextTurnHasReasoning(req({User("Q", task)}))) << task;
    EXPECT_TRUE(AnswersTask(ojson::array({User("Q", task)}))) << task;
  }
  EXPECT_FALSE(NextTurnHasReasoning(req({User("Q", "query")}, "chat")));
  // The task's answer is given: the next turn thinks.
  EXPECT_TRUE(NextTurnHasReasoning(req({User("Q", "query"), Assistant("a")})));
  // A reminder after the task: the assistant message does not follow it directly.
  EXPECT_TRUE(NextTurnHasReasoning(req({User("Q", "query"), {{"role", "latest_reminder"}, {"content", "R"}}})));
  // A task message that joins the user turn before it is no task.
  EXPECT_FALSE(AnswersTask(ojson::array({User("a"), User("Q", "title")})));
  EXPECT_TRUE(AnswersTask(ojson::array({User("Q", "title"), Assistant("t"), User("R", "query")})));
  EXPECT_TRUE(AnswersTask(ojson::array({User("a", "query"), User("Q", "title")})));
  ojson call = {{"id", "c1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}};
  EXPECT_FALSE(AnswersTask(ojson::array({User("go"), {{"role", "assistant"}, {"content", ""}, {"tool_calls", {call}}},
                                         {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "out"}},
                                         User("Q", "query")})));
  EXPECT_FALSE(AnswersTask(ojson::array()));
}

// Issue 5's target is <= 1 ms for a 200-turn tool conversation; the bound here
// is loose because the test machine is shared.
TEST(V4Encode, TwoHundredTurnToolConversation) {
  ojson tools = ojson::array({{{"type", "function"},
                               {"function",
                                {{"name", "bash"},
                                 {"description", "Run a command."},
                                 {"parameters", {{"type", "object"}, {"properties", {{"command", {{"type", "string"}}}}}}}}}}});
  ojson messages = ojson::array({{{"role", "system"}, {"content", "You are an agent."}, {"tools", tools}},
                                 {{"role", "user"}, {"content", "Fix the tests."}}});
  for (int t = 0; t < 100; ++t) {
    std::string id = "call_" + std::to_string(t);
    messages.push_back({{"role", "assistant"},
                        {"content", ""},
                        {"reasoning_content", "Step " + std::to_string(t) + ": run the tests again."},
                        {"tool_calls",
                         {{{"id", id},
                           {"type", "function"},
                           {"function", {{"name", "bash"}, {"arguments", R"({"command": "make test", "timeout": 60})"}}}}}}});
    messages.push_back({{"role", "tool"}, {"tool_call_id", id}, {"content", std::string(400, 'x')}});
  }
  ojson req = {{"messages", messages}, {"thinking_mode", "thinking"}, {"drop_thinking", true}};
  ASSERT_TRUE(EncodePrompt(req).ok());
  auto start = std::chrono::steady_clock::now();
  constexpr int kRounds = 20;
  for (int i = 0; i < kRounds; ++i) ASSERT_TRUE(EncodePrompt(req).ok());
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / kRounds;
  RecordProperty("encode_200_turns_ms", std::to_string(ms));
  std::printf("encoding a 200-turn tool conversation: %.3f ms\n", ms);
  EXPECT_LT(ms, 25.0);
}

TEST(V4EncodeBadInput, MalformedJsonText) {
  ExpectInvalid(EncodePromptText("{\"messages\": [}"), "not valid JSON");
  ExpectInvalid(EncodePromptText("[1, 2]"), "must be a JSON object");
}

TEST(V4EncodeBadInput, MessagesMissingOrNotAnArray) {
  ExpectInvalid(EncodePrompt(ojson{{"thinking_mode", "chat"}}), "messages: missing");
  ExpectInvalid(EncodePrompt(ojson{{"messages", "hi"}}), "messages: must be an array");
}

TEST(V4EncodeBadInput, MessageNotAnObject) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}}, 42})), "messages[1]");
}

TEST(V4EncodeBadInput, UnknownRole) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}}, {{"role", "robot"}, {"content", "x"}}})),
                "messages[1].role: unknown role \"robot\"");
}

TEST(V4EncodeBadInput, MissingRole) {
  ExpectInvalid(EncodePrompt(Req({{{"content", "hi"}}})), "messages[0].role: missing");
}

TEST(V4EncodeBadInput, ContentOfWrongType) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", 7}}})), "messages[0].content: must be a string");
}

TEST(V4EncodeBadInput, InvalidUtf8InContent) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", std::string("caf\xc3", 4)}}})),
                "messages[0].content: invalid UTF-8");
  ExpectInvalid(EncodePromptText(std::string("{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}")),
                "invalid UTF-8");
}

TEST(V4EncodeBadInput, InvalidUtf8InToolArguments) {
  ojson call = {{"id", "c1"},
                {"type", "function"},
                {"function", {{"name", "f"}, {"arguments", std::string("{\"a\": \"\xed\xa0\x80\"}")}}}};
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}},
                                  {{"role", "assistant"}, {"content", ""}, {"tool_calls", {call}}}})),
                "messages[1].tool_calls[0].function.arguments: invalid UTF-8");
}

TEST(V4EncodeBadInput, ToolMessageWithoutPrecedingCall) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}},
                                  {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "x"}}})),
                "messages[1]");
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}},
                                  {{"role", "assistant"}, {"content", "no calls"}},
                                  {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "x"}}})),
                "must follow an assistant message with tool_calls");
}

TEST(V4EncodeBadInput, ToolResultForUnknownCallId) {
  ojson call = {{"id", "c1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}};
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}},
                                  {{"role", "assistant"}, {"content", ""}, {"tool_calls", {call}}},
                                  {{"role", "tool"}, {"tool_call_id", "c9"}, {"content", "x"}}})),
                "messages[2].tool_call_id");
}

TEST(V4EncodeBadInput, ToolsAndToolCallsOfWrongShape) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "system"}, {"content", ""}, {"tools", "none"}}})),
                "messages[0].tools: must be an array");
  ExpectInvalid(EncodePrompt(Req({{{"role", "system"}, {"content", ""}, {"tools", {{{"type", "function"}}}}}})),
                "messages[0].tools[0].name");
  ExpectInvalid(EncodePrompt(Req({{{"role", "assistant"}, {"content", ""}, {"tool_calls", {{{"id", "x"}}}}}})),
                "messages[0].tool_calls[0].name");
}

TEST(V4EncodeBadInput, BadOptions) {
  ojson r = Req({{{"role", "user"}, {"content", "hi"}}});
  r["thinking_mode"] = "deep";
  ExpectInvalid(EncodePrompt(r), "thinking_mode");
  r = Req({{{"role", "user"}, {"content", "hi"}}});
  r["reasoning_effort"] = "low";
  ExpectInvalid(EncodePrompt(r), "reasoning_effort");
  r = Req({{{"role", "user"}, {"content", "hi"}}});
  r["drop_thinking"] = "yes";
  ExpectInvalid(EncodePrompt(r), "drop_thinking");
}

TEST(V4EncodeBadInput, UnknownTask) {
  ExpectInvalid(EncodePrompt(Req({{{"role", "user"}, {"content", "hi"}, {"task", "dance"}}})),
                "messages[0].task: unknown task");
}

}  // namespace
}  // namespace paddock::v4
