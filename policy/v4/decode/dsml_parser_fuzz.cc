// libFuzzer target for the streaming DSML parser: the input is split into
// chunks at sizes drawn from its first bytes, and parsed in both modes, with
// and without tools, in thinking and chat mode. Checks invariants that must
// hold for any input: no crash, strict mode stops at exactly one error and
// agrees with DecodeCompletion, chunking does not change the events.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "policy/v4/decode/decoder.h"
#include "policy/v4/decode/dsml_parser.h"

namespace {

using paddock::v4::CoalesceEvents;
using paddock::v4::DsmlEvent;
using paddock::v4::DsmlMode;
using paddock::v4::DsmlParser;
using paddock::v4::DsmlParserOptions;

const nlohmann::json& Tools() {
  static const nlohmann::json tools = nlohmann::json::parse(R"([
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object",
      "properties": {"query": {"type": "string"}, "top_k": {"type": "integer"}},
      "required": ["query"]}}},
    {"type": "function", "function": {"name": "calc", "parameters": {"type": "object",
      "properties": {"a": {"type": ["number", "string"]}, "b": {}, "op": {"enum": ["+", "-"]}},
      "additionalProperties": false}}}])");
  return tools;
}

std::vector<DsmlEvent> Parse(std::string_view text, const DsmlParserOptions& o, uint64_t seed,
                             std::vector<paddock::v4::DecodeError>* errors) {
  DsmlParser parser(o);
  std::vector<DsmlEvent> events;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t n = seed == 0 ? text.size() : 1 + (seed % 13);
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    n = std::min(n, text.size() - pos);
    parser.Feed(text.substr(pos, n));
    for (auto& e : parser.TakeEvents()) events.push_back(std::move(e));
    pos += n;
  }
  parser.Finish();
  for (auto& e : parser.TakeEvents()) events.push_back(std::move(e));
  if (o.mode == DsmlMode::kStrict && parser.errors().size() > 1) std::abort();
  if (o.mode == DsmlMode::kStrict && parser.failed() != !parser.errors().empty()) std::abort();
  *errors = parser.errors();
  return CoalesceEvents(events);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const uint64_t seed = 1 + (flags >> 3);

  for (DsmlMode mode : {DsmlMode::kStrict, DsmlMode::kTolerant}) {
    DsmlParserOptions o;
    o.thinking_mode = flags & 1;
    o.mode = mode;
    o.tools = (flags & 2) ? &Tools() : nullptr;
    std::vector<paddock::v4::DecodeError> e_whole, e_chunked;
    auto whole = Parse(text, o, 0, &e_whole);
    auto chunked = Parse(text, o, seed, &e_chunked);
    if (!(whole == chunked)) std::abort();
    if (e_whole.size() != e_chunked.size()) std::abort();
    for (size_t i = 0; i < e_whole.size(); ++i)
      if (e_whole[i].kind != e_chunked[i].kind || e_whole[i].offset != e_chunked[i].offset) std::abort();
    for (const auto& e : e_whole)
      if (e.offset > text.size()) std::abort();
    if (mode == DsmlMode::kTolerant) {
      // Tolerant mode always ends the turn, exactly once.
      size_t ends = 0;
      for (const auto& e : whole) ends += e.kind == DsmlEvent::Kind::kEndOfTurn;
      if (ends != 1) std::abort();
    } else {
      auto decoded = paddock::v4::DecodeCompletion(text, o.thinking_mode, o.tools);
      if (std::holds_alternative<paddock::v4::DecodeError>(decoded) != !e_whole.empty()) std::abort();
      if (auto* msg = std::get_if<nlohmann::json>(&decoded)) (void)msg->dump();  // valid UTF-8
    }
  }
  return 0;
}
