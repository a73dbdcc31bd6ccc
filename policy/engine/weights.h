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
  uint64_t digest = 0;           // of the file's bytes (LoadSafetensors); 0 for seeded weights
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
// shape, missing/unexpected tensor or non-finite value, for something that is
// not a regular file, or a file larger than MaxSafetensorsBytes(config);
// DATA_LOSS for a truncated file; NOT_FOUND / PERMISSION_DENIED from open().
// Never blocks on a FIFO or device (the path may come from an HTTP request).
Result<Weights> LoadSafetensors(const std::string& path, const Config& config);

// The largest file LoadSafetensors accepts for `config`: every tensor in F32
// plus the largest header, with 1 MiB to spare.
uint64_t MaxSafetensorsBytes(const Config& config);

// The weight_version a server reports for weights when none is given:
// "seed-N" for seeded weights, "FILE@XXXXXXXX" (file name, 8 hex digits of
// its digest) for a file, so rewriting the same path gives a new version.
std::string DefaultWeightVersion(const Weights& weights);

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
