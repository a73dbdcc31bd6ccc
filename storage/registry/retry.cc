#include "storage/registry/retry.h"

#include <cctype>
#include <random>
#include <thread>

namespace paddock::storage::registry {

std::optional<std::chrono::milliseconds> ParseRetryAfter(const std::string& value) {
  if (value.empty() || value.size() > 9) return std::nullopt;
  int64_t s = 0;
  for (char c : value) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
    s = s * 10 + (c - '0');
  }
  return std::chrono::milliseconds(s * 1000);
}

bool Retrier::WaitBeforeRetry(const AttemptFailure& failure) {
  using namespace std::chrono;
  if (!failure.transient || attempts_ >= policy_.max_attempts) return false;
  milliseconds wait;
  if (failure.retry_after) {
    if (*failure.retry_after > policy_.max_retry_after) return false;
    wait = *failure.retry_after;
  } else {
    // 200 ms, 400 ms, 800 ms … with up to a quarter more at random, so that
    // many nodes failing together do not come back together.
    milliseconds base = std::min(policy_.max_backoff, policy_.first_backoff * (1 << std::min(attempts_ - 1, 16)));
    thread_local std::mt19937 rng(std::random_device{}());
    wait = base + milliseconds(std::uniform_int_distribution<int64_t>(0, base.count() / 4)(rng));
  }
  auto until = steady_clock::now() + wait;
  if (until - start_ > policy_.total) return false;
  while (steady_clock::now() < until) {
    if (cancelled_ && cancelled_()) return false;
    std::this_thread::sleep_for(std::min<steady_clock::duration>(milliseconds(50), until - steady_clock::now()));
  }
  if (cancelled_ && cancelled_()) return false;
  ++attempts_;
  return true;
}

}  // namespace paddock::storage::registry
