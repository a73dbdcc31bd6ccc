// OpenAI-compatible `POST /v1/completions` with a token-id prompt, as vLLM serves
// it: "prompt": [ids], "logprobs": 1, "return_tokens_as_token_ids": true so the
// sampled ids come back as "token_id:N" strings. Token-exact when the server
// honours that (or returns choices[0].token_ids); otherwise the result says
// token_exact=false and output_ids is empty. Wire fields: docs/policy-backends.md.
#pragma once

#include "policy/backends/http_json_backend.h"

namespace paddock::policy {

class OpenAiCompletionsBackend final : public HttpJsonBackend {
 public:
  static Result<std::unique_ptr<OpenAiCompletionsBackend>> Create(BackendOptions options);

  std::string_view kind() const override { return "openai-completions"; }
  bool token_exact() const override { return true; }

 protected:
  std::string_view path() const override { return "/v1/completions"; }
  Result<nlohmann::json> BuildBody(const GenerateRequest& request) const override;
  Result<GenerateResult> ParseBody(const nlohmann::json& body,
                                   const GenerateRequest& request) const override;

 private:
  using HttpJsonBackend::HttpJsonBackend;
};

}  // namespace paddock::policy
