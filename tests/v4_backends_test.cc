// Policy backends (policy/backends) against an in-test HTTP server.
//
// No real SGLang or vLLM can run here, so FakeInferenceServer below implements
// the documented wire format of each server (docs/policy-backends.md): SGLang's
// native POST /generate, vLLM's POST /v1/completions with token-id prompts and
// "token_id:N" tokens, and POST /v1/chat/completions as DeepSeek's API answers it.
// It listens on 127.0.0.1 on an ephemeral port, can answer correctly, slowly,
// with errors, with garbage or by closing the connection, and counts
// connections. All traffic stays on loopback; every wait is bounded.
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>  // before asio: Boost 1.74 awaitable.hpp uses std::exchange without it
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/backends/endpoint.h"
#include "policy/backends/openai_chat_backend.h"
#include "policy/backends/openai_completions_backend.h"
#include "policy/backends/sglang_backend.h"

namespace paddock::policy {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// The fake server.

struct Reply {
  unsigned status = 200;
  std::string body;
  std::chrono::milliseconds delay{0};
  bool close_without_reply = false;  // read the request, then drop the connection
  bool drop_after_reply = false;     // answer "keep-alive", then close anyway
};

struct SeenRequest {
  std::string target;
  json body;
};

class FakeInferenceServer {
 public:
  // `handler(request, index)`: index counts requests from 0 across connections.
  using Handler = std::function<Reply(const SeenRequest&, int)>;

  explicit FakeInferenceServer(Handler handler)
      : handler_(std::move(handler)), acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    asio::co_spawn(io_, Accept(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~FakeInferenceServer() {
    io_.stop();
    thread_.join();
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_.load(); }
  int requests() const { return requests_.load(); }
  SeenRequest last() {
    std::lock_guard lock(mu_);
    return last_;
  }

 private:
  asio::awaitable<void> Accept() {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket socket = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      connections_.fetch_add(1);
      asio::co_spawn(io_, Session(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<void> Session(tcp::socket socket) {
    beast::flat_buffer buffer;
    boost::system::error_code ec;
    for (;;) {
      http::request<http::string_body> req;
      co_await http::async_read(socket, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      SeenRequest seen{std::string(req.target()), json::parse(req.body(), nullptr, false)};
      int index = requests_.fetch_add(1);
      {
        std::lock_guard lock(mu_);
        last_ = seen;
      }
      Reply reply = handler_(seen, index);
      if (reply.delay.count() > 0) {
        asio::steady_timer timer(io_, reply.delay);
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      if (reply.close_without_reply) {
        socket.close(ec);
        co_return;
      }
      http::response<http::string_body> res{static_cast<http::status>(reply.status), req.version()};
      res.set(http::field::content_type, "application/json");
      res.keep_alive(req.keep_alive());
      res.body() = reply.body;
      res.prepare_payload();
      co_await http::async_write(socket, res, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !req.keep_alive() || reply.drop_after_reply) {
        socket.close(ec);
        co_return;
      }
    }
  }

  Handler handler_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  unsigned short port_ = 0;
  std::thread thread_;
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  std::mutex mu_;
  SeenRequest last_;
};

// Canonical answers in each server's wire format.

// SGLang /generate: text, output_ids, meta_info.output_token_logprobs as
// [logprob, token_id, text|null] triples, meta_info.finish_reason.
std::string SglangAnswer(const std::vector<int>& ids, const std::vector<double>& lps,
                         json finish = {{"type", "stop"}, {"matched", 1}}) {
  json triples = json::array();
  for (size_t i = 0; i < ids.size(); ++i) triples.push_back({lps[i], ids[i], nullptr});
  return json{{"text", "hello"},
              {"output_ids", ids},
              {"meta_info",
               {{"id", "req-1"},
                {"prompt_tokens", 3},
                {"completion_tokens", ids.size()},
                {"finish_reason", finish},
                {"output_token_logprobs", triples}}}}
      .dump();
}

// vLLM /v1/completions with return_tokens_as_token_ids.
std::string VllmAnswer(const std::vector<int>& ids, const std::vector<double>& lps,
                       std::string finish = "stop", json stop_reason = nullptr,
                       bool token_id_strings = true) {
  json tokens = json::array();
  for (int id : ids) tokens.push_back(token_id_strings ? "token_id:" + std::to_string(id) : "tok");
  return json{{"id", "cmpl-1"},
              {"object", "text_completion"},
              {"model", "m"},
              {"choices",
               {{{"index", 0},
                 {"text", "hi there"},
                 {"logprobs",
                  {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", nullptr},
                   {"text_offset", json::array()}}},
                 {"finish_reason", finish},
                 {"stop_reason", stop_reason}}}},
              {"usage", {{"prompt_tokens", 3}, {"completion_tokens", ids.size()}}}}
      .dump();
}

// An answer that ignores the request: for the transport tests.
Reply Ok() { return Reply{200, SglangAnswer({5, 6, 1}, {-0.5, -0.25, -0.125})}; }

BackendOptions Options(const FakeInferenceServer& server) {
  BackendOptions o;
  o.url = server.url();
  o.model = "test-model";
  o.http.retry.initial_backoff = 10ms;
  o.http.retry.max_backoff = 50ms;
  o.http.retry.max_attempts = 3;
  return o;
}

std::unique_ptr<SglangBackend> Sglang(BackendOptions o) {
  auto b = SglangBackend::Create(std::move(o));
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return std::move(b).value();
}

GenerateRequest IdsRequest() {
  GenerateRequest r;
  r.input_ids = {100, 200, 300};
  r.sampling.temperature = 0.7;
  r.sampling.top_p = 0.9;
  r.sampling.top_k = 20;
  r.sampling.max_new_tokens = 16;
  r.sampling.stop_token_ids = {7};
  return r;
}

CallOptions Timeout(std::chrono::milliseconds t) {
  CallOptions c;
  c.timeout = t;
  return c;
}

// ---------------------------------------------------------------------------
// Wire formats.

TEST(V4Backends, Sglang_SendsInputIdsAndParsesIdsLogprobsFinish) {
  FakeInferenceServer server([](const SeenRequest&, int) { return Ok(); });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->output_ids, (std::vector<int32_t>{5, 6, 1}));
  EXPECT_EQ(r->logprobs, (std::vector<float>{-0.5f, -0.25f, -0.125f}));
  EXPECT_EQ(r->text, "hello");
  EXPECT_EQ(r->finish_reason, FinishReason::kEos);  // matched 1 is not a requested stop: EOS
  EXPECT_EQ(r->matched_stop_token, 1);
  EXPECT_TRUE(r->token_exact);
  EXPECT_EQ(r->attempts, 1);
  EXPECT_GT(r->latency.count(), 0);

  SeenRequest seen = server.last();
  EXPECT_EQ(seen.target, "/generate");
  EXPECT_EQ(seen.body["input_ids"], json({100, 200, 300}));
  EXPECT_EQ(seen.body["return_logprob"], true);
  const json& sp = seen.body["sampling_params"];
  EXPECT_EQ(sp["max_new_tokens"], 16);
  EXPECT_EQ(sp["top_k"], 20);
  EXPECT_DOUBLE_EQ(sp["temperature"].get<double>(), 0.7);
  EXPECT_DOUBLE_EQ(sp["top_p"].get<double>(), 0.9);
  EXPECT_EQ(sp["stop_token_ids"], json({7}));
}

TEST(V4Backends, Sglang_FinishReasons) {
  std::atomic<int> which{0};
  FakeInferenceServer server([&](const SeenRequest&, int) {
    switch (which.load()) {
      case 0: return Reply{200, SglangAnswer({5, 7}, {-1, -2}, {{"type", "stop"}, {"matched", 7}})};
      case 1: return Reply{200, SglangAnswer({5, 6}, {-1, -2}, {{"type", "length"}, {"length", 2}})};
      default: return Reply{200, SglangAnswer({5}, {-1}, {{"type", "stop"}, {"matched", "</s>"}})};
    }
  });
  auto backend = Sglang(Options(server));
  std::vector<FinishReason> want = {FinishReason::kStop, FinishReason::kLength, FinishReason::kStop};
  for (int i = 0; i < 3; ++i) {
    which = i;
    auto r = backend->Generate(IdsRequest(), Timeout(5s));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->finish_reason, want[i]) << i << ": " << FinishReasonName(r->finish_reason);
  }
}

TEST(V4Backends, Sglang_RefusesRequestWithoutInputIds) {
  FakeInferenceServer server([](const SeenRequest&, int) { return Ok(); });
  auto backend = Sglang(Options(server));
  GenerateRequest r;
  auto res = backend->Generate(r, Timeout(5s));
  EXPECT_EQ(res.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(server.requests(), 0);
}

TEST(V4Backends, Completions_TokenIdPromptAndTokenIdStrings) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    return Reply{200, VllmAnswer({11, 12, 7}, {-0.1, -0.2, -0.3}, "stop", 7)};
  });
  auto created = OpenAiCompletionsBackend::Create(Options(server));
  ASSERT_TRUE(created.ok());
  auto r = (*created)->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->output_ids, (std::vector<int32_t>{11, 12, 7}));
  EXPECT_EQ(r->logprobs, (std::vector<float>{-0.1f, -0.2f, -0.3f}));
  EXPECT_EQ(r->text, "hi there");
  EXPECT_EQ(r->finish_reason, FinishReason::kStop);
  EXPECT_EQ(r->matched_stop_token, 7);
  EXPECT_TRUE(r->token_exact);

  SeenRequest seen = server.last();
  EXPECT_EQ(seen.target, "/v1/completions");
  EXPECT_EQ(seen.body["prompt"], json({100, 200, 300}));
  EXPECT_EQ(seen.body["model"], "test-model");
  EXPECT_EQ(seen.body["max_tokens"], 16);
  EXPECT_EQ(seen.body["logprobs"], 1);
  EXPECT_EQ(seen.body["return_tokens_as_token_ids"], true);
  EXPECT_EQ(seen.body["stop_token_ids"], json({7}));
}

TEST(V4Backends, Completions_PlainTokenStringsAreNotTokenExact) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    return Reply{200, VllmAnswer({11, 12}, {-0.1, -0.2}, "length", nullptr, false)};
  });
  auto backend = std::move(OpenAiCompletionsBackend::Create(Options(server))).value();
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->token_exact);
  EXPECT_TRUE(r->output_ids.empty());
  EXPECT_EQ(r->logprobs.size(), 2u);
  EXPECT_EQ(r->finish_reason, FinishReason::kLength);
}

TEST(V4Backends, Chat_ReasoningContentToolCallsAndNotTokenExact) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    json tool_calls = {{{"id", "call_1"},
                        {"type", "function"},
                        {"function", {{"name", "bash"}, {"arguments", "{\"cmd\":\"ls\"}"}}}}};
    return Reply{200, json{{"id", "chat-1"},
                           {"object", "chat.completion"},
                           {"choices",
                            {{{"index", 0},
                              {"message",
                               {{"role", "assistant"},
                                {"content", nullptr},
                                {"reasoning_content", "I should list files."},
                                {"tool_calls", tool_calls}}},
                              {"logprobs", {{"content", {{{"token", "x"}, {"logprob", -0.5}}}}}},
                              {"finish_reason", "tool_calls"}}}}}
                          .dump()};
  });
  auto backend = std::move(OpenAiChatBackend::Create(Options(server))).value();
  EXPECT_FALSE(backend->token_exact());
  GenerateRequest req;
  req.messages = {{"system", "be brief"}, {"user", "list files"}};
  req.tools = json::array({{{"type", "function"}, {"function", {{"name", "bash"}}}}});
  auto r = backend->Generate(req, Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->token_exact);
  EXPECT_TRUE(r->output_ids.empty());
  EXPECT_EQ(r->text, "");
  EXPECT_EQ(r->reasoning_content, "I should list files.");
  ASSERT_TRUE(r->tool_calls.is_array());
  EXPECT_EQ(r->tool_calls[0]["function"]["name"], "bash");
  EXPECT_EQ(r->finish_reason, FinishReason::kToolCalls);
  EXPECT_EQ(r->logprobs, (std::vector<float>{-0.5f}));

  SeenRequest seen = server.last();
  EXPECT_EQ(seen.target, "/v1/chat/completions");
  EXPECT_EQ(seen.body["messages"][1]["content"], "list files");
  EXPECT_EQ(seen.body["tools"][0]["function"]["name"], "bash");
}

TEST(V4Backends, Endpoint_ParsesHttpAndRefusesHttps) {
  auto ep = ParseEndpoint("http://127.0.0.1:30000/prefix/");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->host, "127.0.0.1");
  EXPECT_EQ(ep->port, "30000");
  EXPECT_EQ(ep->Target("/generate"), "/prefix/generate");
  EXPECT_EQ(ParseEndpoint("http://localhost")->port, "80");
  EXPECT_EQ(ParseEndpoint("https://api.deepseek.com").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseEndpoint("127.0.0.1:80").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseEndpoint("http://h:99999").status().code(), Code::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Transport: keep-alive, retries, errors, deadlines, cancellation.

TEST(V4Backends, KeepAlive_SequentialRequestsUseOneConnection) {
  FakeInferenceServer server([](const SeenRequest&, int) { return Ok(); });
  auto backend = Sglang(Options(server));
  constexpr int kRequests = 10;
  for (int i = 0; i < kRequests; ++i) {
    auto r = backend->Generate(IdsRequest(), Timeout(5s));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  EXPECT_EQ(server.requests(), kRequests);
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(backend->http().pool().opened(), 1u);
  EXPECT_EQ(backend->http().pool().reused(), static_cast<uint64_t>(kRequests - 1));
}

TEST(V4Backends, KeepAlive_ConnectionClosedByServerIsReplacedWithoutAnAttempt) {
  // The server says keep-alive but closes after each answer: the pooled
  // connection is stale on its next use and one fresh connection replaces it.
  FakeInferenceServer server([](const SeenRequest&, int) {
    Reply r = Ok();
    r.drop_after_reply = true;
    return r;
  });
  auto backend = Sglang(Options(server));
  for (int i = 0; i < 3; ++i) {
    auto r = backend->Generate(IdsRequest(), Timeout(5s));
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    EXPECT_EQ(r->attempts, 1);
  }
  EXPECT_EQ(server.requests(), 3);
}

TEST(V4Backends, Concurrent_RequestsAllAnswered) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    Reply r = Ok();
    r.delay = 20ms;
    return r;
  });
  auto backend = Sglang(Options(server));
  constexpr int kCalls = 8;
  std::vector<std::promise<Result<GenerateResult>>> promises(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    backend->GenerateAsync(IdsRequest(), Timeout(5s),
                           [&promises, i](Result<GenerateResult> r) { promises[i].set_value(std::move(r)); });
  }
  for (auto& p : promises) {
    auto f = p.get_future();
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    auto r = f.get();
    EXPECT_TRUE(r.ok()) << r.status().ToString();
  }
  EXPECT_LE(server.connections(), kCalls);
}

TEST(V4Backends, Retry_500sThenSuccess) {
  FakeInferenceServer server([](const SeenRequest&, int index) {
    if (index < 2) return Reply{index == 0 ? 500u : 503u, "{\"error\":\"warming up\"}"};
    return Ok();
  });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->attempts, 3);
  EXPECT_EQ(server.requests(), 3);
  EXPECT_EQ(server.connections(), 1);  // error answers keep the connection alive
}

TEST(V4Backends, Retry_5xxExhaustedIsUnavailableWithStatusAndBody) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    return Reply{502, "upstream scheduler crashed: CUDA OOM"};
  });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("502"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("CUDA OOM"), std::string::npos) << r.status().message();
  EXPECT_EQ(server.requests(), 3);  // max_attempts
}

TEST(V4Backends, ClientError_4xxIsInvalidArgumentWithServerMessageAndNotRetried) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    return Reply{400, json{{"object", "error"},
                           {"message", "This model's maximum context length is 8 tokens"},
                           {"type", "BadRequestError"}, {"code", 400}}.dump()};
  });
  auto backend = std::move(OpenAiCompletionsBackend::Create(Options(server))).value();
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find("maximum context length"), std::string::npos);
  EXPECT_EQ(server.requests(), 1);
}

TEST(V4Backends, Garbage_MalformedJsonIsDataLoss) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    return Reply{200, "<html><body>502 Bad Gateway</body></html>"};
  });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_NE(r.status().message().find("malformed JSON"), std::string::npos);
  EXPECT_EQ(server.requests(), 1);  // not retried
}

TEST(V4Backends, Garbage_MissingOrMistypedFieldIsDataLossNamingIt) {
  std::atomic<int> which{0};
  FakeInferenceServer server([&](const SeenRequest&, int) {
    json body = json::parse(SglangAnswer({5, 6}, {-1, -2}));
    if (which == 0) body["meta_info"].erase("finish_reason");
    if (which == 1) body["meta_info"]["output_token_logprobs"][1][1] = "six";
    if (which == 2) body["output_ids"] = {5, 9};
    return Reply{200, body.dump()};
  });
  auto backend = Sglang(Options(server));
  std::vector<std::string> want = {"meta_info.finish_reason", "meta_info.output_token_logprobs[1][1]",
                                   "disagrees"};
  for (int i = 0; i < 3; ++i) {
    which = i;
    auto r = backend->Generate(IdsRequest(), Timeout(5s));
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
    EXPECT_NE(r.status().message().find(want[i]), std::string::npos) << r.status().message();
  }
}

TEST(V4Backends, ConnectionClosed_RetriedThenSucceeds) {
  FakeInferenceServer server([](const SeenRequest&, int index) {
    if (index == 0) return Reply{.close_without_reply = true};
    return Ok();
  });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->attempts, 2);
  EXPECT_EQ(server.connections(), 2);
}

TEST(V4Backends, ConnectionClosed_AlwaysIsUnavailable) {
  FakeInferenceServer server([](const SeenRequest&, int) { return Reply{.close_without_reply = true}; });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
  EXPECT_EQ(server.requests(), 3);
}

TEST(V4Backends, Deadline_SlowServerIsDeadlineExceeded) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    Reply r = Ok();
    r.delay = 3s;
    return r;
  });
  auto backend = Sglang(Options(server));
  auto start = Clock::now();
  auto r = backend->Generate(IdsRequest(), Timeout(200ms));
  auto took = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded) << r.status().ToString();
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 1500ms);
}

TEST(V4Backends, Deadline_SlowAttemptIsRetriedWithinTheCallDeadline) {
  FakeInferenceServer server([](const SeenRequest&, int index) {
    Reply r = Ok();
    if (index == 0) r.delay = 2s;
    return r;
  });
  BackendOptions o = Options(server);
  o.http.attempt_timeout = 150ms;
  auto backend = Sglang(o);
  auto r = backend->Generate(IdsRequest(), Timeout(3s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->attempts, 2);
}

TEST(V4Backends, Cancel_InFlightRequestEndsPromptlyAsCancelled) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    Reply r = Ok();
    r.delay = 5s;
    return r;
  });
  auto backend = Sglang(Options(server));
  CallOptions opts = Timeout(10s);
  opts.cancel = std::make_shared<CancelToken>();
  std::promise<Result<GenerateResult>> done;
  auto future = done.get_future();
  backend->GenerateAsync(IdsRequest(), opts, [&](Result<GenerateResult> r) { done.set_value(std::move(r)); });
  // Wait (bounded) until the server holds the request, then cancel.
  for (int i = 0; i < 200 && server.requests() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(server.requests(), 1);
  auto start = Clock::now();
  opts.cancel->Cancel();
  ASSERT_EQ(future.wait_for(2s), std::future_status::ready);
  EXPECT_LT(Clock::now() - start, 1s);
  auto r = future.get();
  EXPECT_EQ(r.status().code(), Code::kCancelled) << r.status().ToString();

  // The backend stays usable afterwards (the cancelled connection is not pooled).
  auto again = backend->Generate(IdsRequest(), Timeout(100ms));
  EXPECT_EQ(again.status().code(), Code::kDeadlineExceeded);
}

TEST(V4Backends, Cancel_BeforeStartNeverSends) {
  FakeInferenceServer server([](const SeenRequest&, int) { return Ok(); });
  auto backend = Sglang(Options(server));
  CallOptions opts = Timeout(5s);
  opts.cancel = std::make_shared<CancelToken>();
  opts.cancel->Cancel();
  auto r = backend->Generate(IdsRequest(), opts);
  EXPECT_EQ(r.status().code(), Code::kCancelled);
  EXPECT_EQ(server.requests(), 0);
}

TEST(V4Backends, ServerDown_IsUnavailableQuickly) {
  // A port that was just free: bind, read it, close.
  unsigned short port;
  {
    asio::io_context io;
    tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = a.local_endpoint().port();
  }
  BackendOptions o;
  o.url = "http://127.0.0.1:" + std::to_string(port);
  o.http.retry.initial_backoff = 10ms;
  o.http.retry.max_attempts = 3;
  auto backend = Sglang(o);
  auto start = Clock::now();
  auto r = backend->Generate(IdsRequest(), Timeout(10s));
  auto took = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("refused"), std::string::npos) << r.status().message();
  EXPECT_LT(took, 2s);
}

TEST(V4Backends, Destructor_CancelsCallsInFlight) {
  FakeInferenceServer server([](const SeenRequest&, int) {
    Reply r = Ok();
    r.delay = 5s;
    return r;
  });
  std::promise<Result<GenerateResult>> done;
  auto future = done.get_future();
  auto start = Clock::now();
  {
    auto backend = Sglang(Options(server));
    backend->GenerateAsync(IdsRequest(), Timeout(10s),
                           [&](Result<GenerateResult> r) { done.set_value(std::move(r)); });
    for (int i = 0; i < 200 && server.requests() == 0; ++i) std::this_thread::sleep_for(5ms);
  }
  EXPECT_LT(Clock::now() - start, 3s);
  ASSERT_EQ(future.wait_for(0s), std::future_status::ready);
  EXPECT_EQ(future.get().status().code(), Code::kCancelled);
}

}  // namespace
}  // namespace paddock::policy
