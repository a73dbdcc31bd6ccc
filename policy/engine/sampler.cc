#include "policy/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "policy/engine/kernels.h"

namespace paddock::policy::engine {

uint64_t SequenceRng::Next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Result<SampledToken> SampleToken(std::span<const float> logits, const Sampling& sampling,
                                 const std::vector<uint8_t>* allowed, SequenceRng& rng) {
  thread_local std::vector<int32_t> ids;
  thread_local std::vector<float> vals, probs;
  ids.clear();
  vals.clear();
  const size_t V = logits.size();
  if (!allowed && sampling.top_k == 0 && sampling.top_p >= 1.0) {
    // Free sampling over the whole vocabulary: no copies of the ids.
    probs.resize(V);
    if (sampling.temperature <= 0) {
      float mx = MaxOf(logits.data(), V);
      size_t best = 0;
      while (best + 1 < V && logits[best] != mx) ++best;  // the first (lowest id) maximum
      double sum = ExpShifted(logits.data(), V, logits[best], probs.data());
      return SampledToken{static_cast<int32_t>(best), static_cast<float>(-std::log(sum))};
    }
    const float inv_t = static_cast<float>(1.0 / sampling.temperature);
    // p_i = exp(l_i / T - max / T); the max of l / T is max(l) / T.
    float mx = MaxOf(logits.data(), V) * inv_t;
    double sum = ExpScaled(logits.data(), V, inv_t, mx, probs.data());
    size_t pick = CumulativeSearch(probs.data(), V, rng.Uniform() * sum);
    while (probs[pick] <= 0 && pick > 0) --pick;
    return SampledToken{static_cast<int32_t>(pick), static_cast<float>(std::log(probs[pick] / sum))};
  }
  if (allowed) {
    for (size_t i = 0; i < V; ++i)
      if ((*allowed)[i]) {
        ids.push_back(static_cast<int32_t>(i));
        vals.push_back(logits[i]);
      }
    if (ids.empty()) return Error(Code::kFailedPrecondition, "the constraint allows no next token");
  } else {
    ids.resize(V);
    std::iota(ids.begin(), ids.end(), 0);
    vals.assign(logits.begin(), logits.end());
  }
  size_t n = ids.size();
  if (sampling.temperature <= 0) {
    size_t best = 0;
    for (size_t i = 1; i < n; ++i)
      if (vals[i] > vals[best]) best = i;
    probs.resize(n);
    double sum = ExpShifted(vals.data(), n, vals[best], probs.data());
    return SampledToken{ids[best], static_cast<float>(-std::log(sum))};
  }
  const float inv_t = static_cast<float>(1.0 / sampling.temperature);
  for (float& v : vals) v *= inv_t;
  // top-k: keep the k largest (ties: lower id), compacted in id order.
  if (sampling.top_k > 0 && static_cast<size_t>(sampling.top_k) < n) {
    std::vector<uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    size_t k = static_cast<size_t>(sampling.top_k);
    std::nth_element(order.begin(), order.begin() + k, order.end(), [&](uint32_t a, uint32_t b) {
      return vals[a] > vals[b] || (vals[a] == vals[b] && a < b);
    });
    order.resize(k);
    std::sort(order.begin(), order.end());
    for (size_t i = 0; i < k; ++i) {
      ids[i] = ids[order[i]];
      vals[i] = vals[order[i]];
    }
    n = k;
    ids.resize(n);
    vals.resize(n);
  }
  float mx = *std::max_element(vals.begin(), vals.end());
  probs.resize(n);
  double sum = ExpShifted(vals.data(), n, mx, probs.data());
  if (sampling.top_p < 1.0) {
    // Smallest set of most likely tokens whose mass reaches top_p: look at the
    // top 256, 4096, ... until their mass suffices, then cut in sorted order.
    std::vector<uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    auto more_likely = [&](uint32_t a, uint32_t b) {
      return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
    };
    const double need = sampling.top_p * sum;
    size_t keep = n;
    for (size_t k = 256;; k *= 16) {
      size_t kk = std::min(k, n);
      std::partial_sort(order.begin(), order.begin() + kk, order.end(), more_likely);
      double mass = 0;
      size_t cut = 0;
      for (; cut < kk; ++cut) {
        mass += probs[order[cut]];
        if (mass >= need) break;
      }
      if (cut < kk) {
        keep = cut + 1;
        break;
      }
      if (kk == n) break;
    }
    order.resize(keep);
    std::sort(order.begin(), order.end());
    sum = 0;
    for (size_t i = 0; i < keep; ++i) {
      ids[i] = ids[order[i]];
      probs[i] = probs[order[i]];
      sum += probs[i];
    }
    n = keep;
  }
  double u = rng.Uniform() * sum, acc = 0;
  size_t pick = n - 1;
  for (size_t i = 0; i < n; ++i) {
    acc += probs[i];
    if (u < acc) {
      pick = i;
      break;
    }
  }
  while (probs[pick] <= 0 && pick > 0) --pick;  // never a zero-probability token
  return SampledToken{ids[pick], static_cast<float>(std::log(probs[pick] / sum))};
}

}  // namespace paddock::policy::engine
