// One streaming HTTP/1.1 request on Boost.Beast, for registry manifests and
// blobs: GET and HEAD, and POST/PUT/PATCH with a body streamed from a producer
// (a layer pushed from the store without a copy in memory). Plain TCP or TLS
// (verified against the system CAs or a given CA file); the response body is
// read piece by piece as it arrives so a layer can be ingested while it
// downloads. Blocking for the caller: each step runs the connection's own
// io_context until the step completes or its time is up.
//
// Limits a hostile server cannot push past: the response head (status line and
// headers) is bounded, every request has a deadline, and a connection that sends
// nothing for `idle_timeout` (or accepts no byte of the request body for that
// long) is dropped. The response body is the caller's to bound (the caller knows
// the size it expects).
//
// One connection per request (no keep-alive): a pull or push makes a handful of
// requests, each big or few.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/ssl/context.hpp>

#include "sandbox/base/status.h"

namespace paddock::storage::registry {

using Clock = std::chrono::steady_clock;

struct Url {
  bool https = true;
  std::string host;  // without brackets for IPv6
  uint16_t port = 443;
  std::string target = "/";  // path and query
  std::string Authority() const;  // host[:port], as in a Host header
  std::string str() const;
  // "http(s)://host[:port]/path"; or, relative to `base`, "/path" or "path".
  static Result<Url> Parse(std::string_view text, const Url* base = nullptr);
};

// Loopback: "localhost", 127.0.0.0/8, ::1.
bool IsLoopbackHost(const std::string& host);

struct HttpGetOptions {
  // Hosts ("host" or "host:port") that may be spoken to over plain HTTP besides
  // loopback ones; any other http:// URL is refused, redirects included.
  std::set<std::string> insecure_hosts;
  // For https: shared, built by MakeTlsClientContext (system CAs or a CA file).
  std::shared_ptr<boost::asio::ssl::context> tls;
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds idle_timeout{30000};  // no byte received for this long
  uint32_t max_head_bytes = 64 << 10;             // status line + headers
  // Refuse loopback hosts, by name or by resolved address, redirects included:
  // set for pulls a remote (TCP) client asks for, which must not reach the
  // daemon host's own services.
  bool refuse_loopback = false;
  // Checked between reads; true stops the request (CANCELLED).
  std::function<bool()> cancelled;
};

// Whether plain HTTP to this URL's host is allowed by `options`.
bool PlainHttpAllowed(const Url& url, const HttpGetOptions& options);

class HttpResponse {
 public:
  virtual ~HttpResponse() = default;
  virtual unsigned status() const = 0;
  // Header value by lowercase name; "" when absent.
  virtual std::string Header(const std::string& lowercase_name) const = 0;
  virtual std::optional<uint64_t> ContentLength() const = 0;
  // Up to n body bytes, waiting for at least one; 0 at the end of the body.
  virtual Result<size_t> Read(void* buf, size_t n) = 0;
  // The whole body; DATA_LOSS naming `what` when it is longer than `max`.
  Result<std::string> ReadAll(uint64_t max, const std::string& what);
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// A request body of exactly `size` bytes (sent with that Content-Length):
// `write` hands them to its sink in order. It may be called again for a retried
// request and must then produce the same bytes; producing more or fewer than
// `size` fails the request (INTERNAL).
struct HttpBody {
  uint64_t size = 0;
  std::function<Status(const std::function<Status(const void*, size_t)>& sink)> write;
  static HttpBody Of(std::string bytes);  // a small body held in memory
};

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, POST, PUT, PATCH, DELETE
  Url url;
  HttpHeaders headers;
  const HttpBody* body = nullptr;  // none: no body (Content-Length: 0 for POST/PUT/PATCH)
};

// Connects, sends the request (and its body), reads the response head.
// Redirects are not followed here (the caller decides). A HEAD response has no
// body. Errors: UNAVAILABLE (resolve, connect, reset, not HTTP),
// DEADLINE_EXCEEDED, PERMISSION_DENIED (plain HTTP not allowed, TLS
// verification failed), CANCELLED, each naming the URL; a body producer's own
// error is returned as it is.
Result<std::unique_ptr<HttpResponse>> HttpSend(const HttpRequest& request, Clock::time_point deadline,
                                               const HttpGetOptions& options);
// HttpSend of a GET.
Result<std::unique_ptr<HttpResponse>> HttpGet(const Url& url, const HttpHeaders& headers,
                                              Clock::time_point deadline, const HttpGetOptions& options);

}  // namespace paddock::storage::registry
