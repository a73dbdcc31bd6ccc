// Pieces shared by the two OpenAI-compatible backends: sampling fields, the
// "token_id:123" token strings vLLM returns with return_tokens_as_token_ids, and
// finish_reason / stop_reason mapping.
#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "policy/backends/backend.h"

namespace paddock::policy {

// Adds model, max_tokens, temperature, top_p, stop, seed (and, for vLLM, top_k
// and stop_token_ids when set) to `body`.
void AddOpenAiSampling(const SamplingParams& s, const std::string& model, bool vllm_extensions,
                       nlohmann::json& body);

// 123 for "token_id:123"; nullopt for any other token string.
std::optional<int32_t> ParseTokenIdString(std::string_view token);

// choices[0].finish_reason (+ vLLM's stop_reason) → FinishReason. "stop" with a
// null/absent stop_reason is the model's own end (EOS); with a value it is a
// requested stop. DATA_LOSS for an unknown value.
Result<FinishReason> MapOpenAiFinish(const nlohmann::json& choice, std::string_view path,
                                     std::optional<int32_t>* matched_stop_token);

}  // namespace paddock::policy
