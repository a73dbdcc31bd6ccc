// The part every HTTP backend shares: build a JSON body, POST it through the
// pooled, retrying HttpClient, parse the answer, stamp latency and attempts.
// A concrete backend supplies only its wire format.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "policy/backends/backend.h"
#include "policy/backends/endpoint.h"
#include "policy/backends/http_client.h"

namespace paddock::policy {

struct BackendOptions {
  std::string url;        // "http://host:port" (+ optional base path)
  std::string model;      // "model" field for OpenAI-compatible servers; omitted when empty
  std::string api_key;    // sent as "Authorization: Bearer …" when set
  HttpClientOptions http; // pool, retry, timeouts
};

class HttpJsonBackend : public PolicyBackend {
 public:
  void GenerateAsync(GenerateRequest request, CallOptions options, Callback done) final;
  Result<GenerateResult> Generate(const GenerateRequest& request, const CallOptions& options) final;

  const HttpClient& http() const { return *http_; }
  const Endpoint& endpoint() const { return endpoint_; }

 protected:
  HttpJsonBackend(Endpoint endpoint, BackendOptions options);

  virtual std::string_view path() const = 0;
  // The request body; INVALID_ARGUMENT for requests this backend cannot send.
  virtual Result<nlohmann::json> BuildBody(const GenerateRequest& request) const = 0;
  // The result from a parsed 2xx body; DATA_LOSS naming the field on bad data.
  virtual Result<GenerateResult> ParseBody(const nlohmann::json& body,
                                           const GenerateRequest& request) const = 0;

  const BackendOptions& options() const { return options_; }

 private:
  Endpoint endpoint_;
  BackendOptions options_;
  std::unique_ptr<HttpClient> http_;
};

}  // namespace paddock::policy
