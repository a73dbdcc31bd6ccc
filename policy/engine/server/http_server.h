// The HTTP/1.1 transport of `paddock-policy` (Boost.Beast): one thread per
// connection with keep-alive, a body size cap (413), a connection cap (503),
// and PolicyService for everything past the request line. Requests on
// different connections run at the same time, so their generations batch in
// the engine.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "policy/engine/server/policy_service.h"
#include "sandbox/base/status.h"

namespace paddock::policy::engine::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 30000;               // 0: any free port (see port())
  size_t max_body_bytes = 16u << 20;   // larger bodies get 413
  size_t max_connections = 512;        // more get 503 and are closed
  int idle_timeout_s = 300;            // a keep-alive connection idle this long is closed
};

class HttpServer {
 public:
  // Binds and starts accepting. INVALID_ARGUMENT for a bad host, UNAVAILABLE
  // when the address cannot be bound (in use, no permission).
  static Result<std::unique_ptr<HttpServer>> Start(std::shared_ptr<PolicyService> service,
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
