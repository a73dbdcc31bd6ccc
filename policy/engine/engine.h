// The embedded policy engine's contract: token ids in, sampled token ids with
// their logprobs out. The model (policy/engine/model*), the constrained decoder
// (policy/engine/constrain/) and the HTTP server (policy/engine/server/) meet
// here; nothing above this header knows how the model computes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::policy::engine {

struct Sampling {
  double temperature = 1.0;  // 0: greedy (argmax; logprobs still reported)
  double top_p = 1.0;        // nucleus mass kept, (0, 1]
  int top_k = 0;             // 0: no top-k cut
  uint64_t seed = 0;         // same seed + same prompt + same config → same tokens
  int max_new_tokens = 256;
  std::vector<int32_t> stop_token_ids;  // generation ends after emitting one
  bool ignore_eos = false;
};

// Restricts which token may come next (constrained decoding). The engine asks
// for the allowed set before each sampling step and reports the token it
// sampled; a constraint is used by one sequence only.
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Sets allowed[id] for every id that may come next; `allowed` has one entry
  // per vocabulary id and arrives all false.
  virtual void AllowedNext(std::vector<uint8_t>& allowed) = 0;
  // Advances past the sampled token (always one that AllowedNext allowed).
  virtual void Accept(int32_t token) = 0;
  // True once the output is complete; the engine then stops with kStop... or
  // kEos (the constraint's last token is EOS).
  virtual bool Complete() const = 0;
};

enum class Finish { kEos, kLength, kStopToken, kConstraintComplete, kCancelled };
const char* FinishName(Finish finish);

struct GenerateJob {
  std::vector<int32_t> prompt;
  Sampling sampling;
  std::unique_ptr<TokenConstraint> constraint;  // null: free sampling
};

struct GenerateOutput {
  std::vector<int32_t> tokens;  // sampled ids, in order
  std::vector<float> logprobs;  // log p(token) under the distribution actually sampled from
  Finish finish = Finish::kEos;
  std::optional<int32_t> matched_stop_token;
  size_t prompt_tokens = 0;
  size_t cached_prompt_tokens = 0;  // prompt prefix served from the prefix cache
  double prefill_ms = 0;
  double decode_ms = 0;
  // The weights that produced every token of this output (Engine::weight_version
  // when the request started). Empty when the engine keeps no versions.
  std::string weight_version;
};

// A request to replace the weights (SGLang's /update_weights_from_disk).
struct WeightUpdate {
  std::string path;     // safetensors file
  std::string version;  // the new weight_version; empty: derived from the file
  // Also cancel the generations still running on the old weights (they end
  // with Finish::kCancelled); otherwise they finish on the old weights.
  bool abort_in_flight = false;
};

struct WeightUpdateResult {
  std::string version;     // weight_version from now on
  size_t still_running = 0;  // generations left finishing on the old weights
  size_t aborted = 0;        // generations cancelled (abort_in_flight)
  double load_ms = 0;        // reading, checking and preparing the new weights
};

// Thread-safe: concurrent Generate calls are batched together by the engine.
// The CPU implementation is EmbeddedEngine::Create(EngineOptions) in
// policy/engine/embedded_engine.h (library paddock_engine); the text of
// `paddock-policy --report-kv` is RunKvReport() in policy/engine/kv_report.h.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual Result<GenerateOutput> Generate(GenerateJob job) = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t eos_token_id() const = 0;
  virtual size_t max_context() const = 0;
  // Short description for /health and /metrics ("tiny, 4 layers, seed 1").
  virtual std::string describe() const = 0;

  // Weight updates. The version names the weights new requests run on; the
  // source is where they came from (a file path, "seed 1"). An engine without
  // updates keeps "default" (SGLang's default version) and answers
  // UpdateWeightsFromDisk with UNIMPLEMENTED.
  virtual std::string weight_version() const { return "default"; }
  virtual std::string weights_source() const { return ""; }
  // Loads new weights and serves every request admitted afterwards with them.
  // On any error the old weights stay in use.
  virtual Result<WeightUpdateResult> UpdateWeightsFromDisk(const WeightUpdate& update) {
    return Error(Code::kUnimplemented, "this engine cannot load new weights at run time ({})", update.path);
  }
};

}  // namespace paddock::policy::engine
