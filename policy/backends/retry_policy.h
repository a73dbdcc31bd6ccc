// When and how long to wait before trying an HTTP call again. Transient means
// the server may answer next time: connect refused/reset, a connection closed
// mid-response, an attempt timeout, HTTP 500/502/503/504. 4xx is never retried.
#pragma once

#include <chrono>

namespace paddock::policy {

struct RetryPolicy {
  int max_attempts = 4;                                  // 1 = no retry
  std::chrono::milliseconds initial_backoff{50};         // before the 2nd attempt
  double multiplier = 2.0;                               // exponential growth
  std::chrono::milliseconds max_backoff{2000};
  double jitter = 0.2;  // each wait is scaled by a random factor in [1-jitter, 1]

  // The wait before attempt `attempt` (2 = first retry), jitter applied.
  std::chrono::milliseconds BackoffBefore(int attempt) const;
};

// HTTP statuses worth another attempt.
bool IsRetryableHttpStatus(unsigned status);

}  // namespace paddock::policy
