// DeepSeek-V4 chat-format encoder: an OpenAI-style conversation → the exact
// prompt text the model expects (byte-exact with the reference encoder).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"

namespace paddock::v4 {

// `request`: {"messages": [...], "thinking_mode": "chat"|"thinking",
//             "drop_thinking": bool, "reasoning_effort": null|"high"|"max"}.
// Malformed input (unknown role, wrong types, invalid UTF-8) is INVALID_ARGUMENT
// with a message naming the offending message index and field.
Result<std::string> EncodePrompt(const nlohmann::json& request);

}  // namespace paddock::v4
