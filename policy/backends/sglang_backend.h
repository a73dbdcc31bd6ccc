// SGLang's native `POST /generate`: token ids in, sampled ids, per-token
// logprobs and a finish reason out. Token-exact. Wire fields: docs/policy-backends.md.
#pragma once

#include "policy/backends/http_json_backend.h"

namespace paddock::policy {

class SglangBackend final : public HttpJsonBackend {
 public:
  static Result<std::unique_ptr<SglangBackend>> Create(BackendOptions options);

  std::string_view kind() const override { return "sglang"; }
  bool token_exact() const override { return true; }

 protected:
  std::string_view path() const override { return "/generate"; }
  Result<nlohmann::json> BuildBody(const GenerateRequest& request) const override;
  Result<GenerateResult> ParseBody(const nlohmann::json& body,
                                   const GenerateRequest& request) const override;

 private:
  using HttpJsonBackend::HttpJsonBackend;
};

}  // namespace paddock::policy
