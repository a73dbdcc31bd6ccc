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

// Special tokens of the format, as they appear in prompts.
inline constexpr std::string_view kBeginOfSentence = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUserToken = "<｜User｜>";
inline constexpr std::string_view kAssistantToken = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminderToken = "<｜latest_reminder｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";

}  // namespace paddock::v4
