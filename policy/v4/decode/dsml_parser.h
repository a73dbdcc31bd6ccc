// Streaming parser for one DeepSeek-V4 assistant turn: reasoning, content and
// DSML tool calls, fed chunk by chunk as tokens arrive.
//
// The completion grammar (as the reference decoder reads it):
//
//   [thinking mode]  REASONING "</think>"
//   CONTENT ( "<｜end▁of▁sentence｜>"
//           | "\n\n<｜DSML｜tool_calls" ">\n"
//               ( "<｜DSML｜invoke" WS* 'name="' NAME '">\n'
//                   ( "<｜DSML｜parameter" ' name="' NAME '" string="' ("true"|"false") '">'
//                       VALUE "</｜DSML｜parameter" ">\n" )*
//                 "</｜DSML｜invoke" ">\n" )*
//             "</｜DSML｜tool_calls>" [ "<｜end▁of▁sentence｜>" ] )
//
// REASONING and CONTENT may not contain <｜begin▁of▁sentence｜>,
// <｜end▁of▁sentence｜>, <think>, </think> or ｜DSML｜. Every read is "up to the
// first occurrence of one of these markers", exactly like the reference, so
// e.g. a parameter value may contain anything except "/｜DSML｜parameter".
// A completion cut off at a block boundary (right after "</｜DSML｜invoke",
// after a parameter's ">\n", after an invoke header's ">\n") is accepted by the
// reference and so by strict mode.
//
// Modes:
//  - kStrict: accepts exactly what the reference decoder accepts (plus the
//    unknown-tool / schema checks when tools are given). The first error stops
//    the parser; errors that the reference only checks at the end (a special
//    token inside reasoning or content) are reported at Finish() unless a
//    structural error comes first, as in the reference.
//  - kTolerant: never stops. Reports each problem as a typed error event and
//    recovers: an unclosed invoke/parameter/tool_calls block is closed where the
//    next DSML marker or the end of the turn appears, a malformed parameter is
//    salvaged when its name can be read, duplicates keep the first value,
//    invalid UTF-8 becomes U+FFFD, stray special tokens are dropped from text.
//
// Events do not depend on how the input is split into chunks, except that text
// (reasoning/content) may arrive in more, smaller pieces; CoalesceEvents()
// merges adjacent text events.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/v4/decode/decoder.h"

namespace paddock::v4 {

enum class DsmlMode { kStrict, kTolerant };

struct DsmlParserOptions {
  bool thinking_mode = false;
  DsmlMode mode = DsmlMode::kStrict;
  // OpenAI tool list ([{"type":"function","function":{name,parameters}}], or the
  // bare function objects). When given, unknown tools and arguments that do not
  // match the tool's JSON schema are errors. Copied; need not outlive the parser.
  const nlohmann::json* tools = nullptr;
};

struct DsmlEvent {
  enum class Kind {
    kReasoning,      // text: reasoning text
    kContent,        // text: content text
    kToolCallStart,  // text: tool name
    kParameter,      // text: parameter name; value: raw value; is_string: string="true"
    kToolCallEnd,    // text: tool name; value: the arguments JSON string (reference format)
    kEndOfTurn,      // <｜end▁of▁sentence｜> seen, or the turn ended acceptably without it
    kError,          // error_kind, value: message; offset: byte offset in the input
  };
  Kind kind;
  std::string text;
  std::string value;
  bool is_string = false;
  DecodeErrorKind error_kind = DecodeErrorKind::kMalformedBlock;
  size_t offset = 0;

  bool operator==(const DsmlEvent&) const = default;
};

const char* DsmlEventKindName(DsmlEvent::Kind kind);
// Merges adjacent kReasoning / kContent events.
std::vector<DsmlEvent> CoalesceEvents(const std::vector<DsmlEvent>& events);
// One line per event, for test failure messages.
std::string DescribeEvents(const std::vector<DsmlEvent>& events);

// JSON encoding as Python's json.dumps(s, ensure_ascii=False): only '"', '\\'
// and control characters are escaped. `s` must be valid UTF-8.
std::string JsonQuote(std::string_view s);

// A small JSON-schema check for tool arguments: type (incl. lists of types and
// "integer"), enum, const, properties, required, additionalProperties, items,
// minItems/maxItems, minLength/maxLength, minimum/maximum, anyOf/oneOf/allOf.
// Returns std::nullopt when `value` matches, else a message naming the path.
std::optional<std::string> CheckJsonSchema(const nlohmann::json& value,
                                           const nlohmann::json& schema,
                                           const std::string& path = "$");

class DsmlParser {
 public:
  explicit DsmlParser(const DsmlParserOptions& options);

  // Feeds the next chunk; events become available through TakeEvents().
  void Feed(std::string_view chunk);
  // Ends the input. After Finish(), Feed() is ignored.
  void Finish();

  // Events produced so far and not yet taken.
  std::vector<DsmlEvent> TakeEvents();

  // Strict mode: the error that stopped the parser (or that Finish() found).
  const std::optional<DecodeError>& error() const { return error_; }
  bool failed() const { return error_.has_value(); }
  // Every error reported, in order (strict: at most one).
  const std::vector<DecodeError>& errors() const { return errors_; }
  bool finished() const { return finished_; }

 private:
  enum class State {
    kReasoning,     // before </think>
    kContent,       // after </think> (or from the start in chat mode)
    kGap,           // inside <｜DSML｜tool_calls>, expecting ">\n" then invoke or the end tag
    kInvokeHeader,  // after "<｜DSML｜invoke", up to the first parameter or "</｜DSML｜invoke"
    kParam,         // after "<｜DSML｜parameter", up to "/｜DSML｜parameter"
    kAfterParam,    // after "/｜DSML｜parameter", expecting ">\n"
    kTail,          // after "</｜DSML｜tool_calls>", expecting only <｜end▁of▁sentence｜>
    kAfterEos,      // after <｜end▁of▁sentence｜>: nothing may follow
    kDone,
  };
  struct Pattern;

  void FeedValid(std::string_view bytes);  // valid UTF-8 into the scanner
  void Pump(bool final);
  const std::vector<Pattern>& Patterns() const;
  void OnText(std::string_view text, size_t offset);
  void OnMatch(const Pattern& p, size_t offset);
  void OnEnd(size_t offset);

  void ToGap();
  void StartInvoke(size_t offset);
  void FinishHeader(size_t offset, bool parse_ok_required);
  void FinishParam(size_t offset, bool closed);
  void EndInvoke(size_t offset);
  void OpenParam(size_t value_offset);
  void ToTail();
  void CloseInvokeCutShortBy(const Pattern& p, size_t offset);
  void EndTurn();
  bool GapIsNewline() const { return gap_ == ">\n" && !gap_overflow_; }
  void ResetGap() {
    gap_.clear();
    gap_overflow_ = false;
    gap_offset_ = std::string::npos;
  }

  void EmitText(DsmlEvent::Kind kind, std::string_view text);
  void Emit(DsmlEvent e);
  // Records an error. In strict mode it stops the parser (unless `deferred`).
  void Fail(DecodeErrorKind kind, std::string message, size_t scan_offset);
  size_t OriginalOffset(size_t scan_offset) const;
  bool strict() const { return options_.mode == DsmlMode::kStrict; }
  bool stopped() const { return state_ == State::kDone || (strict() && failed()); }

  DsmlParserOptions options_;
  bool have_tools_ = false;
  std::unordered_map<std::string, nlohmann::json> tool_schemas_;  // name → parameters schema

  State state_;
  bool finished_ = false;
  std::vector<DsmlEvent> events_;
  std::optional<DecodeError> error_;
  std::vector<DecodeError> errors_;
  std::optional<DecodeError> deferred_;  // strict: special token in text, reported at Finish

  // UTF-8 validation.
  std::string utf8_pending_;         // an incomplete sequence held for the next chunk
  size_t input_offset_ = 0;          // bytes of original input seen by the validator
  std::vector<std::pair<size_t, long>> offset_deltas_;  // (scan offset, scan - original)
  long current_delta_ = 0;

  // Scanner.
  std::string buffer_;
  size_t head_ = 0;       // first unconsumed byte of buffer_
  size_t base_ = 0;       // scan offset of buffer_[0]

  // Tool-call block state.
  std::string gap_;               // text between markers that must be ">\n" (first bytes)
  bool gap_overflow_ = false;
  size_t gap_offset_ = std::string::npos;
  bool tail_text_ = false;        // text between </｜DSML｜tool_calls> and <｜end▁of▁sentence｜>
  size_t tail_offset_ = 0;
  std::string header_;            // invoke header text
  size_t header_offset_ = 0;
  std::string param_;             // parameter text
  size_t param_offset_ = 0;
  bool in_invoke_ = false;        // a tool call has started (header parsed)
  bool invoke_dropped_ = false;   // tolerant: header unreadable, the call is skipped
  std::string tool_name_;
  std::vector<std::pair<std::string, std::pair<std::string, bool>>> args_;  // name → (value, is_string)
  std::unordered_set<std::string> arg_names_;
  bool after_eos_reported_ = false;
};

}  // namespace paddock::v4
