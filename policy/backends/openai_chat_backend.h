// OpenAI-compatible `POST /v1/chat/completions` for API-only models (DeepSeek's
// API, any chat server): messages in; content, reasoning_content, tool_calls and
// per-token logprobs (when the server gives them) out. The server applies its
// own chat template and tokenizer, so results are never token-exact:
// output_ids is empty and token_exact is false. Wire fields: docs/policy-backends.md.
#pragma once

#include "policy/backends/http_json_backend.h"

namespace paddock::policy {

class OpenAiChatBackend final : public HttpJsonBackend {
 public:
  static Result<std::unique_ptr<OpenAiChatBackend>> Create(BackendOptions options);

  std::string_view kind() const override { return "openai-chat"; }
  bool token_exact() const override { return false; }

 protected:
  std::string_view path() const override { return "/v1/chat/completions"; }
  Result<nlohmann::json> BuildBody(const GenerateRequest& request) const override;
  Result<GenerateResult> ParseBody(const nlohmann::json& body,
                                   const GenerateRequest& request) const override;

 private:
  using HttpJsonBackend::HttpJsonBackend;
};

}  // namespace paddock::policy
