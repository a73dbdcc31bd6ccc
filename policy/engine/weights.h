// The model's parameters: named tensors (docs/embedded-engine.md lists every
// name and shape), loaded from a safetensors file or drawn deterministically
// from a seed. The embedding, tied to the output head, is held in BF16; every
// other tensor in FP32.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "policy/engine/config.h"
#include "sandbox/base/status.h"

namespace paddock::policy::engine {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

// Every tensor a config needs, in file order.
std::vector<TensorSpec> TensorSpecs(const Config& config);

struct Weights {
  Config config;
  std::string source;            // "seed 1" or the file path
  std::vector<uint16_t> embed;   // "embed.weight" [vocab_size][d_model], BF16
  std::map<std::string, std::vector<float>> tensors;  // every other tensor
  // The tensor's data; the name must be one of TensorSpecs (checked at load).
  const float* Get(const std::string& name) const;
};

// Deterministic weights: each tensor drawn from (seed, tensor name), so two
// configs that share a tensor name and shape share its values.
Result<Weights> SeededWeights(const Config& config, uint64_t seed);

// Loads a safetensors file (mmap) holding exactly TensorSpecs(config), in F32
// or BF16. Errors name the tensor: INVALID_ARGUMENT for a bad header, dtype,
// shape, missing/unexpected tensor or non-finite value; DATA_LOSS for a
// truncated file; NOT_FOUND / PERMISSION_DENIED from open().
Result<Weights> LoadSafetensors(const std::string& path, const Config& config);

// Writes the weights (embed as BF16, the rest F32) atomically (temp + rename);
// the config's JSON goes into __metadata__["paddock.config"].
Status SaveSafetensors(const Weights& weights, const std::string& path);

// A raw tensor for WriteSafetensorsFile (tests use it to write files of any
// dtype/shape, including wrong ones).
struct RawTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
Status WriteSafetensorsFile(const std::string& path, const std::vector<RawTensor>& tensors,
                            const std::map<std::string, std::string>& metadata);

}  // namespace paddock::policy::engine
