#include "policy/backends/openai_completions_backend.h"

#include <fmt/format.h>

#include "policy/backends/json_fields.h"
#include "policy/backends/openai_common.h"

namespace paddock::policy {

Result<std::unique_ptr<OpenAiCompletionsBackend>> OpenAiCompletionsBackend::Create(
    BackendOptions options) {
  PADDOCK_ASSIGN_OR_RETURN(Endpoint ep, PrepareBackendOptions(options));
  return std::unique_ptr<OpenAiCompletionsBackend>(
      new OpenAiCompletionsBackend(std::move(ep), std::move(options)));
}

Result<nlohmann::json> OpenAiCompletionsBackend::BuildBody(const GenerateRequest& request) const {
  if (request.input_ids.empty()) {
    return Error(Code::kInvalidArgument, "/v1/completions needs input_ids for a token-id prompt (got none)");
  }
  nlohmann::json body = {{"prompt", request.input_ids}, {"stream", false}, {"echo", false}};
  AddOpenAiSampling(request.sampling, options().model, /*vllm_extensions=*/true, body);
  if (request.return_logprobs) body["logprobs"] = 1;
  // vLLM: sampled tokens as "token_id:N" (exact ids), and keep special tokens in text.
  body["return_tokens_as_token_ids"] = true;
  body["skip_special_tokens"] = false;
  return body;
}

Result<GenerateResult> OpenAiCompletionsBackend::ParseBody(const nlohmann::json& body,
                                                           const GenerateRequest& request) const {
  GenerateResult out;
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* choices, Field(body, "", "choices"));
  if (!choices->is_array() || choices->empty()) {
    return TypeError("choices", "a non-empty array", *choices);
  }
  const nlohmann::json& choice = (*choices)[0];
  if (!choice.is_object()) return TypeError("choices[0]", "an object", choice);
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* text, Field(choice, "choices[0]", "text"));
  PADDOCK_ASSIGN_OR_RETURN(out.text, AsString(*text, "choices[0].text"));
  PADDOCK_ASSIGN_OR_RETURN(out.finish_reason,
                           MapOpenAiFinish(choice, "choices[0]", &out.matched_stop_token));

  // logprobs: {"tokens": ["token_id:N", …], "token_logprobs": [lp, …], …}
  std::vector<int32_t> ids;
  bool ids_complete = false;
  if (const nlohmann::json* lp = OptionalField(choice, "logprobs")) {
    PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* tlp,
                             Field(*lp, "choices[0].logprobs", "token_logprobs"));
    if (!tlp->is_array()) return TypeError("choices[0].logprobs.token_logprobs", "an array", *tlp);
    for (size_t i = 0; i < tlp->size(); ++i) {
      PADDOCK_ASSIGN_OR_RETURN(
          float v, AsLogprob((*tlp)[i], fmt::format("choices[0].logprobs.token_logprobs[{}]", i)));
      out.logprobs.push_back(v);
    }
    if (const nlohmann::json* tokens = OptionalField(*lp, "tokens")) {
      if (!tokens->is_array()) return TypeError("choices[0].logprobs.tokens", "an array", *tokens);
      if (tokens->size() != tlp->size()) {
        return Error(Code::kDataLoss,
                     "'choices[0].logprobs.tokens' has {} entries but 'token_logprobs' has {}",
                     tokens->size(), tlp->size());
      }
      ids_complete = true;
      for (size_t i = 0; i < tokens->size(); ++i) {
        std::string path = fmt::format("choices[0].logprobs.tokens[{}]", i);
        PADDOCK_ASSIGN_OR_RETURN(std::string tok, AsString((*tokens)[i], path));
        auto id = ParseTokenIdString(tok);
        if (!id) {  // the server ignored return_tokens_as_token_ids
          ids_complete = false;
          ids.clear();
          break;
        }
        ids.push_back(*id);
      }
    }
  } else if (request.return_logprobs) {
    return Error(Code::kDataLoss,
                 "response field 'choices[0].logprobs' is missing although logprobs were requested");
  }

  // Newer vLLM can return the ids directly (return_token_ids); they win when present.
  if (const nlohmann::json* direct = OptionalField(choice, "token_ids")) {
    if (!direct->is_array()) return TypeError("choices[0].token_ids", "an array", *direct);
    std::vector<int32_t> d;
    for (size_t i = 0; i < direct->size(); ++i) {
      PADDOCK_ASSIGN_OR_RETURN(int32_t id,
                               AsTokenId((*direct)[i], fmt::format("choices[0].token_ids[{}]", i)));
      d.push_back(id);
    }
    if (ids_complete && d != ids) {
      return Error(Code::kDataLoss,
                   "'choices[0].token_ids' disagrees with the ids in 'choices[0].logprobs.tokens'");
    }
    ids = std::move(d);
    ids_complete = true;
  }
  out.token_exact = ids_complete;
  if (ids_complete) out.output_ids = std::move(ids);
  return out;
}

}  // namespace paddock::policy
