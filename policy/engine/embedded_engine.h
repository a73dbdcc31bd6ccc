// The embedded engine: the Engine of engine.h over the CPU model. One worker
// thread steps every active sequence together (continuous batching: requests
// join and leave between steps); prompts are prefilled in chunks inside the
// same steps; finished sequences' caches are kept, keyed by their tokens, so
// a prompt that extends one only prefills its new suffix.
//
// Weight updates (UpdateWeightsFromDisk) load the new file on the caller's
// thread while generation goes on, then swap it in between two steps. Each
// request runs on one set of weights from its first step to its last: the
// ones current when the worker admitted it. Requests admitted before the swap
// finish on the old weights (stepped beside the new ones until they end, or
// cancelled with abort_in_flight); the prefix cache is emptied, since its
// states were computed by the old weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "policy/engine/config.h"
#include "policy/engine/engine.h"
#include "policy/engine/model.h"

namespace paddock::policy::engine {

struct EngineOptions {
  std::string config = "tiny";     // a ConfigByName preset
  std::string weights_path;        // safetensors file; empty: weights from weight_seed
  uint64_t weight_seed = 1;
  std::string weight_version;      // empty: DefaultWeightVersion of the weights
  int threads = 0;                 // 0: std::thread::hardware_concurrency()
  bool exact_kv = false;           // float32 KV entries and indexer keys (no FP8/BF16/int4
                                   // emulation); kept across weight updates
  size_t max_batch = 64;           // sequences stepped together
  size_t prefill_chunk = 256;      // prompt tokens a sequence feeds per step
  size_t prefix_cache_entries = 16;
  size_t prefix_cache_bytes = size_t{1} << 30;
};

struct EngineStats {
  uint64_t requests = 0;
  uint64_t prompt_tokens = 0;
  uint64_t cached_prompt_tokens = 0;
  uint64_t generated_tokens = 0;
  uint64_t steps = 0;             // Forward calls
  uint64_t step_sequences = 0;    // sum over steps of sequences in the step
  uint64_t max_step_sequences = 0;
  uint64_t active = 0;            // sequences being generated now
  uint64_t prefix_cache_entries = 0;
  uint64_t prefix_cache_bytes = 0;
  uint64_t weight_updates = 0;    // successful UpdateWeightsFromDisk calls
  uint64_t weight_update_failures = 0;
};

class EmbeddedEngine : public Engine {
 public:
  static Result<std::unique_ptr<EmbeddedEngine>> Create(const EngineOptions& options);
  // Over an existing model (tests use custom configs); options' model fields
  // ignored except weight_version.
  static std::unique_ptr<EmbeddedEngine> Create(std::unique_ptr<Model> model, const EngineOptions& options);
  ~EmbeddedEngine() override;  // unfinished requests end with Finish::kCancelled

  Result<GenerateOutput> Generate(GenerateJob job) override;
  int32_t vocab_size() const override;
  int32_t eos_token_id() const override;
  size_t max_context() const override;
  std::string describe() const override;
  std::string weight_version() const override;
  std::string weights_source() const override;
  // Same config and checks as at start (LoadSafetensors, Model::Create); a
  // bad file leaves the old weights in use. Calls are serialized.
  Result<WeightUpdateResult> UpdateWeightsFromDisk(const WeightUpdate& update) override;

  EngineStats stats() const;
  // The model new requests run on (a later update replaces it, this one lives
  // while held).
  std::shared_ptr<const Model> model() const;

 private:
  struct Impl;
  explicit EmbeddedEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace paddock::policy::engine
