// The part every HTTP backend shares: build a JSON body, POST it through the
// pooled, retrying HttpClient, parse the answer, stamp latency and attempts.
// A concrete backend supplies only its wire format.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "policy/backends/backend.h"
#include "policy/backends/endpoint.h"
#include "policy/backends/http_client.h"

namespace paddock::policy {

struct BackendOptions {
  std::string url;        // "http://host:port" or "https://host[:port]" (+ optional base path)
  std::string model;      // "model" field for OpenAI-compatible servers; omitted when empty
  // Sent as "Authorization: Bearer …" when set. Never logged nor put in errors.
  std::string api_key;
  // The name of an environment variable holding the key (e.g. "DEEPSEEK_API_KEY"),
  // read once by Create when api_key is empty; FAILED_PRECONDITION if it is
  // unset or empty. Keeps the secret out of config files.
  std::string api_key_env;
  HttpClientOptions http; // pool, retry, timeouts, TLS CAs (http.tls)
};

// What every backend's Create does first: parses `options.url`, resolves
// api_key_env into api_key (refusing keys with control characters or spaces),
// and for https builds the TLS context (loading the CAs) into http.tls_context.
Result<Endpoint> PrepareBackendOptions(BackendOptions& options);

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

  // One blocking call besides generation (weight updates, model info): the
  // same client, pool, retries and auth. FAILED_PRECONDITION from the I/O
  // thread; see HttpClient::Send for `answer_4xx`.
  Result<HttpResponse> Call(std::string method, std::string path, std::string body,
                            std::chrono::milliseconds timeout, bool answer_4xx);

 private:
  Endpoint endpoint_;
  BackendOptions options_;
  std::unique_ptr<HttpClient> http_;
};

}  // namespace paddock::policy
