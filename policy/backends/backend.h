// The policy backend contract: one generation request in, one typed result or a
// typed error out, whatever inference server answers it (SGLang, vLLM, an
// OpenAI-compatible API). Wire formats live in the implementations; this header
// is what the rollout engine relies on.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/backends/cancel_token.h"
#include "sandbox/base/status.h"

namespace paddock::policy {

// Sampling knobs common to the servers we talk to. Unset optionals are not sent,
// so the server's own default applies.
struct SamplingParams {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int> top_k;            // SGLang/vLLM only; ignored by chat APIs
  int max_new_tokens = 1024;
  std::vector<int32_t> stop_token_ids; // token-level stops (SGLang, vLLM)
  std::vector<std::string> stop;       // string stops
  std::optional<uint64_t> seed;
};

// One chat message for /v1/chat/completions. `tool_calls` is the OpenAI array as
// JSON (null when absent).
struct ChatMessage {
  std::string role;
  std::string content;
  std::optional<std::string> reasoning_content;
  nlohmann::json tool_calls;
  std::optional<std::string> tool_call_id;
  std::optional<std::string> name;
};

struct GenerateRequest {
  // Token-exact backends (SGLang, /v1/completions) send these ids verbatim.
  std::vector<int32_t> input_ids;
  // Chat backends send these instead; token-exact backends refuse a request
  // without input_ids.
  std::vector<ChatMessage> messages;
  nlohmann::json tools;  // OpenAI tool schema array, chat only; null when absent
  SamplingParams sampling;
  bool return_logprobs = true;
  // Merged last into the JSON body, for server-specific knobs we do not model.
  nlohmann::json extra_body;
};

enum class FinishReason {
  kEos,        // the model ended its turn (EOS token, or an OpenAI "stop" with no stop match)
  kLength,     // max_new_tokens (or the context) ran out
  kStop,       // a requested stop token or stop string matched
  kToolCalls,  // chat APIs: the turn ended with tool calls
  kAbort,      // the server aborted the request
};
const char* FinishReasonName(FinishReason reason);

struct GenerateResult {
  // Output token ids exactly as sampled; empty with token_exact=false when the
  // server does not give ids (chat APIs).
  std::vector<int32_t> output_ids;
  // One logprob per output token when requested and returned; else empty.
  std::vector<float> logprobs;
  std::string text;               // decoded text (content for chat)
  std::string reasoning_content;  // chat APIs with a separate reasoning channel
  nlohmann::json tool_calls;      // chat APIs: OpenAI tool_calls array, or null
  FinishReason finish_reason = FinishReason::kEos;
  // Matched stop token id, when the server says which one.
  std::optional<int32_t> matched_stop_token;
  // True when output_ids are the sampled ids, so training may use them as-is.
  bool token_exact = false;
  // The server's weight version for this output (SGLang's
  // meta_info.weight_version; paddock-policy: the weights that produced every
  // token); empty when the server does not say.
  std::string weight_version;
  std::chrono::microseconds latency{0};  // first attempt start to parsed result
  int attempts = 0;                      // HTTP attempts made (1 = no retry)
};

// Per-call knobs.
struct CallOptions {
  // Whole-call deadline, retries and backoff included.
  std::chrono::milliseconds timeout{60000};
  // Cancels the call from any thread; the callback/return then carries CANCELLED.
  std::shared_ptr<CancelToken> cancel;
};

// Errors (Status codes) every backend returns:
//   UNAVAILABLE        server down (connect refused/reset), or 5xx after retries
//                      (message holds the status and a body excerpt)
//   DEADLINE_EXCEEDED  the call's timeout passed
//   CANCELLED          the cancel token fired
//   INVALID_ARGUMENT   4xx (the server's message), or a request we cannot send
//   UNAUTHENTICATED / PERMISSION_DENIED / NOT_FOUND / RESOURCE_EXHAUSTED
//                      401 / 403 / 404 / 429, with the server's message
//   DATA_LOSS          2xx with malformed JSON or a missing/mistyped field (named)
//   PERMISSION_DENIED  also: https server whose certificate fails verification
//                      ("TLS certificate verification failed for HOST: reason")
class PolicyBackend {
 public:
  using Callback = std::function<void(Result<GenerateResult>)>;
  virtual ~PolicyBackend() = default;

  // "sglang", "openai-completions", "openai-chat".
  virtual std::string_view kind() const = 0;
  // True when results carry the sampled token ids.
  virtual bool token_exact() const = 0;

  // Starts the call; `done` runs exactly once, on the backend's I/O thread, so it
  // must not block.
  virtual void GenerateAsync(GenerateRequest request, CallOptions options, Callback done) = 0;

  // Blocking form of GenerateAsync. Must not be called from the backend's I/O
  // thread (that returns FAILED_PRECONDITION instead of deadlocking).
  virtual Result<GenerateResult> Generate(const GenerateRequest& request,
                                          const CallOptions& options) = 0;

  // Weight updates (SGLang's /update_weights_from_disk; paddock-policy serves
  // the same). Blocking, not from the I/O thread. The server loads the
  // safetensors file at `path` (a path on the server's machine) and reports
  // `version` as its weight_version from then on (empty: the server picks one).
  // Errors: FAILED_PRECONDITION with the server's message when it answered
  // success:false (bad or missing file, wrong shapes; its old weights stay),
  // PERMISSION_DENIED when it refuses the caller, UNAVAILABLE when it cannot
  // be reached, DEADLINE_EXCEEDED after `timeout`, UNIMPLEMENTED for backends
  // without weight updates (the default).
  virtual Status UpdateWeightsFromDisk(const std::string& path, const std::string& version,
                                       std::chrono::milliseconds timeout) {
    (void)path, (void)version, (void)timeout;
    return Status(Code::kUnimplemented,
                  std::string(kind()) + " backend cannot update the server's weights; use an sglang policy");
  }
  // The server's current weight_version (10 s deadline). Same errors.
  virtual Result<std::string> WeightVersion() {
    return Status(Code::kUnimplemented, std::string(kind()) + " backend cannot ask the server's weight version");
  }
};

}  // namespace paddock::policy
