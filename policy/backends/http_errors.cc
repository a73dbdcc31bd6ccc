#include "policy/backends/http_errors.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace paddock::policy {

std::string BodyExcerpt(std::string_view body, size_t max) {
  std::string out;
  for (size_t i = 0; i < body.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(body[i]);
    if (c == '\n' || c == '\r' || c == '\t') {
      out += ' ';
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (body.size() > max) out += "…";
  return out;
}

std::string ServerErrorMessage(std::string_view body) {
  auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    auto pick = [](const nlohmann::json& v) -> std::string {
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("message") && v["message"].is_string())
        return v["message"].get<std::string>();
      return {};
    };
    for (const char* key : {"error", "message", "detail"}) {
      if (j.contains(key)) {
        std::string m = pick(j[key]);
        if (m.empty() && !j[key].is_null()) m = j[key].dump();  // FastAPI's detail list
        if (!m.empty()) return BodyExcerpt(m, 500);
      }
    }
  }
  return BodyExcerpt(body);
}

Status StatusFromHttp(unsigned status, std::string_view body, std::string_view where) {
  std::string msg = fmt::format("HTTP {} from {}: {}", status, where, ServerErrorMessage(body));
  if (status >= 400 && status < 500) {
    switch (status) {
      case 401: return Status(Code::kUnauthenticated, msg);
      case 403: return Status(Code::kPermissionDenied, msg);
      case 404: return Status(Code::kNotFound, msg);
      case 429: return Status(Code::kResourceExhausted, msg);
      default: return Status(Code::kInvalidArgument, msg);
    }
  }
  if (status == 501) return Status(Code::kUnimplemented, msg);
  if (status >= 500) {
    return Status(Code::kUnavailable,
                  fmt::format("HTTP {} from {}: {}", status, where, BodyExcerpt(body)));
  }
  return Status(Code::kInternal, fmt::format("unexpected {}", msg));
}

}  // namespace paddock::policy
