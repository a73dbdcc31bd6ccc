// The model's shape. Presets: "tiny" (CI-fast), "small", and "v4-flash-shape"
// (DeepSeek-V4-Flash's published attention shape, for the KV/FLOPs report only).
// docs/embedded-engine.md describes every field and the equations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"

namespace paddock::policy::engine {

// What a layer's attention keeps besides its sliding window.
enum class LayerKind {
  kWindow,  // sliding window only (plain causal attention when window >= context)
  kCsa,     // compressed sparse attention: ratio csa_ratio, lightning indexer, top-k blocks
  kHca,     // heavily compressed attention: ratio hca_ratio, dense over all blocks
};
const char* LayerKindName(LayerKind kind);

struct Config {
  std::string name;
  // DeepSeek's vocabulary: tokenizer.json's highest id + 1; <｜end▁of▁sentence｜> is 1.
  int vocab_size = 128815;
  int eos_token_id = 1;
  int d_model = 64;
  int n_heads = 4;        // query heads; one shared key=value entry per token (MQA)
  int head_dim = 64;      // entry width: (head_dim - rope_dim) FP8 dims + rope_dim BF16 dims
  int rope_dim = 16;
  double rope_theta = 10000.0;
  float norm_eps = 1e-6f;
  std::vector<LayerKind> layers;
  int csa_ratio = 4;
  int hca_ratio = 128;
  int window = 128;       // most recent tokens every layer attends to uncompressed
  int index_heads = 4;
  int index_dim = 32;     // even (4-bit keys pack two per byte)
  int index_topk = 16;    // compressed blocks each query attends to in a CSA layer
  int n_experts = 8;      // routed experts
  int experts_per_token = 2;
  int expert_ff = 64;
  int shared_ff = 128;    // the shared expert's hidden width
  size_t max_context = 262144;
  bool report_only = false;  // shape too large to instantiate here (v4-flash-shape)
  // GQA baseline for the KV/FLOPs report: same depth, query heads and width,
  // gqa_kv_heads key and value heads of gqa_head_dim dims, BF16.
  int gqa_kv_heads = 8;
  int gqa_head_dim = 64;

  int nope_dim() const { return head_dim - rope_dim; }
  int RatioOf(LayerKind kind) const {
    return kind == LayerKind::kCsa ? csa_ratio : kind == LayerKind::kHca ? hca_ratio : 0;
  }
  Status Validate() const;
  nlohmann::json ToJson() const;
  std::string Describe() const;  // "tiny: 4 layers (csa,hca,csa,hca), d_model 64, ..."
};

// "tiny", "small", "v4-flash-shape"; anything else: INVALID_ARGUMENT listing them.
Result<Config> ConfigByName(std::string_view name);
std::vector<std::string> ConfigNames();
// The same model with every layer a plain causal attention over all tokens
// (kWindow with window = max_context): the baseline the bench compares with.
Config PlainAttentionVariant(const Config& config);

}  // namespace paddock::policy::engine
