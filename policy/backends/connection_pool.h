// Idle keep-alive connections per endpoint ("http://host:port" or
// "https://host:port"). Used only from the owning HttpClient's I/O thread, so it
// takes no locks; the counters are atomic so other threads may read them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

namespace paddock::policy {

// One connection to an inference server: plain TCP, or TLS over TCP. Deadlines
// and cancellation always act on the TCP layer (tcp()).
class Connection {
 public:
  using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;

  explicit Connection(boost::asio::io_context& io)
      : plain_(std::make_unique<boost::beast::tcp_stream>(io)) {}
  Connection(boost::asio::io_context& io, boost::asio::ssl::context& ctx)
      : tls_(std::make_unique<TlsStream>(io, ctx)) {}

  bool is_tls() const { return tls_ != nullptr; }
  boost::beast::tcp_stream& tcp() { return tls_ ? tls_->next_layer() : *plain_; }
  TlsStream* tls() { return tls_.get(); }        // null for plain TCP
  boost::beast::tcp_stream* plain() { return plain_.get(); }  // null for TLS

  // Closes the socket at once (no TLS close_notify: the exchange is over or abandoned).
  void Close() {
    boost::system::error_code ignored;
    tcp().socket().close(ignored);
  }

 private:
  std::unique_ptr<boost::beast::tcp_stream> plain_;
  std::unique_ptr<TlsStream> tls_;
};

class ConnectionPool {
 public:
  struct Options {
    size_t max_idle_per_endpoint = 32;
    // An idle connection older than this is closed rather than reused: servers
    // close idle keep-alive connections on their own schedule (uvicorn: 5 s).
    std::chrono::milliseconds max_idle_time{4000};
  };
  explicit ConnectionPool(Options options) : options_(options) {}

  // An idle connection for `key` (Endpoint::PoolKey()), or null when none is left.
  std::unique_ptr<Connection> Acquire(const std::string& key);
  // Keeps `conn` for reuse (or closes it when the endpoint has enough idle ones).
  void Release(const std::string& key, std::unique_ptr<Connection> conn);
  // Closes every idle connection.
  void Clear();

  void CountOpened() { opened_.fetch_add(1, std::memory_order_relaxed); }
  void CountReused() { reused_.fetch_add(1, std::memory_order_relaxed); }
  // Connections opened / idle connections handed out again, since creation.
  uint64_t opened() const { return opened_.load(std::memory_order_relaxed); }
  uint64_t reused() const { return reused_.load(std::memory_order_relaxed); }

 private:
  struct Idle {
    std::unique_ptr<Connection> conn;
    std::chrono::steady_clock::time_point since;
  };
  Options options_;
  std::unordered_map<std::string, std::deque<Idle>> idle_;
  std::atomic<uint64_t> opened_{0};
  std::atomic<uint64_t> reused_{0};
};

}  // namespace paddock::policy
