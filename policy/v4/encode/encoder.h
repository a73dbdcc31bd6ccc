// DeepSeek-V4 chat-format encoder: an OpenAI-style conversation → the exact
// prompt text the model expects (byte-exact with the reference encoder).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"

namespace paddock::v4 {

// `request`: {"messages": [...], "thinking_mode": "chat"|"thinking",
//             "drop_thinking": bool, "reasoning_effort": null|"high"|"max"}.
// Absent fields default to thinking_mode "chat", drop_thinking true and
// reasoning_effort null.
// Malformed input (unknown role, wrong types, invalid UTF-8) is INVALID_ARGUMENT
// with a message naming the offending message index and field.
//
// The prompt embeds tool schemas and tool-call arguments as JSON in their
// original key order, so prefer the ordered_json overload (or EncodePromptText).
// The nlohmann::json overload works, but nlohmann::json keeps object keys
// sorted, so schemas render with sorted keys.
Result<std::string> EncodePrompt(const nlohmann::ordered_json& request);
Result<std::string> EncodePrompt(const nlohmann::json& request);

// Parses `json_text` (keeping key order) and encodes it. Text that is not JSON,
// or not valid UTF-8, is INVALID_ARGUMENT.
Result<std::string> EncodePromptText(std::string_view json_text);

// Task tokens. A user message may carry "task" (action, query, authority,
// domain, title, read_url). Such a message ends with <｜task｜>, or for
// "action" with <｜Assistant｜>, <think> (thinking mode) or </think> (chat) and
// <｜action｜>; the assistant message right after it is the task's answer and
// carries no thinking block. As for every user turn, these closing tokens are
// written only when the conversation ends with the message or an assistant
// message or latest_reminder follows it. A user message joins the user turn
// before it (tool results, or user text without a task) after a blank line;
// its own task, if any, is then not rendered.

// Whether the assistant turn generated after `messages` answers a task: their
// last turn is a user message with a task. Looks only at the trailing run of
// user and tool messages; does not validate.
bool AnswersTask(const nlohmann::ordered_json& messages);

// Whether the model's next turn after `request`'s messages begins with
// reasoning closed by </think>: in thinking mode, unless it answers a task.
// Decode that turn with DecodeCompletion(text, NextTurnHasReasoning(request)).
bool NextTurnHasReasoning(const nlohmann::ordered_json& request);

// Special tokens of the format, as they appear in prompts.
inline constexpr std::string_view kBeginOfSentence = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUserToken = "<｜User｜>";
inline constexpr std::string_view kAssistantToken = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminderToken = "<｜latest_reminder｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";

}  // namespace paddock::v4
