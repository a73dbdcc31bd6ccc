// The string quoting of DeepSeek-V4's reference JSON output: `"`, `\` and
// control characters escaped (short forms where JSON has them, \u00XX for the
// rest); every other byte, non-ASCII included, copied as is
// (json.dumps(..., ensure_ascii=False)). Shared by the encoder, which renders
// schemas and arguments, and the decoder, which rebuilds `arguments`.
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

namespace paddock::v4 {

inline void AppendJsonQuoted(std::string& out, std::string_view s) {
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

}  // namespace paddock::v4
