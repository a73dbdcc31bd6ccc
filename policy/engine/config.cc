#include "policy/engine/config.h"

#include <fmt/format.h>

namespace paddock::policy::engine {

const char* LayerKindName(LayerKind kind) {
  switch (kind) {
    case LayerKind::kWindow: return "window";
    case LayerKind::kCsa: return "csa";
    case LayerKind::kHca: return "hca";
  }
  return "?";
}

namespace {

Config Tiny() {
  Config c;
  c.name = "tiny";
  c.layers = {LayerKind::kCsa, LayerKind::kHca, LayerKind::kCsa, LayerKind::kHca};
  return c;
}

Config Small() {
  Config c;
  c.name = "small";
  c.d_model = 256;
  c.n_heads = 8;
  c.head_dim = 64;
  c.rope_dim = 16;
  c.layers = {LayerKind::kWindow, LayerKind::kWindow, LayerKind::kCsa,
              LayerKind::kHca,    LayerKind::kCsa,    LayerKind::kHca};
  c.index_heads = 8;
  c.index_dim = 64;
  c.index_topk = 64;
  c.n_experts = 16;
  c.experts_per_token = 2;
  c.expert_ff = 256;
  c.shared_ff = 512;
  return c;
}

// DeepSeek-V4-Flash's attention as published in its config.json: 43 layers,
// hidden 4096, 64 query heads, one 512-wide key=value head (448 no-RoPE dims,
// 64 RoPE dims), first two layers sliding-window only, then compression ratio
// 4 (with indexer: 64 heads x 128 dims, top-512) and 128 alternating, window 128,
// 256 routed experts (6 per token), vocabulary 129280.
Config V4FlashShape() {
  Config c;
  c.name = "v4-flash-shape";
  c.vocab_size = 129280;
  c.d_model = 4096;
  c.n_heads = 64;
  c.head_dim = 512;
  c.rope_dim = 64;
  c.layers = {LayerKind::kWindow, LayerKind::kWindow};
  for (int i = 2; i < 43; ++i) c.layers.push_back(i % 2 == 0 ? LayerKind::kCsa : LayerKind::kHca);
  c.window = 128;
  c.index_heads = 64;
  c.index_dim = 128;
  c.index_topk = 512;
  c.n_experts = 256;
  c.experts_per_token = 6;
  c.expert_ff = 2048;
  c.shared_ff = 2048;
  c.max_context = 1048576;
  c.report_only = true;
  c.gqa_head_dim = 128;  // a 4096-wide GQA model: 32 x 128 (e.g. Llama-3-8B-like heads)
  return c;
}

}  // namespace

std::vector<std::string> ConfigNames() { return {"tiny", "small", "v4-flash-shape"}; }

Result<Config> ConfigByName(std::string_view name) {
  if (name == "tiny") return Tiny();
  if (name == "small") return Small();
  if (name == "v4-flash-shape") return V4FlashShape();
  return Error(Code::kInvalidArgument, "unknown model config '{}'; known: tiny, small, v4-flash-shape",
               name);
}

Config PlainAttentionVariant(const Config& config) {
  Config c = config;
  c.name = config.name + "-plain";
  for (auto& kind : c.layers) kind = LayerKind::kWindow;
  c.window = static_cast<int>(std::min<size_t>(config.max_context, 1u << 30));
  return c;
}

Status Config::Validate() const {
  auto bad = [&](std::string what) {
    return Error(Code::kInvalidArgument, "model config '{}': {}", name, what);
  };
  if (vocab_size <= 1) return bad("vocab_size must be > 1");
  if (eos_token_id < 0 || eos_token_id >= vocab_size) return bad("eos_token_id out of the vocabulary");
  if (d_model <= 0 || n_heads <= 0 || head_dim <= 0) return bad("d_model, n_heads, head_dim must be > 0");
  if (rope_dim < 0 || rope_dim % 2 || rope_dim > head_dim) return bad("rope_dim must be even and <= head_dim");
  if (layers.empty()) return bad("no layers");
  if (window < 0) return bad("window must be >= 0");
  bool has_csa = false;
  for (LayerKind k : layers) {
    int ratio = RatioOf(k);
    if (k != LayerKind::kWindow && ratio <= 0) return bad("compression ratios must be > 0");
    if (k == LayerKind::kWindow && window <= 0) return bad("a window-only layer needs window > 0");
    // The window must cover the block still being filled (ratio - 1 tokens)
    // plus the current token, or those tokens would be invisible.
    if (k != LayerKind::kWindow && window < ratio && ratio > 1)
      return bad(fmt::format("window {} must be >= the compression ratio {}", window, ratio));
    if (k == LayerKind::kCsa) has_csa = true;
  }
  if (has_csa && (index_heads <= 0 || index_dim <= 0 || index_dim % 2 || index_topk <= 0))
    return bad("CSA layers need index_heads > 0, even index_dim > 0, index_topk > 0");
  if (n_experts <= 0 || experts_per_token <= 0 || experts_per_token > n_experts)
    return bad("need 0 < experts_per_token <= n_experts");
  if (expert_ff <= 0 || shared_ff < 0) return bad("expert_ff must be > 0, shared_ff >= 0");
  if (max_context == 0) return bad("max_context must be > 0");
  return Status::Ok();
}

nlohmann::json Config::ToJson() const {
  nlohmann::json kinds = nlohmann::json::array();
  for (LayerKind k : layers) kinds.push_back(LayerKindName(k));
  return {{"name", name},           {"vocab_size", vocab_size},     {"eos_token_id", eos_token_id},
          {"d_model", d_model},     {"n_heads", n_heads},           {"head_dim", head_dim},
          {"rope_dim", rope_dim},   {"rope_theta", rope_theta},     {"layers", kinds},
          {"csa_ratio", csa_ratio}, {"hca_ratio", hca_ratio},       {"window", window},
          {"index_heads", index_heads}, {"index_dim", index_dim},   {"index_topk", index_topk},
          {"n_experts", n_experts}, {"experts_per_token", experts_per_token},
          {"expert_ff", expert_ff}, {"shared_ff", shared_ff},       {"max_context", max_context}};
}

std::string Config::Describe() const {
  std::string kinds;
  for (LayerKind k : layers) kinds += fmt::format("{}{}", kinds.empty() ? "" : ",", LayerKindName(k));
  return fmt::format("{}: {} layers ({}), d_model {}, {} heads x {}, window {}, {} experts top-{}",
                     name, layers.size(), kinds, d_model, n_heads, head_dim, window, n_experts,
                     experts_per_token);
}

}  // namespace paddock::policy::engine
