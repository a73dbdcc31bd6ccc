// Retries of registry requests that failed for a reason that may pass: the
// connection could not be made or broke (UNAVAILABLE from the transport), the
// registry is rate limiting (429) or its gateway is (502, 503, 504).
// Everything else fails at once: 401, 403 and 404 will not change by asking
// again, a digest mismatch is the content's fault, and a timeout has already
// waited its full time.
//
// Between attempts: exponential backoff with jitter, or the server's
// Retry-After (seconds) when it gives one. A Retry-After longer than
// `max_retry_after` is not waited for: the error is returned at once (a
// sandbox create should not hang for minutes behind a rate limit).
#pragma once

#include <chrono>
#include <functional>
#include <optional>

#include "sandbox/base/status.h"

namespace paddock::storage::registry {

struct RetryPolicy {
  int max_attempts = 4;  // tries of one request, resumes of a layer included
  std::chrono::milliseconds first_backoff{200};
  std::chrono::milliseconds max_backoff{3000};
  std::chrono::milliseconds max_retry_after{10000};
  // No attempt starts after this long since the first (the attempts' own
  // deadlines still apply to each).
  std::chrono::milliseconds total{300000};
};

// What one failed attempt says about trying again.
struct AttemptFailure {
  bool transient = false;
  std::optional<std::chrono::milliseconds> retry_after;  // from a 429/503's Retry-After
};

// "120" → 120 s; an HTTP date or junk → nullopt (then the backoff applies).
std::optional<std::chrono::milliseconds> ParseRetryAfter(const std::string& value);

class Retrier {
 public:
  // `cancelled` is polled while waiting; a cancelled wait ends the retries.
  Retrier(const RetryPolicy& policy, std::function<bool()> cancelled)
      : policy_(policy), cancelled_(std::move(cancelled)), start_(std::chrono::steady_clock::now()) {}

  // After attempt number attempts() failed with `failure`: waits and returns
  // true when another attempt is due; false when the error should be returned.
  bool WaitBeforeRetry(const AttemptFailure& failure);
  int attempts() const { return attempts_; }
  int retries() const { return attempts_ - 1; }

 private:
  RetryPolicy policy_;
  std::function<bool()> cancelled_;
  std::chrono::steady_clock::time_point start_;
  int attempts_ = 1;
};

}  // namespace paddock::storage::registry
