#include "policy/v4/encode/json_text.h"
#include "policy/v4/json_quote.h"

#include <cstdint>
#include <limits>

#include <fmt/format.h>

namespace paddock::v4::internal {
namespace {

void Append(std::string& out, const nlohmann::ordered_json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        AppendJsonQuoted(out, it.key());
        out += ": ";
        Append(out, it.value());
      }
      out.push_back('}');
      break;
    }
    case nlohmann::json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v) {
        if (!first) out += ", ";
        first = false;
        Append(out, e);
      }
      out.push_back(']');
      break;
    }
    case nlohmann::json::value_t::string:
      AppendJsonQuoted(out, v.get_ref<const std::string&>());
      break;
    case nlohmann::json::value_t::number_float: {
      double d = v.get<double>();
      // Python writes these as bare words; nlohmann would write null.
      if (d != d) {
        out += "NaN";
      } else if (d == std::numeric_limits<double>::infinity()) {
        out += "Infinity";
      } else if (d == -std::numeric_limits<double>::infinity()) {
        out += "-Infinity";
      } else {
        out += v.dump();  // shortest round-trip, same switch to exponents as repr()
      }
      break;
    }
    default:
      out += v.dump();  // null, booleans, integers
  }
}

}  // namespace

std::string PyJsonDumps(const nlohmann::ordered_json& value) {
  std::string out;
  Append(out, value);
  return out;
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return false;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return false;
    i += len;
  }
  return true;
}

std::string FindInvalidUtf8(const nlohmann::ordered_json& value, const std::string& path) {
  if (value.is_string()) return IsValidUtf8(value.get_ref<const std::string&>()) ? "" : path;
  if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!IsValidUtf8(it.key())) return path.empty() ? "(an object key)" : path + " (an object key)";
      std::string sub = path.empty() ? it.key() : path + "." + it.key();
      std::string bad = FindInvalidUtf8(it.value(), sub);
      if (!bad.empty()) return bad;
    }
  } else if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      std::string bad = FindInvalidUtf8(value[i], fmt::format("{}[{}]", path, i));
      if (!bad.empty()) return bad;
    }
  }
  return "";
}

}  // namespace paddock::v4::internal
