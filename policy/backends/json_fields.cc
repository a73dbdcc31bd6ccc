#include "policy/backends/json_fields.h"

#include <limits>

#include <fmt/format.h>

#include "policy/backends/http_errors.h"

namespace paddock::policy {

Result<nlohmann::json> ParseJsonBody(std::string_view body, std::string_view where) {
  auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Error(Code::kDataLoss, "malformed JSON from {}: {}", where, BodyExcerpt(body, 120));
  }
  if (!j.is_object()) {
    return Error(Code::kDataLoss, "response from {} is not a JSON object: {}", where,
                 BodyExcerpt(body, 120));
  }
  return j;
}

Status TypeError(std::string_view path, std::string_view want, const nlohmann::json& got) {
  return Error(Code::kDataLoss, "response field '{}' should be {}, got {}: {}", path, want,
               got.type_name(), BodyExcerpt(got.dump(), 80));
}

Result<const nlohmann::json*> Field(const nlohmann::json& obj, std::string_view path,
                                    std::string_view key) {
  std::string full = path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
  if (!obj.is_object()) return TypeError(path, "an object", obj);
  auto it = obj.find(key);
  if (it == obj.end()) return Error(Code::kDataLoss, "response field '{}' is missing", full);
  return &*it;
}

const nlohmann::json* OptionalField(const nlohmann::json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

Result<std::string> AsString(const nlohmann::json& v, std::string_view path) {
  if (!v.is_string()) return TypeError(path, "a string", v);
  return v.get<std::string>();
}

Result<int32_t> AsTokenId(const nlohmann::json& v, std::string_view path) {
  if (!v.is_number_integer()) return TypeError(path, "a token id (integer)", v);
  auto id = v.get<int64_t>();
  if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
    return Error(Code::kDataLoss, "response field '{}': token id {} out of range", path, id);
  }
  return static_cast<int32_t>(id);
}

Result<float> AsLogprob(const nlohmann::json& v, std::string_view path) {
  if (v.is_null()) return std::numeric_limits<float>::quiet_NaN();
  if (!v.is_number()) return TypeError(path, "a logprob (number)", v);
  return v.get<float>();
}

}  // namespace paddock::policy
