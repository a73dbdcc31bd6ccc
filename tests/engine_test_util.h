// Small configs for the engine tests: a 512-token vocabulary keeps them fast.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include "policy/engine/config.h"

namespace paddock::policy::engine::testing {

inline Config MicroConfig() {
  Config c;
  c.name = "micro";
  c.vocab_size = 512;
  c.eos_token_id = 1;
  c.d_model = 32;
  c.n_heads = 2;
  c.head_dim = 32;
  c.rope_dim = 8;
  c.layers = {LayerKind::kCsa, LayerKind::kHca};
  c.csa_ratio = 4;
  c.hca_ratio = 8;
  c.window = 8;
  c.index_heads = 2;
  c.index_dim = 16;
  c.index_topk = 3;
  c.n_experts = 4;
  c.experts_per_token = 2;
  c.expert_ff = 32;
  c.shared_ff = 32;
  c.max_context = 4096;
  return c;
}

inline std::string TempPath(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("paddock_engine_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

}  // namespace paddock::policy::engine::testing
