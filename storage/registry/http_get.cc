#include "storage/registry/http_get.h"

#include <utility>  // before asio: Boost 1.74 headers use std::exchange without it
#include <algorithm>
#include <cctype>
#include <limits>

#include <boost/asio/connect.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <fmt/format.h>

#include "policy/backends/tls.h"

namespace paddock::storage::registry {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::string Url::Authority() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if ((https && port == 443) || (!https && port == 80)) return h;
  return h + ":" + std::to_string(port);
}

std::string Url::str() const { return (https ? "https://" : "http://") + Authority() + target; }

Result<Url> Url::Parse(std::string_view text, const Url* base) {
  auto bad = [&] { return Error(Code::kInvalidArgument, "'{}' is not an http(s) URL", text); };
  Url u;
  std::string_view rest;
  if (text.rfind("https://", 0) == 0) {
    rest = text.substr(8);
  } else if (text.rfind("http://", 0) == 0) {
    u.https = false;
    u.port = 80;
    rest = text.substr(7);
  } else {
    if (!base || text.empty() || text.rfind("//", 0) == 0) return bad();
    u = *base;
    if (text[0] == '/') {
      u.target = std::string(text);
    } else {
      std::string dir = base->target.substr(0, base->target.rfind('/') + 1);
      u.target = dir + std::string(text);
    }
    return u;
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  u.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (authority.empty() || authority.find('@') != std::string_view::npos) return bad();
  std::string_view port_text;
  if (authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad();
    u.host = std::string(authority.substr(1, close - 1));
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return bad();
      port_text = authority.substr(close + 2);
    }
  } else {
    size_t colon = authority.rfind(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (u.host.empty()) return bad();
  if (!port_text.empty()) {
    unsigned v = 0;
    for (char c : port_text) {
      if (!std::isdigit(static_cast<unsigned char>(c)) || v > 65535) return bad();
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) return bad();
    u.port = static_cast<uint16_t>(v);
  }
  return u;
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost") return true;
  error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  return !ec && addr.is_loopback();
}

bool PlainHttpAllowed(const Url& url, const HttpGetOptions& options) {
  if (IsLoopbackHost(url.host)) return true;
  std::string with_port = url.host + ":" + std::to_string(url.port);
  return options.insecure_hosts.count(url.host) || options.insecure_hosts.count(with_port) ||
         options.insecure_hosts.count(url.Authority());
}

Result<std::string> HttpResponse::ReadAll(uint64_t max, const std::string& what) {
  if (auto len = ContentLength(); len && *len > max)
    return Error(Code::kDataLoss, "{} is {} bytes, over the limit of {} bytes", what, *len, max);
  std::string out;
  char buf[16384];
  for (;;) {
    PADDOCK_ASSIGN_OR_RETURN(size_t n, Read(buf, sizeof buf));
    if (n == 0) return out;
    if (out.size() + n > max) return Error(Code::kDataLoss, "{} is over the limit of {} bytes", what, max);
    out.append(buf, n);
  }
}

namespace {

using Parser = http::response_parser<http::buffer_body>;

class BeastResponse final : public HttpResponse {
 public:
  BeastResponse(Url url, Clock::time_point deadline, const HttpGetOptions& options)
      : url_(std::move(url)), deadline_(deadline), options_(options), tcp_(io_) {}

  Status Start(const HttpRequest& request) {
    if (!url_.https && !PlainHttpAllowed(url_, options_))
      return Error(Code::kPermissionDenied,
                   "refusing plain HTTP to {}: only loopback hosts and hosts named with --insecure-registry are "
                   "spoken to without TLS",
                   url_.Authority());
    auto loopback_refused = [&](const std::string& addr) {
      return Error(Code::kPermissionDenied,
                   "refusing to connect to {} ({}): a loopback address, which only clients on paddockd's unix "
                   "socket may pull from",
                   url_.Authority(), addr);
    };
    if (options_.refuse_loopback && IsLoopbackHost(url_.host)) return loopback_refused(url_.host);
    // Resolve + connect, bounded by the connect timeout.
    tcp::resolver resolver(io_);
    error_code ec;
    tcp::resolver::results_type endpoints;
    resolver.async_resolve(url_.host, std::to_string(url_.port), [&](error_code e, tcp::resolver::results_type r) {
      ec = e;
      endpoints = std::move(r);
    });
    if (!RunFor(std::min(deadline_, Clock::now() + options_.connect_timeout), [&] { resolver.cancel(); }))
      return ConnectTimeout("resolving the host");
    if (ec) return Error(Code::kUnavailable, "cannot resolve {}: {}", url_.host, ec.message());
    if (options_.refuse_loopback)
      for (const auto& e : endpoints)
        if (e.endpoint().address().is_loopback()) return loopback_refused(e.endpoint().address().to_string());
    tcp_.expires_at(std::min(deadline_, Clock::now() + options_.connect_timeout));
    tcp_.async_connect(endpoints, [&](error_code e, const tcp::endpoint&) { ec = e; });
    Run();
    if (ec == beast::error::timeout) return ConnectTimeout("connecting");
    if (ec) return Error(Code::kUnavailable, "cannot connect to {}: {}", url_.Authority(), ec.message());
    if (url_.https) {
      if (!options_.tls) return Error(Code::kInternal, "no TLS context for {}", url_.str());
      tls_.emplace(std::move(tcp_), *options_.tls);
      PADDOCK_RETURN_IF_ERROR(policy::ConfigureTlsConnection(tls_->native_handle(), url_.host));
      Tcp().expires_at(std::min(deadline_, Clock::now() + options_.connect_timeout));
      tls_->async_handshake(asio::ssl::stream_base::client, [&](error_code e) { ec = e; });
      Run();
      if (ec == beast::error::timeout) return ConnectTimeout("the TLS handshake");
      bool retryable = false;
      if (ec) return policy::TlsHandshakeError(tls_->native_handle(), url_.host, ec, &retryable);
    }
    http::verb verb = http::string_to_verb(request.method);
    if (verb == http::verb::unknown) return Error(Code::kInternal, "unknown HTTP method '{}'", request.method);
    http::request<http::empty_body> req(verb, url_.target, 11);
    req.set(http::field::host, url_.Authority());
    req.set(http::field::user_agent, "paddock");
    for (const auto& [k, v] : request.headers) req.set(k, v);
    const uint64_t body_size = request.body ? request.body->size : 0;
    if (request.body || verb == http::verb::post || verb == http::verb::put || verb == http::verb::patch)
      req.content_length(body_size);
    // The head, then the body as the producer hands it over: each piece must be
    // taken by the server within the idle timeout.
    http::request_serializer<http::empty_body> head(req);
    ArmIdle();
    WithStream([&](auto& s) { http::async_write_header(s, head, [&](error_code e, size_t) { ec = e; }); });
    Run();
    if (ec == beast::error::timeout) return Timeout("sending the request");
    if (ec) return Error(Code::kUnavailable, "{}: sending the request: {}", url_.str(), ec.message());
    // A server may answer before taking the whole body (401, 413) and close:
    // its answer then says more than the broken pipe, so it is read if it came.
    Status body_error = request.body ? SendBody(*request.body) : Status::Ok();
    if (!body_error.ok() && body_error.code() != Code::kUnavailable) return body_error;
    parser_.header_limit(options_.max_head_bytes);
    if (verb == http::verb::head) parser_.skip(true);  // a HEAD response's Content-Length announces no body
    parser_.body_limit(std::numeric_limits<uint64_t>::max());
    ArmIdle();
    WithStream([&](auto& s) { http::async_read_header(s, buffer_, parser_, [&](error_code e, size_t) { ec = e; }); });
    Run();
    if (ec && !body_error.ok()) return body_error;
    if (ec == beast::error::timeout) return Timeout("waiting for the response");
    if (ec == http::error::header_limit)
      return Error(Code::kDataLoss, "{}: the response headers are over {} bytes", url_.str(), options_.max_head_bytes);
    if (ec) return Error(Code::kUnavailable, "{}: reading the response: {}", url_.str(), ec.message());
    // Beast reads at most the buffer's free capacity per step (≥ 512 bytes,
    // ≤ 64 KiB): left at the head's few KiB, a layer took ~10x the socket reads.
    buffer_.reserve(64 << 10);
    return Status::Ok();
  }

  Status SendBody(const HttpBody& body) {
    uint64_t sent = 0;
    Status st = body.write([&](const void* p, size_t n) -> Status {
      if (n == 0) return Status::Ok();
      if (sent + n > body.size)
        return Error(Code::kInternal, "{}: the request body is longer than the {} bytes announced", url_.str(),
                     body.size);
      if (options_.cancelled && options_.cancelled()) return Error(Code::kCancelled, "{}: cancelled", url_.str());
      error_code ec;
      ArmIdle();
      WithStream([&](auto& s) { asio::async_write(s, asio::buffer(p, n), [&](error_code e, size_t) { ec = e; }); });
      Run();
      if (ec == beast::error::timeout) return Timeout("sending the request body");
      if (ec) return Error(Code::kUnavailable, "{}: sending the request body: {}", url_.str(), ec.message());
      sent += n;
      return Status::Ok();
    });
    if (!st.ok()) return st;
    if (sent != body.size)
      return Error(Code::kInternal, "{}: the request body ended after {} of the {} bytes announced", url_.str(), sent,
                   body.size);
    return Status::Ok();
  }

  unsigned status() const override { return parser_.get().result_int(); }
  std::string Header(const std::string& name) const override {
    auto it = parser_.get().find(name);
    return it == parser_.get().end() ? "" : std::string(it->value());
  }
  std::optional<uint64_t> ContentLength() const override {
    auto l = parser_.content_length();
    return l ? std::optional<uint64_t>(*l) : std::nullopt;
  }

  Result<size_t> Read(void* buf, size_t n) override {
    if (n == 0) return 0;
    while (!parser_.is_done()) {
      if (options_.cancelled && options_.cancelled())
        return Error(Code::kCancelled, "{}: cancelled", url_.str());
      parser_.get().body().data = buf;
      parser_.get().body().size = n;
      error_code ec;
      ArmIdle();
      // read_some: one socket read per step, so the idle timeout measures silence
      // (async_read would wait for the whole buffer under one timer).
      WithStream(
          [&](auto& s) { http::async_read_some(s, buffer_, parser_, [&](error_code e, size_t) { ec = e; }); });
      Run();
      if (ec == http::error::need_buffer) ec = {};
      if (ec == beast::error::timeout) return Timeout("reading the body");
      if (ec == http::error::partial_message || ec == http::error::end_of_stream ||
          ec == asio::ssl::error::stream_truncated)
        return Error(Code::kUnavailable, "{}: the server closed the connection before the end of the body",
                     url_.str());
      if (ec) return Error(Code::kUnavailable, "{}: reading the body: {}", url_.str(), ec.message());
      size_t got = n - parser_.get().body().size;
      if (got > 0) return got;
    }
    return 0;
  }

 private:
  beast::tcp_stream& Tcp() { return tls_ ? beast::get_lowest_layer(*tls_) : tcp_; }
  template <typename F>
  void WithStream(F&& f) {
    if (tls_) f(*tls_);
    else f(tcp_);
  }
  // The next step's time: the idle timeout, never past the request's deadline.
  void ArmIdle() {
    auto now = Clock::now();
    deadline_binds_ = now + options_.idle_timeout >= deadline_;
    Tcp().expires_at(std::min(deadline_, now + options_.idle_timeout));
  }
  void Run() {
    io_.restart();
    io_.run();
  }
  // Runs until the pending operation completes or `until`; false on timeout
  // (after `cancel` and draining).
  template <typename Cancel>
  bool RunFor(Clock::time_point until, Cancel&& cancel) {
    io_.restart();
    io_.run_until(until);
    if (io_.stopped()) return true;
    cancel();
    io_.restart();
    io_.run();
    return false;
  }
  Status ConnectTimeout(std::string_view during) {
    return Error(Code::kDeadlineExceeded, "{}: {} took longer than {} ms", url_.str(), during,
                 options_.connect_timeout.count());
  }
  Status Timeout(std::string_view during) {
    if (deadline_binds_ || Clock::now() >= deadline_)
      return Error(Code::kDeadlineExceeded, "{}: the request's deadline passed while {}", url_.str(), during);
    return Error(Code::kDeadlineExceeded, "{}: nothing received for {} ms while {}", url_.str(),
                 options_.idle_timeout.count(), during);
  }

  Url url_;
  Clock::time_point deadline_;
  HttpGetOptions options_;  // a copy: the response may outlive the caller's options
  asio::io_context io_;
  beast::tcp_stream tcp_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  beast::flat_buffer buffer_;  // unbounded: the parser's header_limit bounds the head
  Parser parser_;
  bool deadline_binds_ = false;
};

}  // namespace

HttpBody HttpBody::Of(std::string bytes) {
  HttpBody b;
  b.size = bytes.size();
  b.write = [bytes = std::make_shared<const std::string>(std::move(bytes))](
                const std::function<Status(const void*, size_t)>& sink) { return sink(bytes->data(), bytes->size()); };
  return b;
}

Result<std::unique_ptr<HttpResponse>> HttpSend(const HttpRequest& request, Clock::time_point deadline,
                                               const HttpGetOptions& options) {
  auto r = std::make_unique<BeastResponse>(request.url, deadline, options);
  PADDOCK_RETURN_IF_ERROR(r->Start(request));
  return std::unique_ptr<HttpResponse>(std::move(r));
}

Result<std::unique_ptr<HttpResponse>> HttpGet(const Url& url, const HttpHeaders& headers,
                                              Clock::time_point deadline, const HttpGetOptions& options) {
  HttpRequest req;
  req.url = url;
  req.headers = headers;
  return HttpSend(req, deadline, options);
}

}  // namespace paddock::storage::registry
