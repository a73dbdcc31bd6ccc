// JSON text as the reference encoder writes it (Python's json.dumps with
// ensure_ascii=False and the default ", " / ": " separators), and UTF-8 checks.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace paddock::v4::internal {

// `{"a": 1, "b": [true, null]}`: keys in stored order, non-ASCII kept as is.
std::string PyJsonDumps(const nlohmann::ordered_json& value);

// Whether `s` is well-formed UTF-8 (no overlongs, surrogates or values > U+10FFFF).
bool IsValidUtf8(std::string_view s);

// The path ("messages[3].tool_calls[0].function.arguments") of the first
// string (key or value) inside `value` that is not valid UTF-8, or "" when all are.
std::string FindInvalidUtf8(const nlohmann::ordered_json& value, const std::string& path);

}  // namespace paddock::v4::internal
