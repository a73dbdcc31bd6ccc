#include "policy/v4/decode/decoder.h"

#include "policy/v4/decode/dsml_parser.h"

namespace paddock::v4 {

const char* DecodeErrorKindName(DecodeErrorKind kind) {
  switch (kind) {
    case DecodeErrorKind::kMissingThinkEnd: return "missing_think_end";
    case DecodeErrorKind::kUnclosedBlock: return "unclosed_block";
    case DecodeErrorKind::kMalformedBlock: return "malformed_block";
    case DecodeErrorKind::kMalformedParameter: return "malformed_parameter";
    case DecodeErrorKind::kDuplicateParameter: return "duplicate_parameter";
    case DecodeErrorKind::kUnknownTool: return "unknown_tool";
    case DecodeErrorKind::kSchemaMismatch: return "schema_mismatch";
    case DecodeErrorKind::kTextAfterToolCalls: return "text_after_tool_calls";
    case DecodeErrorKind::kSpecialTokenInContent: return "special_token_in_content";
    case DecodeErrorKind::kInvalidUtf8: return "invalid_utf8";
    case DecodeErrorKind::kMissingEndOfSentence: return "missing_end_of_sentence";
    case DecodeErrorKind::kTextAfterEndOfSentence: return "text_after_end_of_sentence";
  }
  return "unknown";
}

std::variant<nlohmann::json, DecodeError> DecodeCompletion(std::string_view completion,
                                                           bool thinking_mode,
                                                           const nlohmann::json* tools) {
  DsmlParserOptions options;
  options.thinking_mode = thinking_mode;
  options.mode = DsmlMode::kStrict;
  options.tools = tools;
  DsmlParser parser(options);
  parser.Feed(completion);
  parser.Finish();
  if (parser.error()) return *parser.error();

  std::string content, reasoning;
  nlohmann::json tool_calls = nlohmann::json::array();
  for (DsmlEvent& e : parser.TakeEvents()) {
    switch (e.kind) {
      case DsmlEvent::Kind::kReasoning: reasoning += e.text; break;
      case DsmlEvent::Kind::kContent: content += e.text; break;
      case DsmlEvent::Kind::kToolCallEnd:
        tool_calls.push_back({{"type", "function"},
                              {"function", {{"name", std::move(e.text)}, {"arguments", std::move(e.value)}}}});
        break;
      default: break;
    }
  }
  return nlohmann::json{{"role", "assistant"},
                        {"content", std::move(content)},
                        {"reasoning_content", std::move(reasoning)},
                        {"tool_calls", std::move(tool_calls)}};
}

}  // namespace paddock::v4
