// A small HTTP/1.1 server (Boost.Beast): one thread per connection with
// keep-alive, a head and body size cap (413), a connection cap (503), and a
// handler for everything past the request line. `paddock-policy` serves its
// PolicyService with it (requests on different connections run at the same
// time, so their generations batch in the engine); paddockd its /metrics.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::policy::engine::server {

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Who sent a request, for endpoints that only local callers may use.
struct HttpPeer {
  std::string address;   // IP address as text ("127.0.0.1", "::1")
  bool loopback = true;  // 127.0.0.0/8, ::1 or ::ffff:127.x.x.x
};

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  virtual HttpReply Handle(const std::string& method, const std::string& target, const std::string& body) = 0;
  // What the server calls: Handle, for handlers that do not care who asks.
  virtual HttpReply HandleFrom(const HttpPeer& peer, const std::string& method, const std::string& target,
                               const std::string& body) {
    (void)peer;
    return Handle(method, target, body);
  }
  // Transport-level outcomes the server answered itself (oversized, bad HTTP, busy).
  virtual void CountRejected(const std::string& endpoint, int status) {}
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 30000;               // 0: any free port (see port())
  size_t max_body_bytes = 16u << 20;   // larger bodies get 413
  size_t max_connections = 512;        // more get 503 and are closed
  int idle_timeout_s = 300;            // a keep-alive connection idle this long is closed
  std::string server_name = "paddock-policy";  // the Server header
};

class HttpServer {
 public:
  // Binds and starts accepting. INVALID_ARGUMENT for a bad host, UNAVAILABLE
  // when the address cannot be bound (in use, no permission).
  static Result<std::unique_ptr<HttpServer>> Start(std::shared_ptr<HttpHandler> handler,
                                                   HttpServerOptions options);
  ~HttpServer();  // Stop()

  uint16_t port() const { return port_; }
  // Stops accepting, closes every connection (requests in the engine finish
  // first), joins the threads.
  void Stop();

  struct Impl;

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
};

// "HOST:PORT" (IPv6 as "[::1]:PORT") → host, port. INVALID_ARGUMENT otherwise.
Status ParseListen(const std::string& listen, std::string* host, uint16_t* port);

}  // namespace paddock::policy::engine::server
