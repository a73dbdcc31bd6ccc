// Typed reads from a server's JSON answer. Every failure is DATA_LOSS naming the
// dotted path of the field ("choices[0].logprobs.tokens[3]") and what was there,
// so a garbled or changed wire format is diagnosable from the message alone.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"

namespace paddock::policy {

// Parses a 2xx body; DATA_LOSS "malformed JSON from <where>: …" on failure.
Result<nlohmann::json> ParseJsonBody(std::string_view body, std::string_view where);

// The member `key` of `obj` (an object, named `path`); DATA_LOSS when missing.
Result<const nlohmann::json*> Field(const nlohmann::json& obj, std::string_view path,
                                    std::string_view key);
// The member `key` when present and not null, else nullptr (optional fields).
const nlohmann::json* OptionalField(const nlohmann::json& obj, std::string_view key);

Status TypeError(std::string_view path, std::string_view want, const nlohmann::json& got);

Result<std::string> AsString(const nlohmann::json& v, std::string_view path);
Result<int32_t> AsTokenId(const nlohmann::json& v, std::string_view path);
// A logprob: a number, or null (SGLang gives null for a prompt's first token).
Result<float> AsLogprob(const nlohmann::json& v, std::string_view path);

}  // namespace paddock::policy
