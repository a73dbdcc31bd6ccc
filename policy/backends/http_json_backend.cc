#include "policy/backends/http_json_backend.h"

#include <chrono>
#include <cstdlib>
#include <future>

#include <fmt/format.h>

#include "policy/backends/json_fields.h"

namespace paddock::policy {

namespace {
HttpClientOptions WithAuth(HttpClientOptions http, const std::string& api_key) {
  if (!api_key.empty()) http.headers.emplace_back("Authorization", "Bearer " + api_key);
  return http;
}
}  // namespace

Result<Endpoint> PrepareBackendOptions(BackendOptions& options) {
  PADDOCK_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(options.url));
  if (options.api_key.empty() && !options.api_key_env.empty()) {
    const char* value = std::getenv(options.api_key_env.c_str());
    if (value == nullptr || *value == '\0') {
      return Error(Code::kFailedPrecondition,
                   "API key environment variable {} (api_key_env) is not set or empty",
                   options.api_key_env);
    }
    options.api_key = value;
  }
  for (unsigned char c : options.api_key) {
    if (c <= 0x20 || c == 0x7f) {  // the key itself is never echoed
      return Error(Code::kInvalidArgument,
                   "API key{} contains a space or control character",
                   options.api_key_env.empty() ? "" : " from $" + options.api_key_env);
    }
  }
  if (ep.tls && !options.http.tls_context) {
    // Built (and the CA files read) once, now, so a bad CA option fails here.
    PADDOCK_ASSIGN_OR_RETURN(options.http.tls_context, MakeTlsClientContext(options.http.tls));
  }
  return ep;
}

HttpJsonBackend::HttpJsonBackend(Endpoint endpoint, BackendOptions options)
    : endpoint_(std::move(endpoint)),
      options_(std::move(options)),
      http_(std::make_unique<HttpClient>(WithAuth(options_.http, options_.api_key))) {}

void HttpJsonBackend::GenerateAsync(GenerateRequest request, CallOptions options, Callback done) {
  auto body = BuildBody(request);
  if (!body.ok()) {
    done(body.status());
    return;
  }
  if (!request.extra_body.is_null()) {
    if (!request.extra_body.is_object()) {
      done(Error(Code::kInvalidArgument, "extra_body must be a JSON object"));
      return;
    }
    for (auto& [k, v] : request.extra_body.items()) (*body)[k] = v;
  }
  auto start = std::chrono::steady_clock::now();
  HttpCall call{start + options.timeout, options.cancel};
  std::string where = endpoint_.Authority() + endpoint_.Target(path());
  auto req = std::make_shared<GenerateRequest>(std::move(request));
  http_->PostJson(
      endpoint_, std::string(path()), body->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
      call, [this, req, start, where, done = std::move(done)](Result<HttpResponse> res) {
        if (!res.ok()) {
          done(res.status());
          return;
        }
        auto json = ParseJsonBody(res->body, where);
        if (!json.ok()) {
          done(json.status());
          return;
        }
        auto parsed = ParseBody(*json, *req);
        if (!parsed.ok()) {
          done(parsed.status().Prefix(fmt::format("parsing the answer from {}", where)));
          return;
        }
        parsed->attempts = res->attempts;
        parsed->latency = std::chrono::duration_cast<std::chrono::microseconds>(
            std::chrono::steady_clock::now() - start);
        done(std::move(parsed));
      });
}

Result<HttpResponse> HttpJsonBackend::Call(std::string method, std::string path, std::string body,
                                           std::chrono::milliseconds timeout, bool answer_4xx) {
  if (http_->InIoThread()) {
    return Error(Code::kFailedPrecondition, "{}: blocking {} {} called from the backend's I/O thread", kind(),
                 method, path);
  }
  std::promise<Result<HttpResponse>> promise;
  auto future = promise.get_future();
  HttpCall call{std::chrono::steady_clock::now() + timeout, nullptr};
  http_->Send(endpoint_, std::move(method), std::move(path), std::move(body), call, answer_4xx,
              [&promise](Result<HttpResponse> r) { promise.set_value(std::move(r)); });
  return future.get();
}

Result<GenerateResult> HttpJsonBackend::Generate(const GenerateRequest& request,
                                                 const CallOptions& options) {
  if (http_->InIoThread()) {
    return Error(Code::kFailedPrecondition,
                 "{}: blocking Generate called from the backend's I/O thread; use GenerateAsync",
                 kind());
  }
  std::promise<Result<GenerateResult>> promise;
  auto future = promise.get_future();
  GenerateAsync(request, options,
                [&promise](Result<GenerateResult> r) { promise.set_value(std::move(r)); });
  return future.get();
}

}  // namespace paddock::policy
