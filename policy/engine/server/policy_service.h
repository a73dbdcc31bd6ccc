// The endpoints of `paddock-policy`, independent of the transport: one HTTP
// request (method, path, body) in, one response (status, content type, body)
// out. SGLang's /generate, the OpenAI-compatible /v1/completions and
// /v1/chat/completions (through the V4 codec, with the tool constraint),
// SGLang's weight updates (/update_weights_from_disk, /model_info,
// /weight_version), /health and /metrics. Fields are documented in
// docs/paddock-policy.md.
//
// Thread-safe: the HTTP server calls Handle from one thread per connection, so
// concurrent requests reach Engine::Generate together and are batched there.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/engine/constrain/tool_grammar.h"
#include "policy/engine/engine.h"
#include "policy/engine/server/http_server.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace paddock::policy::engine::server {

struct ServiceOptions {
  std::string model_name = "paddock-policy";  // "model" in OpenAI responses and /v1/models
  int default_max_tokens = 1024;              // OpenAI requests without max_tokens
  // Extra gauges/counters for /metrics from the engine (name → value), e.g.
  // the embedded engine's batch statistics. Optional.
  std::function<std::vector<std::pair<std::string, double>>()> engine_metrics;
  // Free-text caps of the tool constraint (code points), see GrammarOptions.
  constrain::GrammarOptions grammar;
  // /update_weights_from_disk makes the server read a file named by the
  // request, and the server has no authentication: by default only loopback
  // peers may call it (others get 403).
  bool allow_remote_weight_updates = false;
};

// The tool part of a request: "tools", "tool_choice", "thinking" (and
// chat_template_kwargs, "tool_constraint"), read the same way for
// /v1/chat/completions and /generate's Paddock extension.
struct ToolRequest {
  nlohmann::json tools = nlohmann::json::array();  // empty: no tools given
  std::string choice = "auto";                     // "none" | "auto" | "required"
  std::vector<std::string> only;                   // tool_choice naming a function
  bool thinking = false;
  bool constrain = true;  // "tool_constraint": false turns the constraint off
};

class PolicyService final : public HttpHandler {
 public:
  PolicyService(std::shared_ptr<Engine> engine, std::shared_ptr<const v4::Tokenizer> tokenizer,
                ServiceOptions options = {});

  // As from a loopback peer.
  HttpReply Handle(const std::string& method, const std::string& target, const std::string& body) override;
  HttpReply HandleFrom(const HttpPeer& peer, const std::string& method, const std::string& target,
                       const std::string& body) override;

  // Transport-level outcomes the HTTP server reports (oversized bodies, bad HTTP).
  void CountRejected(const std::string& endpoint, int status) override;

  // Largest number of Generate calls seen in flight at once.
  int max_concurrent_generate() const { return max_inflight_.load(); }

 private:
  HttpReply Generate(const nlohmann::json& body);
  HttpReply Completions(const nlohmann::json& body);
  HttpReply ChatCompletions(const nlohmann::json& body, const nlohmann::ordered_json& ordered);
  HttpReply Health();
  HttpReply Metrics();
  HttpReply Models();
  // Weight updates (policy/engine/server/weight_endpoints.cc).
  HttpReply UpdateWeightsFromDisk(const HttpPeer& peer, const std::string& body);
  HttpReply ModelInfo();
  HttpReply WeightVersion();

  // Runs one generation, counting it for /metrics.
  Result<GenerateOutput> Run(GenerateJob job);
  Result<std::shared_ptr<constrain::ToolGrammar>> GrammarFor(const nlohmann::json& tools,
                                                             const constrain::GrammarOptions& options);
  // The tool constraint for `request` (null when it has no tools or turns it
  // off); INVALID_ARGUMENT naming the field when the tools do not compile.
  Result<std::unique_ptr<TokenConstraint>> ToolConstraint(const ToolRequest& request, int max_new_tokens);
  void Record(const std::string& endpoint, int status, double seconds);

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<const v4::Tokenizer> tokenizer_;
  ServiceOptions options_;
  std::shared_ptr<const constrain::TokenBytes> vocab_;  // built on first constrained request
  std::once_flag vocab_once_;

  std::mutex grammar_mu_;
  std::map<std::string, std::shared_ptr<constrain::ToolGrammar>> grammars_;  // by tools + options

  std::atomic<int> inflight_{0};
  std::atomic<int> max_inflight_{0};
  std::atomic<uint64_t> next_id_{1};

  mutable std::mutex metrics_mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (endpoint, status) → count
  std::vector<double> latency_buckets_ = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  std::map<std::string, std::vector<uint64_t>> latency_counts_;  // endpoint → per-bucket (+Inf last)
  std::map<std::string, double> latency_sum_;
  uint64_t prompt_tokens_ = 0, cached_tokens_ = 0, completion_tokens_ = 0, generate_calls_ = 0;
  std::map<int, uint64_t> concurrency_hist_;  // in-flight Generate calls when one starts → count
  std::map<std::string, uint64_t> finish_counts_;
  uint64_t constrained_ = 0;
  uint64_t weight_updates_ok_ = 0, weight_updates_failed_ = 0;
  double last_weight_update_seconds_ = 0;
};

}  // namespace paddock::policy::engine::server
