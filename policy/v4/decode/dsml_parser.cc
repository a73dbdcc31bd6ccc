#include "policy/v4/decode/dsml_parser.h"
#include "policy/v4/json_quote.h"

#include <algorithm>
#include <array>
#include <limits>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

namespace paddock::v4 {
namespace {

constexpr std::string_view kThinkEndS = "</think>";
constexpr std::string_view kThinkStartS = "<think>";
constexpr std::string_view kToolCallsStartS = "\n\n<｜DSML｜tool_calls";
constexpr std::string_view kToolCallsEndS = "</｜DSML｜tool_calls>";
constexpr std::string_view kEosS = "<｜end▁of▁sentence｜>";
constexpr std::string_view kBosS = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kDsmlS = "｜DSML｜";
constexpr std::string_view kInvokeS = "<｜DSML｜invoke";
constexpr std::string_view kInvokeCloseS = "</｜DSML｜invoke";
constexpr std::string_view kParamOpenS = "<｜DSML｜parameter";
constexpr std::string_view kParamCloseS = "/｜DSML｜parameter";
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum PatternId {
  kThinkEnd,
  kToolCallsStart,
  kEos,
  kBos,
  kThinkStart,
  kDsml,
  kInvoke,
  kToolCallsEnd,
  kParamOpen,
  kInvokeClose,
  kParamClose,
};

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool EndsWith(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Decodes one code point of valid UTF-8 at s[i]; returns its length.
size_t DecodeUtf8(std::string_view s, size_t i, uint32_t* cp) {
  unsigned char c = s[i];
  size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  if (i + len > s.size()) {
    *cp = c;
    return 1;
  }
  uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *cp = v;
  return len;
}

// Python's str.isspace() (what re's \s matches in a str pattern).
bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// re.findall(r'^\s*name="(.*?)">\n$', header, flags=re.DOTALL) has one match.
bool ParseInvokeHeader(std::string_view h, std::string* name) {
  size_t i = 0;
  while (i < h.size()) {
    uint32_t cp;
    size_t len = DecodeUtf8(h, i, &cp);
    if (!IsPySpace(cp)) break;
    i += len;
  }
  if (!StartsWith(h.substr(i), "name=\"")) return false;
  std::string_view r = h.substr(i + 6);
  // `$` also matches before a final newline, and (.*?) takes the shortest name.
  if (EndsWith(r, "\">\n\n")) {
    *name = std::string(r.substr(0, r.size() - 4));
    return true;
  }
  if (EndsWith(r, "\">\n")) {
    *name = std::string(r.substr(0, r.size() - 3));
    return true;
  }
  return false;
}

// re.findall(r'^ name="(.*?)" string="(true|false)">(.*?)<$', param, flags=re.DOTALL).
bool ParseParamStrict(std::string_view c, std::string* name, bool* is_string, std::string* value) {
  if (!StartsWith(c, " name=\"")) return false;
  std::string_view r = c.substr(7);
  size_t tail;
  if (EndsWith(r, "<\n")) {
    tail = 2;
  } else if (EndsWith(r, "<")) {
    tail = 1;
  } else {
    return false;
  }
  constexpr std::string_view kSep = "\" string=\"";
  for (size_t from = 0;;) {
    size_t p = r.find(kSep, from);
    if (p == std::string_view::npos) return false;
    std::string_view after = r.substr(p + kSep.size());
    for (std::string_view flag : {std::string_view("true\">"), std::string_view("false\">")}) {
      if (!StartsWith(after, flag)) continue;
      size_t vstart = p + kSep.size() + flag.size();
      if (vstart + tail <= r.size()) {
        *name = std::string(r.substr(0, p));
        *is_string = flag[0] == 't';
        *value = std::string(r.substr(vstart, r.size() - tail - vstart));
        return true;
      }
    }
    from = p + 1;
  }
}

// Tolerant: reads name="…", string="…" and the value after the first '">'.
bool ParseParamLenient(std::string_view c, std::string* name, std::optional<bool>* is_string,
                       std::string* value) {
  size_t n = c.find("name=\"");
  if (n == std::string_view::npos) return false;
  size_t ne = c.find('"', n + 6);
  if (ne == std::string_view::npos) return false;
  *name = std::string(c.substr(n + 6, ne - n - 6));
  is_string->reset();
  size_t from = ne + 1;  // where to look for the end of the attributes
  size_t s = c.find("string=\"", ne);
  size_t gt = c.find('>', ne);
  if (s != std::string_view::npos && (gt == std::string_view::npos || s < gt)) {
    size_t se = c.find('"', s + 8);
    if (se != std::string_view::npos) {
      std::string_view flag = c.substr(s + 8, se - s - 8);
      if (flag == "true") *is_string = true;
      if (flag == "false") *is_string = false;
      from = se + 1;
    }
  }
  gt = c.find('>', std::min(from, c.size()));
  size_t vstart = gt == std::string_view::npos ? c.size() : gt + 1;
  std::string_view v = c.substr(vstart);
  if (EndsWith(v, "<\n")) {
    v.remove_suffix(2);
  } else if (EndsWith(v, "<")) {
    v.remove_suffix(1);
  }
  *value = std::string(v);
  return true;
}

bool IsJson(const std::string& text, nlohmann::json* out = nullptr) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return false;
  if (out) *out = std::move(j);
  return true;
}

size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool TypeMatches(const nlohmann::json& v, std::string_view t) {
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") {
    if (v.is_number_integer()) return true;
    if (v.is_number_float()) {
      double d = v.get<double>();
      return std::isfinite(d) && std::floor(d) == d;
    }
    return false;
  }
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  return true;  // unknown type names constrain nothing
}

}  // namespace

struct DsmlParser::Pattern {
  std::string_view text;
  int id;
  bool forbidden;  // a special token that may not appear in reasoning/content
};

const char* DsmlEventKindName(DsmlEvent::Kind kind) {
  switch (kind) {
    case DsmlEvent::Kind::kReasoning: return "reasoning";
    case DsmlEvent::Kind::kContent: return "content";
    case DsmlEvent::Kind::kToolCallStart: return "tool_call_start";
    case DsmlEvent::Kind::kParameter: return "parameter";
    case DsmlEvent::Kind::kToolCallEnd: return "tool_call_end";
    case DsmlEvent::Kind::kEndOfTurn: return "end_of_turn";
    case DsmlEvent::Kind::kError: return "error";
  }
  return "?";
}

std::vector<DsmlEvent> CoalesceEvents(const std::vector<DsmlEvent>& events) {
  std::vector<DsmlEvent> out;
  for (const DsmlEvent& e : events) {
    bool text = e.kind == DsmlEvent::Kind::kReasoning || e.kind == DsmlEvent::Kind::kContent;
    if (text && !out.empty() && out.back().kind == e.kind) {
      out.back().text += e.text;
    } else {
      out.push_back(e);
    }
  }
  return out;
}

std::string DescribeEvents(const std::vector<DsmlEvent>& events) {
  std::string s;
  for (const DsmlEvent& e : events) {
    s += DsmlEventKindName(e.kind);
    switch (e.kind) {
      case DsmlEvent::Kind::kReasoning:
      case DsmlEvent::Kind::kContent:
      case DsmlEvent::Kind::kToolCallStart:
        s += " " + JsonQuote(e.text);
        break;
      case DsmlEvent::Kind::kParameter:
        s += fmt::format(" {} string={} {}", JsonQuote(e.text), e.is_string, JsonQuote(e.value));
        break;
      case DsmlEvent::Kind::kToolCallEnd:
        s += " " + JsonQuote(e.text) + " " + e.value;
        break;
      case DsmlEvent::Kind::kEndOfTurn:
        break;
      case DsmlEvent::Kind::kError:
        s += fmt::format(" {} @{}: {}", DecodeErrorKindName(e.error_kind), e.offset, e.value);
        break;
    }
    s += "\n";
  }
  return s;
}

std::string JsonQuote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  AppendJsonQuoted(out, s);
  return out;
}

std::optional<std::string> CheckJsonSchema(const nlohmann::json& value, const nlohmann::json& schema,
                                           const std::string& path) {
  if (schema.is_boolean()) {
    if (schema.get<bool>()) return std::nullopt;
    return fmt::format("{}: no value is allowed here", path);
  }
  if (!schema.is_object()) return std::nullopt;

  if (auto it = schema.find("type"); it != schema.end()) {
    bool ok = false;
    std::string names;
    if (it->is_string()) {
      ok = TypeMatches(value, it->get<std::string>());
      names = it->get<std::string>();
    } else if (it->is_array()) {
      for (const auto& t : *it) {
        if (!t.is_string()) continue;
        ok = ok || TypeMatches(value, t.get<std::string>());
        names += (names.empty() ? "" : "|") + t.get<std::string>();
      }
      if (it->empty()) ok = true;
    } else {
      ok = true;
    }
    if (!ok) return fmt::format("{}: expected {}, got {}", path, names, value.type_name());
  }
  if (auto it = schema.find("enum"); it != schema.end() && it->is_array()) {
    if (std::find(it->begin(), it->end(), value) == it->end())
      return fmt::format("{}: {} is not one of {}", path, value.dump(), it->dump());
  }
  if (auto it = schema.find("const"); it != schema.end()) {
    if (*it != value) return fmt::format("{}: must be {}", path, it->dump());
  }
  if (auto it = schema.find("anyOf"); it != schema.end() && it->is_array() && !it->empty()) {
    bool any = false;
    for (const auto& s : *it) any = any || !CheckJsonSchema(value, s, path);
    if (!any) return fmt::format("{}: matches none of anyOf", path);
  }
  if (auto it = schema.find("oneOf"); it != schema.end() && it->is_array() && !it->empty()) {
    int n = 0;
    for (const auto& s : *it) n += !CheckJsonSchema(value, s, path);
    if (n != 1) return fmt::format("{}: matches {} of oneOf, expected exactly 1", path, n);
  }
  if (auto it = schema.find("allOf"); it != schema.end() && it->is_array()) {
    for (const auto& s : *it)
      if (auto e = CheckJsonSchema(value, s, path)) return e;
  }

  if (value.is_object()) {
    const nlohmann::json* props = nullptr;
    if (auto it = schema.find("properties"); it != schema.end() && it->is_object()) props = &*it;
    if (auto it = schema.find("required"); it != schema.end() && it->is_array()) {
      for (const auto& k : *it)
        if (k.is_string() && !value.contains(k.get<std::string>()))
          return fmt::format("{}: missing required property {}", path, JsonQuote(k.get<std::string>()));
    }
    auto additional = schema.find("additionalProperties");
    for (auto kv = value.begin(); kv != value.end(); ++kv) {
      std::string sub = path + "." + kv.key();
      if (props && props->contains(kv.key())) {
        if (auto e = CheckJsonSchema(kv.value(), (*props)[kv.key()], sub)) return e;
      } else if (additional != schema.end()) {
        if (additional->is_boolean() && !additional->get<bool>())
          return fmt::format("{}: unexpected property {}", path, JsonQuote(kv.key()));
        if (additional->is_object())
          if (auto e = CheckJsonSchema(kv.value(), *additional, sub)) return e;
      }
    }
  }
  if (value.is_array()) {
    if (auto it = schema.find("minItems"); it != schema.end() && it->is_number_unsigned() &&
                                           value.size() < it->get<size_t>())
      return fmt::format("{}: fewer than {} items", path, it->get<size_t>());
    if (auto it = schema.find("maxItems"); it != schema.end() && it->is_number_unsigned() &&
                                           value.size() > it->get<size_t>())
      return fmt::format("{}: more than {} items", path, it->get<size_t>());
    if (auto it = schema.find("items"); it != schema.end() && (it->is_object() || it->is_boolean())) {
      for (size_t i = 0; i < value.size(); ++i)
        if (auto e = CheckJsonSchema(value[i], *it, fmt::format("{}[{}]", path, i))) return e;
    }
  }
  if (value.is_string()) {
    size_t n = CodePoints(value.get_ref<const std::string&>());
    if (auto it = schema.find("minLength"); it != schema.end() && it->is_number_unsigned() &&
                                            n < it->get<size_t>())
      return fmt::format("{}: shorter than {}", path, it->get<size_t>());
    if (auto it = schema.find("maxLength"); it != schema.end() && it->is_number_unsigned() &&
                                            n > it->get<size_t>())
      return fmt::format("{}: longer than {}", path, it->get<size_t>());
  }
  if (value.is_number()) {
    double d = value.get<double>();
    if (auto it = schema.find("minimum"); it != schema.end() && it->is_number() && d < it->get<double>())
      return fmt::format("{}: below minimum {}", path, it->dump());
    if (auto it = schema.find("maximum"); it != schema.end() && it->is_number() && d > it->get<double>())
      return fmt::format("{}: above maximum {}", path, it->dump());
    if (auto it = schema.find("exclusiveMinimum");
        it != schema.end() && it->is_number() && d <= it->get<double>())
      return fmt::format("{}: not above {}", path, it->dump());
    if (auto it = schema.find("exclusiveMaximum");
        it != schema.end() && it->is_number() && d >= it->get<double>())
      return fmt::format("{}: not below {}", path, it->dump());
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------

DsmlParser::DsmlParser(const DsmlParserOptions& options)
    : options_(options), state_(options.thinking_mode ? State::kReasoning : State::kContent) {
  options_.tools = nullptr;  // copied below; the caller's pointer need not outlive us
  if (options.tools && options.tools->is_array()) {
    have_tools_ = true;
    for (const auto& t : *options.tools) {
      const nlohmann::json* f = &t;
      if (t.is_object() && t.contains("function") && t["function"].is_object()) f = &t["function"];
      if (!f->is_object()) continue;
      auto name = f->find("name");
      if (name == f->end() || !name->is_string()) continue;
      auto params = f->find("parameters");
      tool_schemas_[name->get<std::string>()] =
          params != f->end() ? *params : nlohmann::json::object();
    }
  }
}

const std::vector<DsmlParser::Pattern>& DsmlParser::Patterns() const {
  using P = Pattern;
  static const std::vector<P> reasoning_strict = {
      {kThinkEndS, kThinkEnd, false}, {kToolCallsStartS, kToolCallsStart, false},
      {kBosS, kBos, true},            {kEosS, kEos, true},
      {kThinkStartS, kThinkStart, true}, {kDsmlS, kDsml, true}};
  static const std::vector<P> reasoning_tolerant = {
      {kThinkEndS, kThinkEnd, false}, {kToolCallsStartS, kToolCallsStart, false},
      {kEosS, kEos, false},           {kBosS, kBos, true},
      {kThinkStartS, kThinkStart, true}, {kDsmlS, kDsml, true}};
  static const std::vector<P> content = {
      {kEosS, kEos, false},         {kToolCallsStartS, kToolCallsStart, false},
      {kBosS, kBos, true},          {kThinkStartS, kThinkStart, true},
      {kThinkEndS, kThinkEnd, true}, {kDsmlS, kDsml, true}};
  // In strict mode the extra markers (eos, parameter) only serve to reject early:
  // the reference would read past them, so its ">\n" check fails.
  static const std::vector<P> gap = {{kInvokeS, kInvoke, false},
                                     {kToolCallsEndS, kToolCallsEnd, false},
                                     {kEosS, kEos, false},
                                     {kParamOpenS, kParamOpen, false}};
  static const std::vector<P> header_strict = {{kParamOpenS, kParamOpen, false},
                                               {kInvokeCloseS, kInvokeClose, false}};
  static const std::vector<P> header_tolerant = {
      {kParamOpenS, kParamOpen, false}, {kInvokeCloseS, kInvokeClose, false},
      {kInvokeS, kInvoke, false},       {kToolCallsEndS, kToolCallsEnd, false},
      {kEosS, kEos, false}};
  static const std::vector<P> param_strict = {{kParamCloseS, kParamClose, false}};
  static const std::vector<P> param_tolerant = {
      {kParamCloseS, kParamClose, false}, {kParamOpenS, kParamOpen, false},
      {kInvokeCloseS, kInvokeClose, false}, {kInvokeS, kInvoke, false},
      {kToolCallsEndS, kToolCallsEnd, false}, {kEosS, kEos, false}};
  static const std::vector<P> after_param = {
      {kParamOpenS, kParamOpen, false}, {kInvokeCloseS, kInvokeClose, false},
      {kInvokeS, kInvoke, false},       {kToolCallsEndS, kToolCallsEnd, false},
      {kEosS, kEos, false}};
  static const std::vector<P> tail = {{kEosS, kEos, false}};
  static const std::vector<P> none = {};
  switch (state_) {
    case State::kReasoning: return strict() ? reasoning_strict : reasoning_tolerant;
    case State::kContent: return content;
    case State::kGap: return gap;
    case State::kInvokeHeader: return strict() ? header_strict : header_tolerant;
    case State::kParam: return strict() ? param_strict : param_tolerant;
    case State::kAfterParam: return after_param;
    case State::kTail: return tail;
    case State::kAfterEos:
    case State::kDone: return none;
  }
  return none;
}

void DsmlParser::Feed(std::string_view chunk) {
  if (finished_ || stopped() || chunk.empty()) return;
  std::string joined;
  std::string_view data = chunk;
  if (!utf8_pending_.empty()) {
    joined = utf8_pending_ + std::string(chunk);
    data = joined;
  }
  size_t data_base = input_offset_ - utf8_pending_.size();  // original offset of data[0]
  input_offset_ += chunk.size();
  utf8_pending_.clear();

  size_t i = 0, valid_start = 0;
  const size_t n = data.size();
  while (i < n) {
    unsigned char c = data[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c == 0xE0) {
      len = 3, lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      len = 3;
    } else if (c == 0xED) {
      len = 3, hi = 0x9F;
    } else if (c == 0xF0) {
      len = 4, lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      len = 4;
    } else if (c == 0xF4) {
      len = 4, hi = 0x8F;
    }
    size_t j = 1;
    if (len) {
      for (; j < len && i + j < n; ++j) {
        unsigned char b = data[i + j];
        if (j == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
      }
      if (j == len) {
        i += len;
        continue;
      }
      if (i + j == n) {  // incomplete sequence at the end of the chunk: wait for more
        utf8_pending_ = std::string(data.substr(i));
        break;
      }
    }
    // Invalid: the maximal subpart data[i, i+j) becomes one U+FFFD (tolerant).
    FeedValid(data.substr(valid_start, i - valid_start));
    if (stopped()) return;
    size_t scan_at = base_ + buffer_.size();
    errors_.push_back({DecodeErrorKind::kInvalidUtf8,
                       fmt::format("invalid UTF-8 byte 0x{:02x}", c), data_base + i});
    if (strict()) {
      error_ = errors_.back();
      Emit({DsmlEvent::Kind::kError, "", error_->message, false, error_->kind, error_->offset});
      return;
    }
    Emit({DsmlEvent::Kind::kError, "", errors_.back().message, false, errors_.back().kind,
          errors_.back().offset});
    current_delta_ += static_cast<long>(kReplacement.size()) - static_cast<long>(j);
    offset_deltas_.push_back({scan_at + kReplacement.size(), current_delta_});
    FeedValid(kReplacement);
    i += j;
    valid_start = i;
  }
  size_t valid_end = utf8_pending_.empty() ? n : n - utf8_pending_.size();
  FeedValid(data.substr(valid_start, valid_end - valid_start));
}

void DsmlParser::FeedValid(std::string_view bytes) {
  if (bytes.empty() || stopped()) return;
  buffer_.append(bytes);
  Pump(false);
}

void DsmlParser::Finish() {
  if (finished_) return;
  if (!stopped() && !strict() && (state_ == State::kReasoning || state_ == State::kContent)) {
    // Cut off inside "\n\n<｜DSML｜tool_calls": report it rather than keep the
    // fragment as text (strict mode keeps it, as the reference does).
    std::string tail = buffer_.substr(head_) + utf8_pending_;
    for (size_t q = 0; q + 6 <= tail.size(); ++q) {
      std::string_view t(tail.data() + q, tail.size() - q);
      if (t.size() < kToolCallsStartS.size() && StartsWith(kToolCallsStartS, t)) {
        Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside <｜DSML｜tool_calls>", base_ + head_ + q);
        if (head_ + q <= buffer_.size()) buffer_.resize(head_ + q);
        utf8_pending_.clear();
        break;
      }
    }
  }
  if (!stopped() && !utf8_pending_.empty()) {
    // A truncated multi-byte sequence at the very end.
    size_t at = input_offset_ - utf8_pending_.size();
    size_t scan_at = base_ + buffer_.size();
    errors_.push_back({DecodeErrorKind::kInvalidUtf8, "truncated UTF-8 sequence at the end", at});
    Emit({DsmlEvent::Kind::kError, "", errors_.back().message, false, errors_.back().kind, at});
    if (strict()) {
      error_ = errors_.back();
    } else {
      current_delta_ += static_cast<long>(kReplacement.size()) - static_cast<long>(utf8_pending_.size());
      offset_deltas_.push_back({scan_at + kReplacement.size(), current_delta_});
      buffer_.append(kReplacement);
    }
    utf8_pending_.clear();
  }
  if (!stopped()) Pump(true);
  finished_ = true;
}

std::vector<DsmlEvent> DsmlParser::TakeEvents() {
  std::vector<DsmlEvent> out;
  out.swap(events_);
  return out;
}

size_t DsmlParser::OriginalOffset(size_t scan_offset) const {
  auto it = std::upper_bound(offset_deltas_.begin(), offset_deltas_.end(),
                             std::make_pair(scan_offset, std::numeric_limits<long>::max()));
  long delta = it == offset_deltas_.begin() ? 0 : std::prev(it)->second;
  long off = static_cast<long>(scan_offset) - delta;
  return off < 0 ? 0 : static_cast<size_t>(off);
}

void DsmlParser::Pump(bool final) {
  // First bytes of every marker: '<', '\n', '/', and 0xEF (the lead byte of '｜').
  static const auto kFirst = [] {
    std::array<bool, 256> a{};
    for (std::string_view s : {kThinkEndS, kThinkStartS, kToolCallsStartS, kToolCallsEndS, kEosS,
                               kBosS, kDsmlS, kInvokeS, kInvokeCloseS, kParamOpenS, kParamCloseS})
      a[static_cast<unsigned char>(s[0])] = true;
    return a;
  }();

  while (!stopped()) {
    const std::vector<Pattern>& pats = Patterns();
    const size_t end = buffer_.size();
    size_t q = head_;
    const Pattern* hit = nullptr;
    bool wait = false;
    if (!pats.empty()) {
      for (; q < end; ++q) {
        if (!kFirst[static_cast<unsigned char>(buffer_[q])]) continue;
        const size_t avail = end - q;
        bool partial = false;
        for (const Pattern& p : pats) {
          if (avail >= p.text.size()) {
            if (std::memcmp(buffer_.data() + q, p.text.data(), p.text.size()) == 0) {
              // The earliest marker wins; at equal positions the first listed,
              // so a longer-priority marker still incomplete here must be waited for.
              if (partial) {
                wait = true;
              } else {
                hit = &p;
              }
              break;
            }
          } else if (!final && std::memcmp(buffer_.data() + q, p.text.data(), avail) == 0) {
            partial = true;
          }
        }
        if (hit || wait || partial) {
          wait = wait || (!hit && partial);
          break;
        }
      }
    } else {
      q = end;
    }
    if (q > head_) {
      std::string_view text(buffer_.data() + head_, q - head_);
      size_t off = base_ + head_;
      head_ = q;
      OnText(text, off);
      if (stopped()) break;
    }
    if (hit) {
      size_t off = base_ + q;
      head_ = q + hit->text.size();
      OnMatch(*hit, off);
      continue;
    }
    (void)wait;
    break;
  }
  // Keep only the unconsumed tail (at most one marker's length).
  if (head_ > 0) {
    buffer_.erase(0, head_);
    base_ += head_;
    head_ = 0;
  }
  if (final && !stopped()) {
    OnEnd(base_);
    if (!strict() && state_ != State::kAfterEos && state_ != State::kDone) EndTurn();
    if (strict() && !failed()) {
      if (deferred_) {
        Fail(deferred_->kind, deferred_->message, 0);
        error_->offset = deferred_->offset;
        errors_.back().offset = deferred_->offset;
        events_.back().offset = deferred_->offset;
      } else if (state_ != State::kAfterEos) {
        EndTurn();
      }
    }
    state_ = State::kDone;
  }
}

void DsmlParser::Emit(DsmlEvent e) { events_.push_back(std::move(e)); }

void DsmlParser::EmitText(DsmlEvent::Kind kind, std::string_view text) {
  if (text.empty()) return;
  if (!events_.empty() && events_.back().kind == kind) {
    events_.back().text.append(text);
    return;
  }
  DsmlEvent e{kind};
  e.text = std::string(text);
  Emit(std::move(e));
}

void DsmlParser::Fail(DecodeErrorKind kind, std::string message, size_t scan_offset) {
  DecodeError err{kind, std::move(message), OriginalOffset(scan_offset)};
  errors_.push_back(err);
  Emit({DsmlEvent::Kind::kError, "", err.message, false, err.kind, err.offset});
  if (strict()) error_ = std::move(err);
}

void DsmlParser::OnText(std::string_view text, size_t offset) {
  switch (state_) {
    case State::kReasoning:
      EmitText(DsmlEvent::Kind::kReasoning, text);
      break;
    case State::kContent:
      EmitText(DsmlEvent::Kind::kContent, text);
      break;
    case State::kGap:
    case State::kAfterParam:
      if (gap_offset_ == std::string::npos) gap_offset_ = offset;
      if (gap_.size() + text.size() <= 16) {
        gap_.append(text);
      } else {
        gap_overflow_ = true;
      }
      break;
    case State::kInvokeHeader:
      header_.append(text);
      break;
    case State::kParam:
      param_.append(text);
      break;
    case State::kTail:
      if (!tail_text_) tail_offset_ = offset;
      tail_text_ = true;
      break;
    case State::kAfterEos:
      if (!after_eos_reported_) {
        after_eos_reported_ = true;
        Fail(DecodeErrorKind::kTextAfterEndOfSentence, "text after <｜end▁of▁sentence｜>", offset);
      }
      break;
    case State::kDone:
      break;
  }
}

void DsmlParser::ToGap() {
  state_ = State::kGap;
  ResetGap();
}

void DsmlParser::EndTurn() {
  Emit({DsmlEvent::Kind::kEndOfTurn});
  state_ = State::kAfterEos;
}

void DsmlParser::StartInvoke(size_t offset) {
  state_ = State::kInvokeHeader;
  header_.clear();
  header_offset_ = offset + kInvokeS.size();
  in_invoke_ = false;
  invoke_dropped_ = false;
  tool_name_.clear();
  args_.clear();
  arg_names_.clear();
}

void DsmlParser::FinishHeader(size_t offset, bool /*unused*/) {
  std::string name;
  bool ok = ParseInvokeHeader(header_, &name);
  in_invoke_ = true;
  if (!ok) {
    Fail(DecodeErrorKind::kMalformedBlock, "malformed invoke header (expected name=\"…\">\\n)",
         header_offset_);
    if (stopped()) return;
    size_t n = header_.find("name=\"");
    size_t e = n == std::string::npos ? n : header_.find('"', n + 6);
    if (e == std::string::npos) {
      invoke_dropped_ = true;
      return;
    }
    name = header_.substr(n + 6, e - n - 6);
  }
  tool_name_ = name;
  DsmlEvent start{DsmlEvent::Kind::kToolCallStart};
  start.text = name;
  Emit(std::move(start));
  if (have_tools_ && !tool_schemas_.count(name))
    Fail(DecodeErrorKind::kUnknownTool, fmt::format("unknown tool {}", JsonQuote(name)),
         header_offset_);
}

void DsmlParser::FinishParam(size_t offset, bool closed) {
  std::string name, value;
  bool is_string = true;
  bool ok = closed ? ParseParamStrict(param_, &name, &is_string, &value)
                   : ParseParamStrict(param_ + "<", &name, &is_string, &value);
  if (!ok) {
    Fail(DecodeErrorKind::kMalformedParameter,
         "malformed parameter (expected name=\"…\" string=\"true|false\">…<)", param_offset_);
    if (stopped()) return;
    std::optional<bool> flag;
    if (!ParseParamLenient(param_, &name, &flag, &value)) return;  // nothing to salvage
    is_string = flag.has_value() ? *flag : !IsJson(value);
  }
  if (invoke_dropped_ || !in_invoke_) return;
  if (!arg_names_.insert(name).second) {
    Fail(DecodeErrorKind::kDuplicateParameter,
         fmt::format("duplicate parameter {} in {}", JsonQuote(name), JsonQuote(tool_name_)),
         param_offset_);
    return;  // tolerant: the first value is kept
  }
  if (!is_string && (have_tools_ || !strict()) && !IsJson(value)) {
    Fail(DecodeErrorKind::kMalformedParameter,
         fmt::format("parameter {} has string=\"false\" but is not JSON", JsonQuote(name)),
         param_offset_);
    if (stopped()) return;
  }
  DsmlEvent e{DsmlEvent::Kind::kParameter};
  e.text = name;
  e.value = value;
  e.is_string = is_string;
  Emit(std::move(e));
  args_.push_back({std::move(name), {std::move(value), is_string}});
}

void DsmlParser::EndInvoke(size_t offset) {
  if (!in_invoke_ || invoke_dropped_) {
    in_invoke_ = false;
    invoke_dropped_ = false;
    return;
  }
  in_invoke_ = false;
  std::string arguments = "{";
  for (size_t i = 0; i < args_.size(); ++i) {
    if (i) arguments += ", ";
    arguments += JsonQuote(args_[i].first);
    arguments += ": ";
    arguments += args_[i].second.second ? JsonQuote(args_[i].second.first) : args_[i].second.first;
  }
  arguments += "}";
  if (have_tools_) {
    auto it = tool_schemas_.find(tool_name_);
    if (it != tool_schemas_.end()) {
      nlohmann::json obj = nlohmann::json::object();
      for (const auto& [k, v] : args_) {
        if (v.second) {
          obj[k] = v.first;
        } else {
          nlohmann::json j;
          if (IsJson(v.first, &j)) obj[k] = std::move(j);
        }
      }
      if (auto why = CheckJsonSchema(obj, it->second)) {
        Fail(DecodeErrorKind::kSchemaMismatch,
             fmt::format("arguments of {} do not match its schema: {}", JsonQuote(tool_name_), *why),
             offset);
        if (stopped()) return;
      }
    }
  }
  DsmlEvent e{DsmlEvent::Kind::kToolCallEnd};
  e.text = tool_name_;
  e.value = std::move(arguments);
  Emit(std::move(e));
}

void DsmlParser::OpenParam(size_t value_offset) {
  state_ = State::kParam;
  param_.clear();
  param_offset_ = value_offset;
}

void DsmlParser::ToTail() {
  state_ = State::kTail;
  tail_text_ = false;
}

// An invoke that `p` cut short (already reported) ends here, and `p` starts
// what it marks: the next invoke, the block's end, or the turn's end.
void DsmlParser::CloseInvokeCutShortBy(const Pattern& p, size_t offset) {
  EndInvoke(offset);
  if (p.id == kInvoke) {
    StartInvoke(offset);
  } else if (p.id == kToolCallsEnd) {
    ToTail();
  } else if (p.id == kEos) {
    Fail(DecodeErrorKind::kUnclosedBlock, "tool_calls block not closed", offset);
    EndTurn();
  }
}

void DsmlParser::OnMatch(const Pattern& p, size_t offset) {
  if (p.forbidden) {
    auto kind = DecodeErrorKind::kSpecialTokenInContent;
    std::string msg = fmt::format("special token {} inside {}", p.text,
                                  state_ == State::kReasoning ? "reasoning" : "content");
    if (strict()) {
      // The reference checks this last: a structural error later on wins.
      if (!deferred_) deferred_ = DecodeError{kind, msg, OriginalOffset(offset)};
      EmitText(state_ == State::kReasoning ? DsmlEvent::Kind::kReasoning : DsmlEvent::Kind::kContent,
               p.text);
    } else {
      Fail(kind, std::move(msg), offset);  // and drop the token from the text
    }
    return;
  }
  const size_t after = offset + p.text.size();
  switch (state_) {
    case State::kReasoning:
      if (p.id == kThinkEnd) {
        state_ = State::kContent;
      } else if (p.id == kToolCallsStart) {
        Fail(DecodeErrorKind::kMissingThinkEnd, "tool calls before </think>", offset);
        if (!stopped()) ToGap();
      } else if (p.id == kEos) {
        Fail(DecodeErrorKind::kMissingThinkEnd, "end of turn before </think>", offset);
        EndTurn();
      }
      break;
    case State::kContent:
      if (p.id == kEos) {
        EndTurn();
      } else if (p.id == kToolCallsStart) {
        ToGap();
      }
      break;
    case State::kGap:
      if (p.id == kInvoke || p.id == kToolCallsEnd) {
        if (!GapIsNewline()) {
          Fail(DecodeErrorKind::kMalformedBlock,
               fmt::format("expected \">\\n\" before {}", p.text),
               gap_offset_ == std::string::npos ? offset : gap_offset_);
          if (stopped()) return;
        }
        if (p.id == kInvoke) {
          StartInvoke(offset);
        } else {
          ToTail();
        }
      } else if (p.id == kEos) {
        Fail(DecodeErrorKind::kUnclosedBlock, "tool_calls block not closed", offset);
        if (!stopped()) EndTurn();
      } else if (p.id == kParamOpen) {
        Fail(DecodeErrorKind::kMalformedBlock, "parameter outside an invoke", offset);
        if (stopped()) return;
        in_invoke_ = true;
        invoke_dropped_ = true;
        OpenParam(after);
      }
      break;
    case State::kInvokeHeader:
      FinishHeader(offset, true);
      if (stopped()) return;
      if (p.id == kParamOpen) {
        OpenParam(after);
      } else if (p.id == kInvokeClose) {
        EndInvoke(offset);
        if (!stopped()) ToGap();
      } else {  // tolerant: kInvoke, kToolCallsEnd, kEos
        Fail(DecodeErrorKind::kUnclosedBlock, "invoke not closed", offset);
        CloseInvokeCutShortBy(p, offset);
      }
      break;
    case State::kParam:
      if (p.id == kParamClose) {
        FinishParam(offset, true);
        if (stopped()) return;
        state_ = State::kAfterParam;
        ResetGap();
        break;
      }
      // tolerant only: the parameter was never closed.
      Fail(DecodeErrorKind::kUnclosedBlock, "parameter not closed", offset);
      FinishParam(offset, false);
      if (p.id == kParamOpen) {
        OpenParam(after);
        break;
      }
      EndInvoke(offset);
      if (p.id == kInvokeClose) ToGap();
      if (p.id == kInvoke) {
        Fail(DecodeErrorKind::kUnclosedBlock, "invoke not closed", offset);
        StartInvoke(offset);
      }
      if (p.id == kToolCallsEnd) {
        Fail(DecodeErrorKind::kUnclosedBlock, "invoke not closed", offset);
        ToTail();
      }
      if (p.id == kEos) {
        Fail(DecodeErrorKind::kUnclosedBlock, "invoke and tool_calls block not closed", offset);
        EndTurn();
      }
      break;
    case State::kAfterParam:
      if (p.id == kParamOpen || p.id == kInvokeClose) {
        if (!GapIsNewline()) {
          Fail(DecodeErrorKind::kMalformedBlock,
               fmt::format("expected \">\\n\" before {}", p.text),
               gap_offset_ == std::string::npos ? offset : gap_offset_);
          if (stopped()) return;
        }
        if (p.id == kParamOpen) {
          OpenParam(after);
        } else {
          EndInvoke(offset);
          if (!stopped()) ToGap();
        }
        break;
      }
      // kInvoke, kToolCallsEnd, kEos: the invoke was never closed (strict: the
      // reference reads past the marker and its ">\n" check fails).
      Fail(DecodeErrorKind::kUnclosedBlock,
           fmt::format("invoke {} not closed before {}", JsonQuote(tool_name_), p.text), offset);
      if (stopped()) return;
      CloseInvokeCutShortBy(p, offset);
      break;
    case State::kTail:
      if (tail_text_) {
        Fail(DecodeErrorKind::kTextAfterToolCalls, "text after </｜DSML｜tool_calls>", tail_offset_);
        if (stopped()) return;
      }
      EndTurn();
      break;
    case State::kAfterEos:
    case State::kDone:
      break;
  }
}

void DsmlParser::OnEnd(size_t offset) {
  switch (state_) {
    case State::kReasoning:
      Fail(DecodeErrorKind::kMissingThinkEnd, "no </think> in thinking mode", offset);
      break;
    case State::kContent:
      Fail(DecodeErrorKind::kMissingEndOfSentence, "no <｜end▁of▁sentence｜>", offset);
      break;
    case State::kGap:
      // The reference stops at a block boundary without complaint.
      if (gap_offset_ == std::string::npos) {
        if (!strict()) Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside the tool_calls block", offset);
        break;
      }
      Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside the tool_calls block", gap_offset_);
      break;
    case State::kInvokeHeader: {
      std::string name;
      if (strict()) {
        if (!ParseInvokeHeader(header_, &name)) {
          Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside an invoke header", header_offset_);
          break;
        }
      } else {
        Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside an invoke", offset);
      }
      FinishHeader(offset, true);
      if (!stopped()) EndInvoke(offset);
      break;
    }
    case State::kParam:
      Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside a parameter", param_offset_);
      if (stopped()) break;
      FinishParam(offset, false);
      EndInvoke(offset);
      break;
    case State::kAfterParam:
      if (strict()) {
        if (GapIsNewline()) {
          EndInvoke(offset);
        } else {
          Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside an invoke",
               gap_offset_ == std::string::npos ? offset : gap_offset_);
        }
        break;
      }
      Fail(DecodeErrorKind::kUnclosedBlock, "cut off inside an invoke", offset);
      EndInvoke(offset);
      break;
    case State::kTail:
      if (tail_text_)
        Fail(DecodeErrorKind::kTextAfterToolCalls, "text after </｜DSML｜tool_calls>", tail_offset_);
      break;
    case State::kAfterEos:
    case State::kDone:
      break;
  }
}

}  // namespace paddock::v4
