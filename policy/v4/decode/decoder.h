// DeepSeek-V4 completion decoder: the raw text of one assistant turn → the
// assistant message (content, reasoning_content, tool_calls), or a typed
// error saying why the completion is malformed.
#pragma once

#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

namespace paddock::v4 {

enum class DecodeErrorKind {
  kMissingThinkEnd,        // thinking mode without </think>
  kUnclosedBlock,          // a DSML block cut off (e.g. mid tool call)
  kMalformedBlock,         // DSML structure not as the format requires
  kMalformedParameter,     // a parameter's attributes or value are invalid
  kDuplicateParameter,
  kUnknownTool,            // only when the tools are known
  kSchemaMismatch,         // an argument does not match the tool's JSON schema
  kTextAfterToolCalls,
  kSpecialTokenInContent,
  kInvalidUtf8,
  kMissingEndOfSentence,
};
const char* DecodeErrorKindName(DecodeErrorKind kind);  // "unclosed_block", ...

struct DecodeError {
  DecodeErrorKind kind;
  std::string message;
  size_t offset = 0;  // byte offset in the completion where it went wrong
};

// Strict decode (the reference decoder's acceptance). `tools` (OpenAI tool
// list) enables the unknown-tool and schema checks when given.
std::variant<nlohmann::json, DecodeError> DecodeCompletion(std::string_view completion,
                                                           bool thinking_mode,
                                                           const nlohmann::json* tools = nullptr);

}  // namespace paddock::v4
