#include "policy/backends/openai_common.h"

#include <charconv>

#include <fmt/format.h>

#include "policy/backends/json_fields.h"

namespace paddock::policy {

void AddOpenAiSampling(const SamplingParams& s, const std::string& model, bool vllm_extensions,
                       nlohmann::json& body) {
  if (!model.empty()) body["model"] = model;
  body["max_tokens"] = s.max_new_tokens;
  if (s.temperature) body["temperature"] = *s.temperature;
  if (s.top_p) body["top_p"] = *s.top_p;
  if (!s.stop.empty()) body["stop"] = s.stop;
  if (s.seed) body["seed"] = *s.seed;
  if (vllm_extensions) {
    if (s.top_k) body["top_k"] = *s.top_k;
    if (!s.stop_token_ids.empty()) body["stop_token_ids"] = s.stop_token_ids;
  }
}

std::optional<int32_t> ParseTokenIdString(std::string_view token) {
  constexpr std::string_view kPrefix = "token_id:";
  if (token.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  token.remove_prefix(kPrefix.size());
  int32_t id = 0;
  auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), id);
  if (ec != std::errc() || end != token.data() + token.size() || id < 0) return std::nullopt;
  return id;
}

Result<FinishReason> MapOpenAiFinish(const nlohmann::json& choice, std::string_view path,
                                     std::optional<int32_t>* matched_stop_token) {
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* fr, Field(choice, path, "finish_reason"));
  std::string fpath = fmt::format("{}.finish_reason", path);
  PADDOCK_ASSIGN_OR_RETURN(std::string reason, AsString(*fr, fpath));
  if (reason == "length") return FinishReason::kLength;
  if (reason == "tool_calls" || reason == "function_call") return FinishReason::kToolCalls;
  if (reason == "abort") return FinishReason::kAbort;
  if (reason == "stop" || reason == "content_filter") {
    const nlohmann::json* sr = OptionalField(choice, "stop_reason");
    if (!sr) return FinishReason::kEos;
    if (sr->is_number_integer()) {
      PADDOCK_ASSIGN_OR_RETURN(int32_t id, AsTokenId(*sr, fmt::format("{}.stop_reason", path)));
      *matched_stop_token = id;
    }
    return FinishReason::kStop;
  }
  return Error(Code::kDataLoss, "response field '{}' has unknown value '{}'", fpath, reason);
}

}  // namespace paddock::policy
