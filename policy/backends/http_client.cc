#include "policy/backends/http_client.h"

#include <algorithm>
#include <utility>  // before asio: Boost 1.74 awaitable.hpp uses std::exchange without it
#include <future>
#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include "policy/backends/http_errors.h"

namespace paddock::policy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

long MsBetween(Clock::time_point a, Clock::time_point b) {
  return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count());
}

// A closed keep-alive connection shows up as one of these on its first use
// (over TLS, a peer that closes without close_notify gives stream_truncated).
bool IsStaleConnectionError(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == http::error::partial_message || ec == asio::ssl::error::stream_truncated;
}

bool IsClosedMidResponse(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == http::error::partial_message ||
         ec == asio::ssl::error::stream_truncated;
}

using Request = http::request<http::string_body>;
using Parser = http::response_parser<http::string_body>;

// One request/response exchange on either kind of connection.
asio::awaitable<void> Exchange(Connection& conn, Request& req, beast::flat_buffer& buffer,
                               Parser& parser, error_code& ec, bool& wrote) {
  wrote = false;
  if (auto* tls = conn.tls()) {
    co_await http::async_write(*tls, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    wrote = true;
    co_await http::async_read(*tls, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  } else {
    auto& tcp_stream = *conn.plain();
    co_await http::async_write(tcp_stream, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    wrote = true;
    co_await http::async_read(tcp_stream, buffer, parser,
                              asio::redirect_error(asio::use_awaitable, ec));
  }
}

struct AttemptOutcome {
  Status status;                       // ok when `response` is set
  bool retryable = false;
  std::optional<HttpResponse> response;
};

}  // namespace

// One PostJson call; lives on the I/O thread (owned by its coroutine, the cancel
// callbacks hold it weakly).
struct HttpCallState : std::enable_shared_from_this<HttpCallState> {
  HttpCallState(HttpClient* c, asio::io_context& io)
      : client(c), timer(io), resolver(io) {}

  HttpClient* client;
  Endpoint endpoint;
  std::string target;
  std::string method = "POST";
  std::string body;
  bool answer_4xx = false;
  HttpCall call;
  HttpClient::Done done;
  uint64_t cancel_id = 0;
  uint64_t shutdown_id = 0;

  // I/O-thread state.
  bool cancelled = false;
  bool finished = false;
  Connection* active = nullptr;
  asio::steady_timer timer;
  tcp::resolver resolver;

  std::string Where() const { return endpoint.Authority() + target; }

  bool Cancelled() const {
    return cancelled || (call.cancel && call.cancel->cancelled()) ||
           client->shutdown_.cancelled();
  }

  // Runs on the I/O thread (posted by a cancel token).
  void Interrupt() {
    cancelled = true;
    if (active) active->tcp().cancel();
    timer.cancel();
    resolver.cancel();
  }

  void Finish(Result<HttpResponse> result) {
    if (finished) return;
    finished = true;
    if (call.cancel && cancel_id) call.cancel->Unregister(cancel_id);
    if (shutdown_id) client->shutdown_.Unregister(shutdown_id);
    auto cb = std::move(done);
    cb(std::move(result));
    client->CallFinished();
  }

  asio::awaitable<AttemptOutcome> Attempt(int attempt);
  asio::awaitable<void> Run();
};

asio::awaitable<AttemptOutcome> HttpCallState::Attempt(int attempt) {
  const auto& opts = client->options_;
  auto& pool = client->pool_;
  auto start = Clock::now();
  auto attempt_deadline = call.deadline;
  if (opts.attempt_timeout.count() > 0) {
    attempt_deadline = std::min(call.deadline, start + opts.attempt_timeout);
  }
  const bool call_deadline_binds = attempt_deadline == call.deadline;

  auto timed_out = [&](std::string_view during) {
    AttemptOutcome o;
    if (call_deadline_binds) {
      o.status = Error(Code::kDeadlineExceeded, "no answer from {} within the {} ms deadline ({})",
                       Where(), MsBetween(start, attempt_deadline) + 0, during);
    } else {
      o.status = Error(Code::kDeadlineExceeded, "attempt {} to {} timed out after {} ms ({})",
                       attempt, Where(), MsBetween(start, attempt_deadline), during);
      o.retryable = true;
    }
    return o;
  };
  auto unavailable = [&](std::string_view during, const error_code& ec) {
    AttemptOutcome o;
    o.status = Error(Code::kUnavailable, "inference server {} is unavailable: {}: {}",
                     endpoint.Authority(), during, ec.message());
    o.retryable = true;
    return o;
  };
  auto cancelled_outcome = [&] {
    AttemptOutcome o;
    o.status = Error(Code::kCancelled, "request to {} cancelled", Where());
    return o;
  };

  const bool get = method == "GET";
  http::request<http::string_body> req{get ? http::verb::get : http::verb::post, target, 11};
  req.set(http::field::host, endpoint.host);
  req.set(http::field::user_agent, "paddock-policy/1");
  if (!get) req.set(http::field::content_type, "application/json");
  req.set(http::field::accept, "application/json");
  for (const auto& [k, v] : opts.headers) req.set(k, v);
  req.keep_alive(true);
  if (!get) req.body() = body;
  req.prepare_payload();

  const std::string key = endpoint.PoolKey();
  std::unique_ptr<Connection> stream = pool.Acquire(key);
  bool reused = stream != nullptr;
  error_code ec;
  for (int fresh = 0; fresh < 2; ++fresh) {
    if (!stream) {
      reused = false;
      asio::ssl::context* tls_ctx = nullptr;
      if (endpoint.tls) {
        auto ctx = client->TlsContext();
        if (!ctx.ok()) {
          AttemptOutcome o;
          o.status = ctx.status();
          co_return o;
        }
        tls_ctx = *ctx;
      }
      auto results = co_await resolver.async_resolve(endpoint.host, endpoint.port,
                                                     asio::redirect_error(asio::use_awaitable, ec));
      if (Cancelled()) co_return cancelled_outcome();
      if (ec) co_return unavailable(fmt::format("resolving '{}'", endpoint.host), ec);
      stream = tls_ctx ? std::make_unique<Connection>(client->io_, *tls_ctx)
                       : std::make_unique<Connection>(client->io_);
      active = stream.get();
      auto connect_deadline = std::min(attempt_deadline, Clock::now() + opts.connect_timeout);
      stream->tcp().expires_at(connect_deadline);
      co_await stream->tcp().async_connect(results, asio::redirect_error(asio::use_awaitable, ec));
      active = nullptr;
      if (Cancelled()) co_return cancelled_outcome();
      if (ec == beast::error::timeout) {
        if (connect_deadline < attempt_deadline) {
          co_return unavailable(fmt::format("connecting (no answer in {} ms)",
                                            opts.connect_timeout.count()), ec);
        }
        co_return timed_out("connecting");
      }
      if (ec) co_return unavailable("connecting", ec);
      stream->tcp().socket().set_option(tcp::no_delay(true), ec);
      pool.CountOpened();
      if (auto* tls = stream->tls()) {
        if (Status s = ConfigureTlsConnection(tls->native_handle(), endpoint.host); !s.ok()) {
          AttemptOutcome o;
          o.status = s;
          co_return o;
        }
        active = stream.get();
        auto handshake_deadline = std::min(attempt_deadline, Clock::now() + opts.connect_timeout);
        stream->tcp().expires_at(handshake_deadline);
        co_await tls->async_handshake(asio::ssl::stream_base::client,
                                      asio::redirect_error(asio::use_awaitable, ec));
        active = nullptr;
        if (Cancelled()) co_return cancelled_outcome();
        if (ec == beast::error::timeout) {
          if (handshake_deadline < attempt_deadline) {
            co_return unavailable(fmt::format("TLS handshake (no answer in {} ms)",
                                              opts.connect_timeout.count()), ec);
          }
          co_return timed_out("TLS handshake");
        }
        if (ec) {
          AttemptOutcome o;
          o.status = TlsHandshakeError(tls->native_handle(), endpoint.host, ec, &o.retryable);
          co_return o;
        }
      }
    } else {
      pool.CountReused();
    }

    active = stream.get();
    stream->tcp().expires_at(attempt_deadline);
    beast::flat_buffer buffer;
    Parser parser;
    parser.body_limit(opts.max_response_bytes);
    bool wrote = false;
    co_await Exchange(*stream, req, buffer, parser, ec, wrote);
    active = nullptr;
    if (Cancelled()) co_return cancelled_outcome();
    if (!ec) {
      auto res = parser.release();
      if (res.keep_alive() && !parser.need_eof()) {
        pool.Release(key, std::move(stream));
      } else {
        stream->Close();
      }
      AttemptOutcome o;
      unsigned status = res.result_int();
      if ((status >= 200 && status < 300) || (answer_4xx && status >= 400 && status < 500)) {
        o.response = HttpResponse{status, std::move(res.body()), attempt};
        co_return o;
      }
      o.status = StatusFromHttp(status, res.body(), Where());
      o.retryable = IsRetryableHttpStatus(status);
      co_return o;
    }
    if (wrote && ec == http::error::body_limit) {
      AttemptOutcome o;
      o.status = Error(Code::kDataLoss, "response from {} exceeds {} bytes", Where(),
                       opts.max_response_bytes);
      co_return o;
    }
    if (ec == beast::error::timeout) co_return timed_out("waiting for the response");
    // A pooled connection the server had already closed: one fresh try, not an attempt.
    if (reused && fresh == 0 && IsStaleConnectionError(ec) && !(wrote && parser.got_some())) {
      stream.reset();
      continue;
    }
    if (ec.category() == make_error_code(http::error::bad_version).category() &&
        !IsClosedMidResponse(ec)) {
      AttemptOutcome o;
      o.status = Error(Code::kDataLoss, "malformed HTTP response from {}: {}", Where(), ec.message());
      co_return o;
    }
    co_return unavailable(IsClosedMidResponse(ec) ? "connection closed before a full response"
                                                  : "exchanging the request",
                          ec);
  }
  co_return unavailable("reconnecting", ec);
}

asio::awaitable<void> HttpCallState::Run() {
  auto self = shared_from_this();
  const RetryPolicy& retry = client->options_.retry;
  const int max_attempts = std::max(1, retry.max_attempts);
  Status last;
  for (int attempt = 1;; ++attempt) {
    if (Cancelled()) {
      Finish(Error(Code::kCancelled, "request to {} cancelled", Where()));
      co_return;
    }
    if (Clock::now() >= call.deadline) {
      Finish(last.ok() ? Error(Code::kDeadlineExceeded, "deadline passed before calling {}", Where())
                       : Status(Code::kDeadlineExceeded,
                                fmt::format("deadline passed after {} attempts; last: {}",
                                            attempt - 1, last.message())));
      co_return;
    }
    AttemptOutcome out = co_await Attempt(attempt);
    if (out.response) {
      Finish(std::move(*out.response));
      co_return;
    }
    if (!out.retryable || attempt >= max_attempts) {
      Finish(attempt > 1 && out.retryable ? out.status.Prefix(fmt::format("after {} attempts", attempt))
                                          : out.status);
      co_return;
    }
    last = out.status;
    auto wait = retry.BackoffBefore(attempt + 1);
    if (Clock::now() + wait >= call.deadline) {
      // No time for another try: the last failure is the real answer.
      Finish(out.status.Prefix(fmt::format("after {} attempts (deadline leaves no time to retry)",
                                           attempt)));
      co_return;
    }
    timer.expires_after(wait);
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

HttpClient::HttpClient(HttpClientOptions options)
    : options_(std::move(options)), work_(io_.get_executor()), pool_(options_.pool) {
  std::promise<void> started;
  auto ready = started.get_future();
  io_thread_ = std::thread([this, &started] {
    io_thread_id_ = std::this_thread::get_id();
    started.set_value();
    io_.run();
  });
  ready.wait();
}

HttpClient::~HttpClient() {
  shutdown_.Cancel();
  {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [&] { return in_flight_ == 0; });
  }
  asio::post(io_, [this] { pool_.Clear(); });
  work_.reset();
  io_thread_.join();
}

Result<asio::ssl::context*> HttpClient::TlsContext() {
  if (!tls_ctx_ && options_.tls_context) tls_ctx_ = options_.tls_context;
  if (!tls_ctx_ && tls_ctx_error_.ok()) {
    auto ctx = MakeTlsClientContext(options_.tls);
    if (ctx.ok()) {
      tls_ctx_ = std::move(ctx).value();
    } else {
      tls_ctx_error_ = ctx.status();
    }
  }
  if (!tls_ctx_) return tls_ctx_error_;
  return tls_ctx_.get();
}

void HttpClient::CallStarted() {
  std::lock_guard lock(mu_);
  ++in_flight_;
}

void HttpClient::CallFinished() {
  std::lock_guard lock(mu_);
  if (--in_flight_ == 0) idle_cv_.notify_all();
}

void HttpClient::PostJson(const Endpoint& endpoint, std::string path, std::string body,
                          HttpCall call, Done done) {
  Send(endpoint, "POST", std::move(path), std::move(body), std::move(call), false, std::move(done));
}

void HttpClient::Send(const Endpoint& endpoint, std::string method, std::string path, std::string body,
                      HttpCall call, bool answer_4xx, Done done) {
  auto state = std::make_shared<HttpCallState>(this, io_);
  state->endpoint = endpoint;
  state->target = endpoint.Target(path);
  state->method = std::move(method);
  state->answer_4xx = answer_4xx;
  state->body = std::move(body);
  state->call = std::move(call);
  state->done = std::move(done);
  CallStarted();

  std::weak_ptr<HttpCallState> weak = state;
  auto interrupt = [this, weak] {
    asio::post(io_, [weak] {
      if (auto s = weak.lock()) s->Interrupt();
    });
  };
  if (state->call.cancel) state->cancel_id = state->call.cancel->Register(interrupt);
  state->shutdown_id = shutdown_.Register(interrupt);

  asio::post(io_, [state] {
    asio::co_spawn(state->client->io_, state->Run(), [state](std::exception_ptr e) {
      if (!e) return;
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        what = ex.what();
      } catch (...) {
      }
      state->Finish(Error(Code::kInternal, "HTTP call to {} failed: {}", state->Where(), what));
    });
  });
}

}  // namespace paddock::policy
