#include "policy/backends/retry_policy.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace paddock::policy {

std::chrono::milliseconds RetryPolicy::BackoffBefore(int attempt) const {
  if (attempt <= 1) return std::chrono::milliseconds(0);
  double ms = static_cast<double>(initial_backoff.count()) * std::pow(multiplier, attempt - 2);
  ms = std::min(ms, static_cast<double>(max_backoff.count()));
  if (jitter > 0) {
    thread_local std::minstd_rand rng(std::random_device{}());
    std::uniform_real_distribution<double> dist(1.0 - std::clamp(jitter, 0.0, 1.0), 1.0);
    ms *= dist(rng);
  }
  return std::chrono::milliseconds(static_cast<long>(ms));
}

bool IsRetryableHttpStatus(unsigned status) {
  return status == 500 || status == 502 || status == 503 || status == 504;
}

}  // namespace paddock::policy
