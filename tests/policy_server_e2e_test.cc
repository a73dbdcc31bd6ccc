// paddock-policy end to end with the real embedded engine (tiny config,
// seeded weights): the backends against the server, concurrent requests
// batched in the engine (its step statistics through /metrics), tool calls
// under the constraint parsing strictly; and the binary itself: --help,
// --report-kv, serving on a free port until SIGTERM.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <regex>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/backends/openai_chat_backend.h"
#include "policy/backends/openai_completions_backend.h"
#include "policy/backends/sglang_backend.h"
#include "policy/engine/embedded_engine.h"
#include "policy/engine/server/http_server.h"
#include "policy/engine/server/policy_service.h"
#include "policy/v4/decode/decoder.h"
#include "policy/v4/encode/encoder.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace paddock::policy::engine::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

std::shared_ptr<const v4::Tokenizer> Tok() {
  static std::shared_ptr<const v4::Tokenizer> tok = [] {
    auto t = v4::Tokenizer::Load(v4::Tokenizer::DefaultPath());
    return t.ok() ? t.value() : nullptr;
  }();
  return tok;
}

std::pair<int, std::string> Send(uint16_t port, http::verb method, const std::string& target,
                                 const std::string& body = "") {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  req.body() = body;
  req.prepare_payload();
  http::write(socket, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return {static_cast<int>(res.result_int()), res.body()};
}

json Tools() {
  return json::parse(R"([
    {"type":"function","function":{"name":"bash","description":"run a shell command",
      "parameters":{"type":"object","properties":{"command":{"type":"string"},"timeout":{"type":"integer"}},
                    "required":["command"]}}}
  ])");
}

class PolicyServerE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Tok()) GTEST_SKIP() << "no tokenizer at " << v4::Tokenizer::DefaultPath();
    EngineOptions eo;
    eo.config = "tiny";
    eo.weight_seed = 1;
    eo.threads = 2;
    auto e = EmbeddedEngine::Create(eo);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e.value());
    ServiceOptions so;
    so.grammar.max_reasoning_chars = 64;
    so.grammar.max_content_chars = 64;
    so.grammar.max_string_chars = 32;
    std::weak_ptr<EmbeddedEngine> weak = engine_;
    so.engine_metrics = [weak] {
      std::vector<std::pair<std::string, double>> m;
      if (auto e = weak.lock()) m.push_back({"max_batch_size", static_cast<double>(e->stats().max_step_sequences)});
      return m;
    };
    service_ = std::make_shared<PolicyService>(engine_, Tok(), so);
    HttpServerOptions ho;
    ho.port = 0;
    auto s = HttpServer::Start(service_, ho);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s.value());
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }

  std::shared_ptr<EmbeddedEngine> engine_;
  std::shared_ptr<PolicyService> service_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(PolicyServerE2eTest, BackendsAgainstTheRealEngine) {
  BackendOptions o;
  o.url = Url();
  auto sglang = SglangBackend::Create(o);
  auto completions = OpenAiCompletionsBackend::Create(o);
  ASSERT_TRUE(sglang.ok() && completions.ok());
  GenerateRequest req;
  for (uint32_t id : Tok()->Encode("The sandbox ran the tests and")) req.input_ids.push_back(static_cast<int32_t>(id));
  req.sampling.max_new_tokens = 24;
  req.sampling.seed = 11;
  req.sampling.temperature = 0.8;
  auto a = sglang.value()->Generate(req, {});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE(a.value().token_exact);
  ASSERT_EQ(a.value().output_ids.size(), a.value().logprobs.size());
  EXPECT_FALSE(a.value().output_ids.empty());
  for (float lp : a.value().logprobs) EXPECT_LE(lp, 0.0f);
  // Same engine, seed and prompt through /v1/completions: the same tokens and logprobs.
  auto b = completions.value()->Generate(req, {});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b.value().output_ids, a.value().output_ids);
  ASSERT_EQ(b.value().logprobs.size(), a.value().logprobs.size());
  for (size_t i = 0; i < a.value().logprobs.size(); ++i) EXPECT_NEAR(b.value().logprobs[i], a.value().logprobs[i], 1e-5);
}

TEST_F(PolicyServerE2eTest, ConcurrentRequestsAreBatched) {
  constexpr int kClients = 4;
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      json body = {{"input_ids", {100 + i, 200, 300, 400}},
                   {"sampling_params", {{"max_new_tokens", 48}, {"ignore_eos", true}, {"seed", i}}}};
      auto [status, text] = Send(server_->port(), http::verb::post, "/generate", body.dump());
      ok += status == 200;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients);
  EXPECT_GT(engine_->stats().max_step_sequences, 1u) << "the engine never stepped two sequences together";
  auto [status, metrics] = Send(server_->port(), http::verb::get, "/metrics");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(metrics, m, std::regex("paddock_policy_engine_max_batch_size ([0-9]+)"))) << metrics;
  EXPECT_GT(std::stoi(m[1]), 1);
}

TEST_F(PolicyServerE2eTest, ChatToolCallsFromTheRealEngineParse) {
  BackendOptions o;
  o.url = Url();
  auto chat = OpenAiChatBackend::Create(o);
  ASSERT_TRUE(chat.ok());
  GenerateRequest req;
  req.messages = {{"system", "You operate a Linux sandbox."}, {"user", "Show the disk usage."}};
  req.tools = Tools();
  req.sampling.max_new_tokens = 160;
  req.sampling.seed = 5;
  req.extra_body = {{"tool_choice", "required"}, {"thinking", true}};
  auto res = chat.value()->Generate(req, {});
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res.value().finish_reason, FinishReason::kToolCalls);
  ASSERT_TRUE(res.value().tool_calls.is_array());
  ASSERT_FALSE(res.value().tool_calls.empty());
  for (const auto& call : res.value().tool_calls) {
    EXPECT_EQ(call["function"]["name"], "bash");
    json args = json::parse(call["function"]["arguments"].get<std::string>());
    EXPECT_TRUE(args["command"].is_string());
  }
}

// /generate's Paddock extension: the caller renders the prompt (tools in the
// system message, as the rollout engine does) and sends the tools beside the
// token ids; the output ids decode strictly into schema-following tool calls.
std::vector<int32_t> ToolPrompt(bool thinking) {
  nlohmann::ordered_json request = {
      {"messages",
       {{{"role", "system"}, {"content", "You operate a Linux sandbox."}, {"tools", nlohmann::ordered_json(Tools())}},
        {{"role", "user"}, {"content", "Show the disk usage."}}}},
      {"thinking_mode", thinking ? "thinking" : "chat"}};
  auto text = v4::EncodePrompt(request);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  std::vector<int32_t> ids;
  for (uint32_t id : Tok()->Encode(text.ok() ? text.value() : "")) ids.push_back(static_cast<int32_t>(id));
  return ids;
}

void ExpectSchemaCalls(const std::vector<int32_t>& out, bool thinking, const std::string& what) {
  std::vector<uint32_t> ids(out.begin(), out.end());
  std::string completion = Tok()->Decode(ids);
  json tools = Tools();
  auto strict = v4::DecodeCompletion(completion, thinking, &tools);
  ASSERT_TRUE(std::holds_alternative<json>(strict))
      << what << ": " << std::get<v4::DecodeError>(strict).message << "\n" << completion;
  const json& m = std::get<json>(strict);
  ASSERT_TRUE(m["tool_calls"].is_array() && !m["tool_calls"].empty()) << what << ": " << completion;
  for (const auto& call : m["tool_calls"]) {
    EXPECT_EQ(call["function"]["name"], "bash") << what;
    const json& a = call["function"]["arguments"];
    json args = a.is_string() ? json::parse(a.get<std::string>()) : a;
    ASSERT_TRUE(args.is_object()) << what;
    EXPECT_TRUE(args["command"].is_string()) << what << ": " << args.dump();
    if (args.contains("timeout")) {
      EXPECT_TRUE(args["timeout"].is_number_integer()) << what << ": " << args.dump();
    }
    for (auto& [k, v] : args.items()) EXPECT_TRUE(k == "command" || k == "timeout") << what << ": " << k;
  }
}

TEST_F(PolicyServerE2eTest, GenerateWithToolsYieldsStrictToolCalls) {
  for (bool thinking : {true, false}) {
    std::vector<int32_t> prompt = ToolPrompt(thinking);
    ASSERT_FALSE(prompt.empty());
    for (int seed : {1, 2, 3}) {
      json body = {{"input_ids", prompt},
                   {"sampling_params", {{"max_new_tokens", 160}, {"temperature", 1.0}, {"seed", seed}}},
                   {"tools", Tools()},
                   {"tool_choice", "required"},
                   {"thinking", thinking}};
      auto [status, text] = Send(server_->port(), http::verb::post, "/generate", body.dump());
      ASSERT_EQ(status, 200) << text;
      json r = json::parse(text);
      EXPECT_EQ(r["meta_info"]["paddock_constrained"], true) << text;
      ExpectSchemaCalls(r["output_ids"].get<std::vector<int32_t>>(), thinking,
                        "seed " + std::to_string(seed) + (thinking ? " thinking" : " chat"));
    }
  }
  // The rollout engine's path: the SGLang backend with the tools in extra_body.
  BackendOptions o;
  o.url = Url();
  auto sglang = SglangBackend::Create(o);
  ASSERT_TRUE(sglang.ok());
  GenerateRequest req;
  req.input_ids = ToolPrompt(true);
  req.sampling.max_new_tokens = 160;
  req.sampling.seed = 9;
  req.extra_body = {{"tools", Tools()}, {"tool_choice", "required"}, {"thinking", true}};
  auto res = sglang.value()->Generate(req, {});
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  ExpectSchemaCalls(res.value().output_ids, true, "sglang backend");
}

TEST_F(PolicyServerE2eTest, GenerateWithoutToolsIsPlainSglang) {
  json body = {{"input_ids", ToolPrompt(false)}, {"sampling_params", {{"max_new_tokens", 8}, {"seed", 1}}}};
  auto [status, text] = Send(server_->port(), http::verb::post, "/generate", body.dump());
  ASSERT_EQ(status, 200) << text;
  EXPECT_FALSE(json::parse(text)["meta_info"].contains("paddock_constrained")) << text;
}

TEST_F(PolicyServerE2eTest, GenerateRejectsBadToolsNamingTheField) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"tools", "bash"}}, "tools"},
      {{{"tools", {"bash"}}}, "tools"},
      {{{"tools", json::parse(R"([{"type":"function","function":{"name":"a\"b","parameters":{}}}])")}}, "tools"},
      {{{"tools", Tools()}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "rm"}}}}}}, "tool_choice"},
      {{{"tools", json::parse(R"([{"type":"function","function":{"name":"x","parameters":"nope"}}])")}}, "tools"},
      {{{"tools", Tools()}, {"tool_choice", "sometimes"}}, "tool_choice"},
      {{{"tools", Tools()}, {"tool_choice", {{"type", "function"}}}}, "tool_choice"},
      {{{"tools", Tools()}, {"thinking", "yes"}}, "thinking"},
  };
  for (const auto& [extra, param] : cases) {
    json body = {{"input_ids", {100, 200, 300}}, {"sampling_params", {{"max_new_tokens", 8}}}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    auto [status, text] = Send(server_->port(), http::verb::post, "/generate", body.dump());
    EXPECT_EQ(status, 400) << extra.dump() << " -> " << text;
    json r = json::parse(text, nullptr, false);
    ASSERT_TRUE(r.is_object()) << text;
    EXPECT_EQ(r["error"]["param"], param) << extra.dump() << " -> " << text;
  }
}

#ifdef PADDOCK_POLICY_BIN
std::pair<int, std::string> RunBinary(const std::string& args) {
  std::string cmd = std::string(PADDOCK_POLICY_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

TEST(PaddockPolicyCliTest, HelpReportKvAndUsageErrors) {
  auto [rc, help] = RunBinary("--help");
  EXPECT_EQ(rc, 0);
  for (const char* s : {"--listen", "--weights", "--config", "--seed", "--threads", "--report-kv", "/generate",
                        "/v1/chat/completions", "/metrics"})
    EXPECT_NE(help.find(s), std::string::npos) << s;
  auto [rc2, report] = RunBinary("--report-kv --config tiny --context 65536");
  EXPECT_EQ(rc2, 0) << report;
  EXPECT_FALSE(report.empty());
  auto [rc3, js] = RunBinary("--report-kv --config tiny --context 65536 --json");
  EXPECT_EQ(rc3, 0) << js;
  EXPECT_FALSE(json::parse(js, nullptr, false).is_discarded()) << js;
  auto [rc4, bad] = RunBinary("--report-kv --config nope --context 10");
  EXPECT_NE(rc4, 0);
  EXPECT_NE(bad.find("nope"), std::string::npos) << bad;
  auto [rc5, unknown] = RunBinary("--frobnicate");
  EXPECT_EQ(rc5, 2);
  EXPECT_NE(unknown.find("--frobnicate"), std::string::npos);
  auto [rc6, listen] = RunBinary("--listen nowhere");
  EXPECT_EQ(rc6, 2);
  EXPECT_NE(listen.find("--listen"), std::string::npos) << listen;
}

TEST(PaddockPolicyCliTest, ServesUntilSigterm) {
  if (!Tok()) GTEST_SKIP();
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    execl(PADDOCK_POLICY_BIN, PADDOCK_POLICY_BIN, "--listen", "127.0.0.1:0", "--config", "tiny", "--threads", "1",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string line;
  char c;
  while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(line, m, std::regex("http://127\\.0\\.0\\.1:([0-9]+)"))) << line;
  uint16_t port = static_cast<uint16_t>(std::stoi(m[1]));
  auto [status, health] = Send(port, http::verb::get, "/health");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(json::parse(health)["status"], "ok");
  auto [gs, gen] = Send(port, http::verb::post, "/generate",
                        R"({"text":"hello","sampling_params":{"max_new_tokens":4},"return_logprob":true})");
  EXPECT_EQ(gs, 200) << gen;
  EXPECT_EQ(json::parse(gen)["meta_info"]["output_token_logprobs"].size(), json::parse(gen)["output_ids"].size());
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  close(out[0]);
}
#endif

}  // namespace
}  // namespace paddock::policy::engine::server
