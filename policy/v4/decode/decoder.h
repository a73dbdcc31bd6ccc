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
  kTextAfterEndOfSentence,  // anything after <｜end▁of▁sentence｜>
};
// "missing_think_end", "unclosed_block", "malformed_block", "malformed_parameter",
// "duplicate_parameter", "unknown_tool", "schema_mismatch", "text_after_tool_calls",
// "special_token_in_content", "invalid_utf8", "missing_end_of_sentence",
// "text_after_end_of_sentence".
const char* DecodeErrorKindName(DecodeErrorKind kind);

struct DecodeError {
  DecodeErrorKind kind;
  std::string message;
  size_t offset = 0;  // byte offset in the completion where it went wrong
};

// Strict decode (the reference decoder's acceptance). `tools` (OpenAI tool
// list) enables the unknown-tool and schema checks when given.
//
// Built on DsmlParser (dsml_parser.h) in strict mode, fed the whole completion.
// The message is {"role":"assistant","content","reasoning_content","tool_calls":
// [{"type":"function","function":{"name","arguments"}}]} where `arguments` is
// the reference's JSON string: {"k": v, ...}, keys and string="true" values
// JSON-encoded without ASCII escaping, string="false" values copied verbatim.
std::variant<nlohmann::json, DecodeError> DecodeCompletion(std::string_view completion,
                                                           bool thinking_mode,
                                                           const nlohmann::json* tools = nullptr);

}  // namespace paddock::v4
