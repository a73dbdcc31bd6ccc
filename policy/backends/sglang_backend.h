// SGLang's native `POST /generate`: token ids in, sampled ids, per-token
// logprobs and a finish reason out. Token-exact. Wire fields: docs/policy-backends.md.
// Also SGLang's weight updates (/update_weights_from_disk, /model_info).
#pragma once

#include "policy/backends/http_json_backend.h"

namespace paddock::policy {

class SglangBackend final : public HttpJsonBackend {
 public:
  static Result<std::unique_ptr<SglangBackend>> Create(BackendOptions options);

  std::string_view kind() const override { return "sglang"; }
  bool token_exact() const override { return true; }

  // POST /update_weights_from_disk {"model_path", "weight_version"?}, and
  // GET /model_info (falling back to /get_weight_version on older servers).
  // Defined in sglang_weight_update.cc.
  Status UpdateWeightsFromDisk(const std::string& path, const std::string& version,
                               std::chrono::milliseconds timeout) override;
  Result<std::string> WeightVersion() override;

 protected:
  std::string_view path() const override { return "/generate"; }
  Result<nlohmann::json> BuildBody(const GenerateRequest& request) const override;
  Result<GenerateResult> ParseBody(const nlohmann::json& body,
                                   const GenerateRequest& request) const override;

 private:
  using HttpJsonBackend::HttpJsonBackend;
};

}  // namespace paddock::policy
