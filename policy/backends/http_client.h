// A small HTTP/1.1 JSON client on Boost.Beast for talking to inference servers
// over http:// or https:// (TLS, see tls.h): keep-alive connections pooled per
// endpoint, a deadline per call, cancellation,
// and retries with exponential backoff on transient failures (see retry_policy.h).
//
// Threading: one I/O thread per client runs every connection and timer, so the
// pool and per-call state need no locks. Completion callbacks run on that thread
// and must not block. PostJson and the destructor may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "policy/backends/cancel_token.h"
#include "policy/backends/connection_pool.h"
#include "policy/backends/endpoint.h"
#include "policy/backends/retry_policy.h"
#include "policy/backends/tls.h"
#include "sandbox/base/status.h"

namespace paddock::policy {

struct HttpClientOptions {
  ConnectionPool::Options pool;
  RetryPolicy retry;
  // Limit on establishing one TCP connection (a refused connect fails at once),
  // and separately on its TLS handshake for https endpoints.
  std::chrono::milliseconds connect_timeout{3000};
  // Limit on one attempt; a timed-out attempt is retried while the call's
  // deadline leaves time. Zero: an attempt may use the whole remaining deadline.
  std::chrono::milliseconds attempt_timeout{0};
  size_t max_response_bytes = 64u << 20;
  // Sent with every request, e.g. {"Authorization", "Bearer …"}. Never logged
  // nor put in error messages.
  std::vector<std::pair<std::string, std::string>> headers;
  // CAs for https endpoints (default: the system store).
  TlsOptions tls;
  // A context already built from `tls` (MakeTlsClientContext), shared; when
  // null the client builds one on its first https call.
  std::shared_ptr<boost::asio::ssl::context> tls_context;
};

struct HttpCall {
  std::chrono::steady_clock::time_point deadline;
  std::shared_ptr<CancelToken> cancel;  // may be null
};

struct HttpResponse {
  unsigned status = 0;  // 2xx (4xx too for Send with answer_4xx): other statuses become errors
  std::string body;
  int attempts = 0;
};

class HttpClient {
 public:
  using Done = std::function<void(Result<HttpResponse>)>;

  explicit HttpClient(HttpClientOptions options);
  // Cancels calls still in flight (their callbacks get CANCELLED), waits for
  // them to finish, closes pooled connections and joins the I/O thread.
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // POSTs `body` (JSON) to endpoint.Target(path). `done` runs exactly once, on
  // the I/O thread, with the 2xx response or a typed error:
  //   UNAVAILABLE (down, reset, 5xx after retries), DEADLINE_EXCEEDED, CANCELLED,
  //   INVALID_ARGUMENT / UNAUTHENTICATED / PERMISSION_DENIED / NOT_FOUND /
  //   RESOURCE_EXHAUSTED for 4xx (never retried), DATA_LOSS (response too big or
  //   not HTTP), PERMISSION_DENIED "TLS certificate verification failed for HOST:
  //   reason" (https, never retried).
  void PostJson(const Endpoint& endpoint, std::string path, std::string body, HttpCall call,
                Done done);

  // PostJson with a method ("POST", or "GET": no body sent) and, when
  // `answer_4xx`, a 4xx answer handed back as a response (status set) instead
  // of an error: for endpoints whose error bodies are typed results
  // (SGLang's {"success": false, "message"}). Retries as PostJson.
  void Send(const Endpoint& endpoint, std::string method, std::string path, std::string body,
            HttpCall call, bool answer_4xx, Done done);

  bool InIoThread() const { return std::this_thread::get_id() == io_thread_id_; }
  const ConnectionPool& pool() const { return pool_; }
  const HttpClientOptions& options() const { return options_; }

 private:
  friend struct HttpCallState;
  void CallStarted();
  void CallFinished();
  // The TLS client context, built on first use (I/O thread only).
  Result<boost::asio::ssl::context*> TlsContext();

  HttpClientOptions options_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  // Before pool_: pooled TLS connections are destroyed before their context.
  std::shared_ptr<boost::asio::ssl::context> tls_ctx_;
  Status tls_ctx_error_;
  ConnectionPool pool_;
  CancelToken shutdown_;
  std::mutex mu_;
  std::condition_variable idle_cv_;
  int in_flight_ = 0;
  std::thread io_thread_;
  std::thread::id io_thread_id_;
};

}  // namespace paddock::policy
