// Turning one row of logits into a token and its logprob: constraint mask,
// temperature, top-k, top-p, then a draw from the sequence's own generator.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "policy/engine/engine.h"
#include "sandbox/base/status.h"

namespace paddock::policy::engine {

// splitmix64: same seed, same stream, on every platform.
class SequenceRng {
 public:
  explicit SequenceRng(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  double Uniform() { return static_cast<double>(Next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t state_;
};

struct SampledToken {
  int32_t token;
  float logprob;  // log p(token) under the distribution sampled from (see docs)
};

// `allowed`: null for free sampling, else one byte per vocabulary id.
// Greedy (temperature 0) picks the highest logit (lowest id on ties) and
// reports its log-softmax over the allowed set at temperature 1. Otherwise the
// logprob is that of the final renormalised distribution (after mask,
// temperature, top-k and top-p). FAILED_PRECONDITION when nothing is allowed.
Result<SampledToken> SampleToken(std::span<const float> logits, const Sampling& sampling,
                                 const std::vector<uint8_t>* allowed, SequenceRng& rng);

}  // namespace paddock::policy::engine
