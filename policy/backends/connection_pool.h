// Idle keep-alive connections per endpoint ("host:port"). Used only from the
// owning HttpClient's I/O thread, so it takes no locks; the counters are atomic
// so other threads may read them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

#include <boost/beast/core/tcp_stream.hpp>

namespace paddock::policy {

class ConnectionPool {
 public:
  struct Options {
    size_t max_idle_per_endpoint = 32;
    // An idle connection older than this is closed rather than reused: servers
    // close idle keep-alive connections on their own schedule (uvicorn: 5 s).
    std::chrono::milliseconds max_idle_time{4000};
  };
  explicit ConnectionPool(Options options) : options_(options) {}

  // An idle connection to `authority`, or null when none is left.
  std::unique_ptr<boost::beast::tcp_stream> Acquire(const std::string& authority);
  // Keeps `stream` for reuse (or closes it when the endpoint has enough idle ones).
  void Release(const std::string& authority, std::unique_ptr<boost::beast::tcp_stream> stream);
  // Closes every idle connection.
  void Clear();

  void CountOpened() { opened_.fetch_add(1, std::memory_order_relaxed); }
  void CountReused() { reused_.fetch_add(1, std::memory_order_relaxed); }
  // Connections opened / idle connections handed out again, since creation.
  uint64_t opened() const { return opened_.load(std::memory_order_relaxed); }
  uint64_t reused() const { return reused_.load(std::memory_order_relaxed); }

 private:
  struct Idle {
    std::unique_ptr<boost::beast::tcp_stream> stream;
    std::chrono::steady_clock::time_point since;
  };
  Options options_;
  std::unordered_map<std::string, std::deque<Idle>> idle_;
  std::atomic<uint64_t> opened_{0};
  std::atomic<uint64_t> reused_{0};
};

}  // namespace paddock::policy
