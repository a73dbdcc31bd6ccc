#include "policy/engine/kv_report.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "policy/engine/model.h"

namespace paddock::policy::engine {

namespace {

// Cache bytes of one layer after L tokens.
size_t LayerBytes(const Config& c, LayerKind kind, size_t L) {
  size_t E = EntryBytes(c);
  size_t bytes = std::min(L, static_cast<size_t>(c.window)) * E;
  if (kind == LayerKind::kWindow) return bytes;
  size_t blocks = L / static_cast<size_t>(c.RatioOf(kind));
  bytes += blocks * E;
  if (kind == LayerKind::kCsa) bytes += blocks * IndexKeyBytes(c);
  return bytes;
}

// Attention FLOPs of one layer for the token at position L (it sees L tokens,
// itself included): 2 FLOPs per multiply-add; per query head, scores over
// head_dim and the weighted sum of values over head_dim.
double LayerFlops(const Config& c, LayerKind kind, size_t L) {
  double H = c.n_heads, hd = c.head_dim;
  double attended = static_cast<double>(std::min(L, static_cast<size_t>(c.window)));
  double indexer = 0;
  if (kind != LayerKind::kWindow) {
    double blocks = static_cast<double>(L / static_cast<size_t>(c.RatioOf(kind)));
    if (kind == LayerKind::kHca) {
      attended += blocks;
    } else {
      attended += std::min(blocks, static_cast<double>(c.index_topk));
      indexer = 2.0 * c.index_heads * c.index_dim * blocks;  // q_h . k_j for every block
    }
  }
  return 2.0 * H * attended * (hd + hd) + indexer;
}

}  // namespace

size_t PredictedCacheBytes(const Config& config, size_t context) {
  size_t total = 0;
  for (LayerKind kind : config.layers) total += LayerBytes(config, kind, context);
  return total;
}

KvReport ComputeKvReport(const Config& c, size_t L) {
  KvReport r;
  r.config = c.name;
  r.context = L;
  for (LayerKind kind : {LayerKind::kWindow, LayerKind::kCsa, LayerKind::kHca}) {
    KvLayerGroup g{kind};
    for (LayerKind k : c.layers)
      if (k == kind) {
        ++g.layers;
        g.bytes += static_cast<double>(LayerBytes(c, k, L));
        g.flops += LayerFlops(c, k, L);
      }
    if (g.layers) {
      r.bytes += g.bytes;
      r.flops += g.flops;
      r.groups.push_back(g);
    }
  }
  double depth = static_cast<double>(c.layers.size()), Ld = static_cast<double>(L);
  r.gqa_bytes = depth * Ld * 2.0 * c.gqa_kv_heads * c.gqa_head_dim * 2.0;
  r.gqa_flops = depth * 2.0 * c.n_heads * Ld * (2.0 * c.gqa_head_dim);
  return r;
}

Result<std::string> RunKvReport(std::string_view config_name, size_t context, bool json) {
  auto config = ConfigByName(config_name);
  if (!config.ok()) return config.status();
  if (context == 0) return Error(Code::kInvalidArgument, "--context must be a positive number of tokens");
  const Config& c = config.value();
  KvReport r = ComputeKvReport(c, context);
  if (json) {
    nlohmann::json groups = nlohmann::json::array();
    for (const auto& g : r.groups)
      groups.push_back({{"kind", LayerKindName(g.kind)}, {"layers", g.layers}, {"bytes", g.bytes}, {"flops", g.flops}});
    nlohmann::json j = {{"config", c.name},
                        {"context", context},
                        {"kv_bytes", r.bytes},
                        {"kv_bytes_per_token", r.bytes_per_token()},
                        {"attention_flops_per_token", r.flops},
                        {"gqa_kv_bytes", r.gqa_bytes},
                        {"gqa_kv_bytes_per_token", r.gqa_bytes_per_token()},
                        {"gqa_attention_flops_per_token", r.gqa_flops},
                        {"kv_ratio", r.bytes / r.gqa_bytes},
                        {"flops_ratio", r.flops / r.gqa_flops},
                        {"entry_bytes", EntryBytes(c)},
                        {"index_key_bytes", IndexKeyBytes(c)},
                        {"groups", groups}};
    return j.dump(2) + "\n";
  }
  std::string out;
  out += fmt::format("config {} ({} layers, {} query heads, head_dim {} = {} FP8 + {} BF16 RoPE dims), context {} tokens\n",
                     c.name, c.layers.size(), c.n_heads, c.head_dim, c.nope_dim(), c.rope_dim, context);
  out += fmt::format("entry: {} B (FP8 {} + BF16 2x{} + 1 scale byte); indexer key: {} B (4-bit x {} + FP32 scale)\n",
                     EntryBytes(c), c.nope_dim(), c.rope_dim, IndexKeyBytes(c), c.index_dim);
  out += fmt::format("{:<8} {:>6} {:>16} {:>12} {:>18}\n", "layers", "count", "KV bytes", "B/token", "attn FLOPs/token");
  for (const auto& g : r.groups)
    out += fmt::format("{:<8} {:>6} {:>16.0f} {:>12.2f} {:>18.4g}\n", LayerKindName(g.kind), g.layers, g.bytes,
                       g.bytes / static_cast<double>(context), g.flops);
  out += fmt::format("{:<8} {:>6} {:>16.0f} {:>12.2f} {:>18.4g}\n", "total", c.layers.size(), r.bytes,
                     r.bytes_per_token(), r.flops);
  out += fmt::format("{:<8} {:>6} {:>16.0f} {:>12.2f} {:>18.4g}   (GQA: {} KV heads x {} dims, BF16)\n", "gqa",
                     c.layers.size(), r.gqa_bytes, r.gqa_bytes_per_token(), r.gqa_flops, c.gqa_kv_heads,
                     c.gqa_head_dim);
  out += fmt::format("KV cache: {:.2f}% of GQA; attention FLOPs per generated token: {:.2f}% of GQA\n",
                     100.0 * r.bytes / r.gqa_bytes, 100.0 * r.flops / r.gqa_flops);
  return out;
}

}  // namespace paddock::policy::engine
