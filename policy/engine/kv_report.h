// KV-cache bytes and attention FLOPs per generated token at a given context,
// for a config and for a GQA baseline (gqa_kv_heads key/value heads of
// gqa_head_dim, BF16) of the same depth and query heads. The formulas are in
// docs/embedded-engine.md ("KV and FLOPs report"); the engine's measured cache
// bytes equal PredictedCacheBytes (tests/engine_kv_report_test.cc).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "policy/engine/config.h"
#include "sandbox/base/status.h"

namespace paddock::policy::engine {

struct KvLayerGroup {
  LayerKind kind;
  int layers = 0;
  double bytes = 0;       // cache bytes of all layers of this kind at the context
  double flops = 0;       // attention FLOPs of all layers of this kind for one new token
};

struct KvReport {
  std::string config;
  size_t context = 0;
  std::vector<KvLayerGroup> groups;  // window, csa, hca (those present)
  double bytes = 0, gqa_bytes = 0;
  double flops = 0, gqa_flops = 0;
  double bytes_per_token() const { return bytes / static_cast<double>(context); }
  double gqa_bytes_per_token() const { return gqa_bytes / static_cast<double>(context); }
};

// Exact bytes the engine's caches hold after `context` tokens.
size_t PredictedCacheBytes(const Config& config, size_t context);
KvReport ComputeKvReport(const Config& config, size_t context);

// The text of `paddock-policy --report-kv --config NAME --context N [--json]`.
// INVALID_ARGUMENT for an unknown config or a context of 0.
Result<std::string> RunKvReport(std::string_view config_name, size_t context, bool json);

}  // namespace paddock::policy::engine
