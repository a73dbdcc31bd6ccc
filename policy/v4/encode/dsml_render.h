// DSML rendering for the encoder: the tools section of a system/developer
// message and an assistant message's tool calls.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"

namespace paddock::v4::internal {

// The "## Tools" section for an OpenAI tool list (`[{"type":"function",
// "function":{name,description,parameters}}]`); ends with a newline.
// `where` names the field in errors ("messages[0].tools").
Result<std::string> RenderToolsSection(const nlohmann::ordered_json& tools, const std::string& where);

// The "## Response Format:" section for a response_format object.
std::string RenderResponseFormatSection(const nlohmann::ordered_json& response_format);

// The `<｜DSML｜tool_calls>` … `</｜DSML｜tool_calls>` block for an assistant
// message's tool_calls (no surrounding blank lines).
Result<std::string> RenderToolCalls(const nlohmann::ordered_json& tool_calls, const std::string& where);

}  // namespace paddock::v4::internal
