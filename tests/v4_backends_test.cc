// Policy backends (policy/backends) against an in-test HTTP server.
//
// No real SGLang or vLLM can run here, so FakeInferenceServer below implements
// the documented wire format of each server (docs/policy-backends.md): SGLang's
// native POST /generate, vLLM's POST /v1/completions with token-id prompts and
// "token_id:N" tokens, and POST /v1/chat/completions as DeepSeek's API answers it.
// It listens on 127.0.0.1 on an ephemeral port, can answer correctly, slowly,
// with errors, with garbage or by closing the connection, and counts
// connections. In TLS mode it speaks https with a certificate issued at test
// time by a throwaway CA (TestPki, OpenSSL's C API; nothing is written to
// disk except one temp CA file, removed again). All traffic stays on loopback;
// every wait is bounded.
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <stdexcept>
#include <thread>
#include <utility>  // before asio: Boost 1.74 awaitable.hpp uses std::exchange without it
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <unistd.h>

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
  std::string authorization;  // the Authorization header, "" when absent
};

class FakeInferenceServer {
 public:
  // `handler(request, index)`: index counts requests from 0 across connections.
  using Handler = std::function<Reply(const SeenRequest&, int)>;

  // `tls`: a server context (certificate + key) for https; null for plain http.
  explicit FakeInferenceServer(Handler handler, std::shared_ptr<asio::ssl::context> tls = nullptr)
      : handler_(std::move(handler)),
        tls_(std::move(tls)),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    asio::co_spawn(io_, Accept(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~FakeInferenceServer() {
    io_.stop();
    thread_.join();
  }

  std::string url() const { return url_for("127.0.0.1"); }
  // The URL with another host name that reaches this server (e.g. "localhost").
  std::string url_for(const std::string& host) const {
    return (tls_ ? "https://" : "http://") + host + ":" + std::to_string(port_);
  }
  int connections() const { return connections_.load(); }
  int tls_handshakes() const { return tls_handshakes_.load(); }
  int tls_handshake_failures() const { return tls_handshake_failures_.load(); }
  std::string last_sni() {
    std::lock_guard lock(mu_);
    return last_sni_;
  }
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
      if (tls_) {
        asio::co_spawn(io_, TlsSession(std::move(socket)), asio::detached);
      } else {
        asio::co_spawn(io_, Session(std::move(socket)), asio::detached);
      }
    }
  }

  asio::awaitable<void> Session(tcp::socket socket) { co_await Serve(socket); }

  asio::awaitable<void> TlsSession(tcp::socket socket) {
    asio::ssl::stream<tcp::socket> stream(std::move(socket), *tls_);
    boost::system::error_code ec;
    asio::steady_timer guard(io_, 5s);  // a client that never finishes the handshake
    guard.async_wait([&stream](boost::system::error_code e) {
      if (!e) beast::get_lowest_layer(stream).close(e);
    });
    co_await stream.async_handshake(asio::ssl::stream_base::server,
                                    asio::redirect_error(asio::use_awaitable, ec));
    guard.cancel();
    if (ec) {
      tls_handshake_failures_.fetch_add(1);
      co_return;
    }
    tls_handshakes_.fetch_add(1);
    if (const char* sni = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name)) {
      std::lock_guard lock(mu_);
      last_sni_ = sni;
    }
    co_await Serve(stream);
  }

  template <class Stream>
  asio::awaitable<void> Serve(Stream& socket) {
    beast::flat_buffer buffer;
    boost::system::error_code ec;
    for (;;) {
      http::request<http::string_body> req;
      co_await http::async_read(socket, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      SeenRequest seen{std::string(req.target()), json::parse(req.body(), nullptr, false),
                       std::string(req[http::field::authorization])};
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
        beast::get_lowest_layer(socket).close(ec);
        co_return;
      }
      http::response<http::string_body> res{static_cast<http::status>(reply.status), req.version()};
      res.set(http::field::content_type, "application/json");
      res.keep_alive(req.keep_alive());
      res.body() = reply.body;
      res.prepare_payload();
      co_await http::async_write(socket, res, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !req.keep_alive() || reply.drop_after_reply) {
        beast::get_lowest_layer(socket).close(ec);
        co_return;
      }
    }
  }

  Handler handler_;
  std::shared_ptr<asio::ssl::context> tls_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  unsigned short port_ = 0;
  std::thread thread_;
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  std::atomic<int> tls_handshakes_{0};
  std::atomic<int> tls_handshake_failures_{0};
  std::mutex mu_;
  SeenRequest last_;
  std::string last_sni_;
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

TEST(V4Backends, Sglang_WeightVersionFromMetaInfo) {
  std::atomic<int> which{0};
  FakeInferenceServer server([&](const SeenRequest&, int) {
    json body = json::parse(SglangAnswer({5, 6}, {-1, -2}));
    if (which == 0) body["meta_info"]["weight_version"] = "step-3";
    if (which == 2) body["meta_info"]["weight_version"] = 3;
    return Reply{200, body.dump()};
  });
  auto backend = Sglang(Options(server));
  auto r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->weight_version, "step-3");
  which = 1;  // older SGLang: no weight_version
  r = backend->Generate(IdsRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->weight_version, "");
  which = 2;
  r = backend->Generate(IdsRequest(), Timeout(5s));
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find("meta_info.weight_version"), std::string::npos) << r.status().message();
}

// SGLang's /update_weights_from_disk: {"success", "message", "num_paused_requests"},
// 400 when success is false.
TEST(V4Backends, Sglang_UpdateWeightsFromDiskWireAndErrors) {
  std::atomic<int> which{0};
  FakeInferenceServer server([&](const SeenRequest& req, int) {
    if (req.target != "/update_weights_from_disk") return Reply{404, R"({"detail":"Not Found"})"};
    switch (which.load()) {
      case 0:
        return Reply{200, json{{"success", true}, {"message", "Succeeded to update model weights."},
                               {"num_paused_requests", 0}}.dump()};
      case 1:
        return Reply{400, json{{"success", false}, {"message", "Failed to get weights iterator: no such file"},
                               {"num_paused_requests", 0}}.dump()};
      case 2: return Reply{403, json{{"success", false}, {"message", "loopback only"}}.dump()};
      case 3: return Reply{200, json{{"success", false}, {"message", "shapes differ"}}.dump()};
      case 4: return Reply{422, json{{"detail", "model_path: field required"}}.dump()};
      default: return Reply{200, "{}"};
    }
  });
  auto backend = Sglang(Options(server));
  Status ok = backend->UpdateWeightsFromDisk("/ckpt/step-3", "step-3", 5s);
  EXPECT_TRUE(ok.ok()) << ok.ToString();
  SeenRequest seen = server.last();
  EXPECT_EQ(seen.target, "/update_weights_from_disk");
  EXPECT_EQ(seen.body, json({{"model_path", "/ckpt/step-3"}, {"weight_version", "step-3"}}));
  EXPECT_TRUE(backend->UpdateWeightsFromDisk("/ckpt/step-4", "", 5s).ok());
  EXPECT_FALSE(server.last().body.contains("weight_version")) << "an empty version is left out";

  const std::vector<std::pair<Code, std::string>> want = {
      {Code::kFailedPrecondition, "no such file"}, {Code::kPermissionDenied, "loopback only"},
      {Code::kFailedPrecondition, "shapes differ"}, {Code::kInvalidArgument, "field required"},
      {Code::kDataLoss, "success"}};
  for (int i = 0; i < static_cast<int>(want.size()); ++i) {
    which = i + 1;
    int before = server.requests();
    Status st = backend->UpdateWeightsFromDisk("/ckpt/x", "x", 5s);
    EXPECT_EQ(st.code(), want[i].first) << st.ToString();
    EXPECT_NE(st.message().find(want[i].second), std::string::npos) << st.ToString();
    EXPECT_EQ(server.requests(), before + 1) << "a refused update is not retried";
  }
  EXPECT_EQ(backend->UpdateWeightsFromDisk("", "x", 5s).code(), Code::kInvalidArgument);
}

TEST(V4Backends, Sglang_WeightVersionFromModelInfoOrItsOlderName) {
  std::atomic<bool> has_model_info{true};
  FakeInferenceServer server([&](const SeenRequest& req, int) {
    if (req.target == "/model_info" && has_model_info)
      return Reply{200, json{{"model_path", "m"}, {"weight_version", "v7"}}.dump()};
    if (req.target == "/get_weight_version") return Reply{200, json{{"weight_version", "v6"}}.dump()};
    return Reply{404, R"({"detail":"Not Found"})"};
  });
  auto backend = Sglang(Options(server));
  auto v = backend->WeightVersion();
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v.value(), "v7");
  has_model_info = false;
  v = backend->WeightVersion();
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v.value(), "v6");
  EXPECT_EQ(server.last().target, "/get_weight_version");
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

TEST(V4Backends, Endpoint_ParsesHttpAndHttps) {
  auto ep = ParseEndpoint("http://127.0.0.1:30000/prefix/");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->host, "127.0.0.1");
  EXPECT_EQ(ep->port, "30000");
  EXPECT_EQ(ep->Target("/generate"), "/prefix/generate");
  EXPECT_EQ(ParseEndpoint("http://localhost")->port, "80");
  EXPECT_FALSE(ParseEndpoint("http://localhost")->tls);
  auto tls = ParseEndpoint("https://api.deepseek.com");
  ASSERT_TRUE(tls.ok()) << tls.status().ToString();
  EXPECT_TRUE(tls->tls);
  EXPECT_EQ(tls->host, "api.deepseek.com");
  EXPECT_EQ(tls->port, "443");
  EXPECT_EQ(ParseEndpoint("https://h:8443/v1")->Target("/x"), "/v1/x");
  // http and https to one host:port never share pooled connections.
  EXPECT_NE(ParseEndpoint("https://h:1")->PoolKey(), ParseEndpoint("http://h:1")->PoolKey());
  EXPECT_EQ(ParseEndpoint("ftp://h").status().code(), Code::kInvalidArgument);
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


// ---------------------------------------------------------------------------
// TLS (https://) and API keys.

// A throwaway PKI made with OpenSSL's C API at test time: a self-signed CA and
// server certificates it issues, all P-256 keys, PEM in memory.
class TestPki {
 public:
  explicit TestPki(const std::string& ca_name) : ca_key_(NewKey()) {
    ca_cert_ = NewCert(ca_name, nullptr, ca_key_.get(), ca_key_.get());
    AddExt(ca_cert_.get(), ca_cert_.get(), NID_basic_constraints, "critical,CA:TRUE");
    AddExt(ca_cert_.get(), ca_cert_.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    AddExt(ca_cert_.get(), ca_cert_.get(), NID_subject_key_identifier, "hash");
    Sign(ca_cert_.get(), ca_key_.get());
  }

  std::string ca_pem() const { return CertPem(ca_cert_.get()); }

  // A server context whose certificate (CN `cn`, subjectAltName `san`, e.g.
  // "DNS:localhost,IP:127.0.0.1") this CA issued.
  std::shared_ptr<asio::ssl::context> ServerContext(const std::string& cn, const std::string& san) {
    Key key = NewKey();
    Cert cert = NewCert(cn, ca_cert_.get(), ca_key_.get(), key.get());
    AddExt(cert.get(), ca_cert_.get(), NID_basic_constraints, "critical,CA:FALSE");
    AddExt(cert.get(), ca_cert_.get(), NID_key_usage, "critical,digitalSignature");
    AddExt(cert.get(), ca_cert_.get(), NID_ext_key_usage, "serverAuth");
    AddExt(cert.get(), ca_cert_.get(), NID_subject_alt_name, san);
    AddExt(cert.get(), ca_cert_.get(), NID_authority_key_identifier, "keyid:always");
    Sign(cert.get(), ca_key_.get());

    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    std::string chain = CertPem(cert.get()) + ca_pem();
    std::string key_pem = KeyPem(key.get());
    ctx->use_certificate_chain(asio::buffer(chain));
    ctx->use_private_key(asio::buffer(key_pem), asio::ssl::context::pem);
    return ctx;
  }

 private:
  struct KeyFree { void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); } };
  struct CertFree { void operator()(X509* c) const { X509_free(c); } };
  using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
  using Cert = std::unique_ptr<X509, CertFree>;

  static Key NewKey() {
    Key k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!k) throw std::runtime_error("EVP_PKEY_Q_keygen failed");
    return k;
  }

  static Cert NewCert(const std::string& cn, X509* issuer, EVP_PKEY* issuer_key, EVP_PKEY* key) {
    (void)issuer_key;
    static std::atomic<long> serial{1};
    Cert c(X509_new());
    X509_set_version(c.get(), 2);  // v3
    ASN1_INTEGER_set(X509_get_serialNumber(c.get()), serial.fetch_add(1));
    X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c.get()), 24 * 3600);
    X509_NAME* name = X509_get_subject_name(c.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509_set_issuer_name(c.get(), issuer ? X509_get_subject_name(issuer) : name);
    X509_set_pubkey(c.get(), key);
    return c;
  }

  static void AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (!ext) throw std::runtime_error("X509V3_EXT_conf_nid failed: " + value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }

  static void Sign(X509* cert, EVP_PKEY* key) {
    if (X509_sign(cert, key, EVP_sha256()) <= 0) throw std::runtime_error("X509_sign failed");
  }

  static std::string FromBio(BIO* bio) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
  }
  static std::string CertPem(X509* cert) {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(bio, cert);
    return FromBio(bio);
  }
  static std::string KeyPem(EVP_PKEY* key) {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
    return FromBio(bio);
  }

  Key ca_key_;
  Cert ca_cert_;
};

constexpr char kLoopbackSan[] = "DNS:localhost,IP:127.0.0.1";

// A chat answer in DeepSeek's format.
Reply ChatOk() {
  return Reply{200, json{{"id", "chat-1"},
                         {"object", "chat.completion"},
                         {"choices",
                          {{{"index", 0},
                            {"message", {{"role", "assistant"}, {"content", "hi"}}},
                            {"finish_reason", "stop"}}}}}
                        .dump()};
}

GenerateRequest ChatRequest() {
  GenerateRequest r;
  r.messages = {{"user", "hello"}};
  r.return_logprobs = false;
  return r;
}

// Options trusting `pki`'s CA (in memory) for a TLS server.
BackendOptions TlsOptionsFor(const FakeInferenceServer& server, const TestPki& pki) {
  BackendOptions o = Options(server);
  o.http.tls.ca_pem = pki.ca_pem();
  return o;
}

TEST(V4Backends, Tls_RequestsSucceedOverOneKeptAliveConnection) {
  TestPki pki("Paddock Test CA");
  FakeInferenceServer server([](const SeenRequest&, int) { return ChatOk(); },
                             pki.ServerContext("localhost", kLoopbackSan));
  ASSERT_EQ(server.url().rfind("https://127.0.0.1:", 0), 0u);
  auto backend = std::move(OpenAiChatBackend::Create(TlsOptionsFor(server, pki))).value();
  EXPECT_TRUE(backend->endpoint().tls);
  constexpr int kRequests = 10;
  for (int i = 0; i < kRequests; ++i) {
    auto r = backend->Generate(ChatRequest(), Timeout(5s));
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    EXPECT_EQ(r->text, "hi");
    EXPECT_EQ(r->attempts, 1);
  }
  EXPECT_EQ(server.requests(), kRequests);
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(server.tls_handshakes(), 1);
  EXPECT_EQ(backend->http().pool().opened(), 1u);
  EXPECT_EQ(backend->http().pool().reused(), static_cast<uint64_t>(kRequests - 1));
  EXPECT_EQ(server.last().target, "/v1/chat/completions");
  EXPECT_EQ(server.last_sni(), "");  // no SNI for an IP address (RFC 6066)
}

TEST(V4Backends, Tls_HostNameSendsSniAndCaFileWorks) {
  TestPki pki("Paddock Test CA");
  FakeInferenceServer server([](const SeenRequest&, int) { return ChatOk(); },
                             pki.ServerContext("localhost", kLoopbackSan));
  // The CA from a file this time (written at test time, removed at the end).
  char path[] = "/tmp/paddock-test-ca-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string pem = pki.ca_pem();
  ASSERT_EQ(write(fd, pem.data(), pem.size()), static_cast<ssize_t>(pem.size()));
  close(fd);
  BackendOptions o = Options(server);
  o.url = server.url_for("localhost");
  o.http.tls.ca_file = path;
  auto created = OpenAiChatBackend::Create(o);
  unlink(path);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  auto r = (*created)->Generate(ChatRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(server.last_sni(), "localhost");

  // A CA file that does not exist is refused when the backend is created.
  o.http.tls.ca_file = "/nonexistent/paddock-ca.pem";
  auto bad = OpenAiChatBackend::Create(o);
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find("/nonexistent/paddock-ca.pem"), std::string::npos);
  // So is an in-memory CA that is not PEM.
  o.http.tls.ca_file.clear();
  o.http.tls.ca_pem = "not a certificate";
  EXPECT_EQ(OpenAiChatBackend::Create(o).status().code(), Code::kInvalidArgument);
}

TEST(V4Backends, Tls_UntrustedCertificateIsATypedVerificationError) {
  TestPki pki("Paddock Test CA");
  TestPki other("Some Other CA");
  FakeInferenceServer server([](const SeenRequest&, int) { return ChatOk(); },
                             pki.ServerContext("localhost", kLoopbackSan));
  // Trusting another CA, and trusting only the system store: both refuse.
  std::vector<BackendOptions> clients = {TlsOptionsFor(server, other), Options(server)};
  for (size_t i = 0; i < clients.size(); ++i) {
    auto backend = std::move(OpenAiChatBackend::Create(clients[i])).value();
    auto start = Clock::now();
    auto r = backend->Generate(ChatRequest(), Timeout(5s));
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_EQ(r.status().code(), Code::kPermissionDenied) << i << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find("TLS certificate verification failed for 127.0.0.1: "),
              std::string::npos)
        << r.status().message();
    // The reason, e.g. "self-signed certificate in certificate chain".
    EXPECT_NE(r.status().message().find("certificate", r.status().message().find(": ") + 2),
              std::string::npos)
        << r.status().message();
    EXPECT_LT(Clock::now() - start, 2s);
  }
  EXPECT_EQ(server.requests(), 0);
  EXPECT_EQ(server.connections(), 2);  // never retried
  EXPECT_EQ(server.tls_handshakes(), 0);
}

TEST(V4Backends, Tls_WrongHostNameIsATypedVerificationError) {
  TestPki pki("Paddock Test CA");
  // Issued by the trusted CA, but for another name.
  FakeInferenceServer server([](const SeenRequest&, int) { return ChatOk(); },
                             pki.ServerContext("api.example.com", "DNS:api.example.com"));
  for (const char* host : {"127.0.0.1", "localhost"}) {
    BackendOptions o = TlsOptionsFor(server, pki);
    o.url = server.url_for(host);
    auto backend = std::move(OpenAiChatBackend::Create(o)).value();
    auto r = backend->Generate(ChatRequest(), Timeout(5s));
    ASSERT_FALSE(r.ok()) << host;
    EXPECT_EQ(r.status().code(), Code::kPermissionDenied) << r.status().ToString();
    EXPECT_NE(r.status().message().find(std::string("TLS certificate verification failed for ") +
                                        host + ": "),
              std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find("mismatch"), std::string::npos) << r.status().message();
  }
  EXPECT_EQ(server.requests(), 0);
}

TEST(V4Backends, Tls_PlainHttpServerIsUnavailable) {
  FakeInferenceServer server([](const SeenRequest&, int) { return ChatOk(); });
  TestPki pki("Paddock Test CA");
  BackendOptions o = TlsOptionsFor(server, pki);
  o.url = "https://127.0.0.1:" + server.url().substr(server.url().rfind(':') + 1);
  auto backend = std::move(OpenAiChatBackend::Create(o)).value();
  auto r = backend->Generate(ChatRequest(), Timeout(5s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("TLS handshake with 127.0.0.1 failed"), std::string::npos)
      << r.status().message();
  // The server drops the connection (reset): transient, so retried like a reset.
  EXPECT_EQ(server.connections(), 3);
}

TEST(V4Backends, Tls_RetriesStaleConnectionsDeadlineAndCancelWorkAsOverHttp) {
  TestPki pki("Paddock Test CA");
  std::atomic<int> mode{0};
  FakeInferenceServer server(
      [&](const SeenRequest&, int index) {
        Reply r = ChatOk();
        switch (mode.load()) {
          case 0: if (index < 2) return Reply{503, "{\"error\":\"busy\"}"}; break;
          case 1: r.drop_after_reply = true; break;
          default: r.delay = 5s; break;
        }
        return r;
      },
      pki.ServerContext("localhost", kLoopbackSan));
  auto backend = std::move(OpenAiChatBackend::Create(TlsOptionsFor(server, pki))).value();

  // 503, 503, then 200 on the same kept-alive TLS connection.
  auto r = backend->Generate(ChatRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->attempts, 3);
  EXPECT_EQ(server.connections(), 1);

  // The server closes after each answer: the stale pooled connection is
  // replaced without counting as an attempt.
  mode = 1;
  for (int i = 0; i < 3; ++i) {
    auto again = backend->Generate(ChatRequest(), Timeout(5s));
    ASSERT_TRUE(again.ok()) << i << ": " << again.status().ToString();
    EXPECT_EQ(again->attempts, 1);
  }

  // A slow server: the deadline holds.
  mode = 2;
  auto start = Clock::now();
  auto slow = backend->Generate(ChatRequest(), Timeout(200ms));
  EXPECT_EQ(slow.status().code(), Code::kDeadlineExceeded) << slow.status().ToString();
  EXPECT_LT(Clock::now() - start, 1500ms);

  // Cancelling an in-flight call ends it promptly.
  CallOptions opts = Timeout(10s);
  opts.cancel = std::make_shared<CancelToken>();
  std::promise<Result<GenerateResult>> done;
  auto future = done.get_future();
  int before = server.requests();
  backend->GenerateAsync(ChatRequest(), opts, [&](Result<GenerateResult> res) { done.set_value(std::move(res)); });
  for (int i = 0; i < 400 && server.requests() == before; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(server.requests(), before + 1);
  start = Clock::now();
  opts.cancel->Cancel();
  ASSERT_EQ(future.wait_for(2s), std::future_status::ready);
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_EQ(future.get().status().code(), Code::kCancelled);
}

TEST(V4Backends, ApiKey_SentAsBearerFromConfigOrEnvironmentAndNeverInErrors) {
  TestPki pki("Paddock Test CA");
  std::atomic<bool> reject{false};
  FakeInferenceServer server(
      [&](const SeenRequest&, int) {
        if (reject) return Reply{401, "{\"error\":{\"message\":\"Authentication Fails\"}}"};
        return ChatOk();
      },
      pki.ServerContext("localhost", kLoopbackSan));

  // From the config.
  BackendOptions o = TlsOptionsFor(server, pki);
  o.api_key = "sk-config-0123456789";
  auto backend = std::move(OpenAiChatBackend::Create(o)).value();
  auto r = backend->Generate(ChatRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(server.last().authorization, "Bearer sk-config-0123456789");
  reject = true;
  auto denied = backend->Generate(ChatRequest(), Timeout(5s));
  EXPECT_EQ(denied.status().code(), Code::kUnauthenticated) << denied.status().ToString();
  EXPECT_NE(denied.status().message().find("Authentication Fails"), std::string::npos);
  EXPECT_EQ(denied.status().message().find("sk-config"), std::string::npos);
  reject = false;

  // From an environment variable named in the config.
  const char* var = "PADDOCK_TEST_V4_BACKENDS_API_KEY";
  ASSERT_EQ(setenv(var, "sk-env-abcdef", 1), 0);
  BackendOptions e = TlsOptionsFor(server, pki);
  e.api_key_env = var;
  auto from_env = OpenAiChatBackend::Create(e);
  ASSERT_TRUE(from_env.ok()) << from_env.status().ToString();
  r = (*from_env)->Generate(ChatRequest(), Timeout(5s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(server.last().authorization, "Bearer sk-env-abcdef");

  // A key with a line break is refused without echoing it.
  ASSERT_EQ(setenv(var, "sk-bad\r\nX-Injected: 1", 1), 0);
  auto bad = OpenAiChatBackend::Create(e);
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << bad.status().ToString();
  EXPECT_EQ(bad.status().message().find("sk-bad"), std::string::npos);

  // Unset: FAILED_PRECONDITION naming the variable.
  unsetenv(var);
  auto missing = OpenAiChatBackend::Create(e);
  EXPECT_EQ(missing.status().code(), Code::kFailedPrecondition) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find(var), std::string::npos);

  // No key configured: no Authorization header.
  auto anonymous = std::move(OpenAiChatBackend::Create(TlsOptionsFor(server, pki))).value();
  ASSERT_TRUE(anonymous->Generate(ChatRequest(), Timeout(5s)).ok());
  EXPECT_EQ(server.last().authorization, "");
}

}  // namespace
}  // namespace paddock::policy
