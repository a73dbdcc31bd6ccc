// paddock-policy end to end with the real embedded engine (tiny config,
// seeded weights): the backends against the server, concurrent requests
// batched in the engine (its step statistics through /metrics), tool calls
// under the constraint parsing strictly; weight updates (SGLang's
// /update_weights_from_disk) through the SGLang backend and raw HTTP; and the
// binary itself: --help, --report-kv, --save-weights, serving on a free port
// until SIGTERM, reloading weights while it serves.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
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
#include "policy/engine/weights.h"
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

// --- weight updates ---------------------------------------------------------

std::filesystem::path TempDir() {
  return std::filesystem::temp_directory_path() / ("paddock_policy_e2e_" + std::to_string(::getpid()));
}

std::string TempFile(const std::string& name) {
  std::filesystem::create_directories(TempDir());
  return (TempDir() / name).string();
}

// The weight files are tens of MB: gone when the tests end.
class RemoveTempDir : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(TempDir(), ec);
  }
};
[[maybe_unused]] const ::testing::Environment* const kRemoveTempDir =
    ::testing::AddGlobalTestEnvironment(new RemoveTempDir);

// The tiny config's seeded weights saved as safetensors (once per seed).
std::string TinyWeights(uint64_t seed) {
  std::string path = TempFile("tiny_seed" + std::to_string(seed) + ".safetensors");
  if (std::filesystem::exists(path)) return path;
  auto cfg = ConfigByName("tiny");
  auto w = SeededWeights(cfg.value(), seed);
  EXPECT_TRUE(w.ok());
  EXPECT_TRUE(SaveSafetensors(w.value(), path).ok());
  return path;
}

class PolicyServerWeightUpdateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Tok()) GTEST_SKIP() << "no tokenizer at " << v4::Tokenizer::DefaultPath();
    EngineOptions eo;
    eo.config = "tiny";
    eo.weights_path = TinyWeights(1);
    eo.weight_version = "v1";
    eo.threads = 2;
    auto e = EmbeddedEngine::Create(eo);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e.value());
    service_ = std::make_shared<PolicyService>(engine_, Tok(), ServiceOptions{});
    HttpServerOptions ho;
    ho.port = 0;
    auto s = HttpServer::Start(service_, ho);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s.value());
    BackendOptions o;
    o.url = "http://127.0.0.1:" + std::to_string(server_->port());
    auto b = SglangBackend::Create(o);
    ASSERT_TRUE(b.ok());
    backend_ = std::move(b.value());
  }
  GenerateRequest Request(int max_new = 16) {
    GenerateRequest req;
    for (uint32_t id : Tok()->Encode("The sandbox ran the tests and")) req.input_ids.push_back(static_cast<int32_t>(id));
    req.sampling.max_new_tokens = max_new;
    req.sampling.seed = 11;
    req.sampling.temperature = 0.8;
    req.extra_body = {{"sampling_params", {{"max_new_tokens", max_new}, {"sampling_seed", 11}, {"temperature", 0.8},
                                           {"ignore_eos", true}, {"skip_special_tokens", false}}}};
    return req;
  }
  GenerateResult Gen(int max_new = 16) {
    auto r = backend_->Generate(Request(max_new), {});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : GenerateResult{};
  }
  json Update(const json& body) {
    auto [status, text] = Send(server_->port(), http::verb::post, "/update_weights_from_disk", body.dump());
    json r = json::parse(text, nullptr, false);
    EXPECT_TRUE(r.is_object()) << text;
    EXPECT_EQ(status, r.value("success", false) ? 200 : 400) << text;
    return r;
  }

  std::shared_ptr<EmbeddedEngine> engine_;
  std::shared_ptr<PolicyService> service_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<SglangBackend> backend_;
};

TEST_F(PolicyServerWeightUpdateTest, UpdateChangesTokensAndWeightVersion) {
  GenerateResult a = Gen();
  EXPECT_EQ(a.weight_version, "v1");
  auto version = backend_->WeightVersion();
  ASSERT_TRUE(version.ok()) << version.status().ToString();
  EXPECT_EQ(version.value(), "v1");

  auto started = std::chrono::steady_clock::now();
  Status st = backend_->UpdateWeightsFromDisk(TinyWeights(2), "step-2", std::chrono::seconds(30));
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::printf("[ weight update of the tiny model: %.0f ms, client call to answer ]\n", ms);
  EXPECT_EQ(backend_->WeightVersion().value(), "step-2");
  GenerateResult b = Gen();
  EXPECT_EQ(b.weight_version, "step-2");
  EXPECT_NE(b.output_ids, a.output_ids) << "the seed-2 weights generated seed 1's tokens";

  // The SGLang endpoints, raw: /model_info and its older names.
  for (const char* path : {"/model_info", "/get_model_info", "/weight_version", "/get_weight_version"}) {
    auto [status, text] = Send(server_->port(), http::verb::get, path);
    EXPECT_EQ(status, 200) << path;
    EXPECT_EQ(json::parse(text)["weight_version"], "step-2") << path << ": " << text;
  }
  EXPECT_NE(json::parse(Send(server_->port(), http::verb::get, "/model_info").second)["model_path"]
                .get<std::string>()
                .find("tiny_seed2"),
            std::string::npos);

  // Back to seed 1 without a version: the server derives one from the file,
  // and the tokens are seed 1's again.
  json r = Update({{"model_path", TinyWeights(1)}, {"load_format", "safetensors"}, {"flush_cache", true}});
  EXPECT_EQ(r["success"], true) << r.dump();
  EXPECT_EQ(r["num_paused_requests"], 0);
  EXPECT_EQ(r["weight_version"].get<std::string>().rfind("tiny_seed1.safetensors@", 0), 0u) << r.dump();
  GenerateResult c = Gen();
  EXPECT_EQ(c.output_ids, a.output_ids);
  EXPECT_EQ(c.weight_version, r["weight_version"]);
  auto [ms_status, metrics] = Send(server_->port(), http::verb::get, "/metrics");
  EXPECT_NE(metrics.find("paddock_policy_weight_updates_total{result=\"ok\"} 2"), std::string::npos) << metrics;
}

TEST_F(PolicyServerWeightUpdateTest, BadFilesAnswerSuccessFalseAndKeepTheOldWeights) {
  GenerateResult before = Gen();
  auto small = SeededWeights(ConfigByName("small").value(), 1);
  ASSERT_TRUE(small.ok());
  small.value().config.name = "tiny";  // claims tiny, has small's shapes
  std::string wrong_shapes = TempFile("wrong_shapes.safetensors");
  ASSERT_TRUE(SaveSafetensors(small.value(), wrong_shapes).ok());
  std::string garbage = TempFile("garbage.safetensors");
  std::ofstream(garbage) << "not safetensors";

  const std::vector<std::pair<json, std::string>> cases = {
      {{{"model_path", TempFile("missing.safetensors")}}, "missing.safetensors"},
      {{{"model_path", wrong_shapes}}, "shape"},
      {{{"model_path", garbage}}, "garbage.safetensors"},
      {{{"model_path", "relative/w.safetensors"}}, "absolute"},
      {{{"model_path", TinyWeights(2)}, {"load_format", "pt"}}, "load_format"},
      {{{"model_path", TinyWeights(2)}, {"weight_version", 3}}, "weight_version"},
      {{{"path", TinyWeights(2)}}, "model_path"},
  };
  for (const auto& [body, says] : cases) {
    json r = Update(body);
    EXPECT_EQ(r["success"], false) << body.dump();
    EXPECT_NE(r["message"].get<std::string>().find(says), std::string::npos) << r.dump();
  }
  auto [status, text] = Send(server_->port(), http::verb::post, "/update_weights_from_disk", "{not json");
  EXPECT_EQ(status, 400);
  EXPECT_EQ(json::parse(text)["success"], false) << text;

  // Through the backend: FAILED_PRECONDITION with the server's reason.
  Status st = backend_->UpdateWeightsFromDisk(wrong_shapes, "bad", std::chrono::seconds(10));
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("shape"), std::string::npos) << st.ToString();

  GenerateResult after = Gen();
  EXPECT_EQ(after.output_ids, before.output_ids);
  EXPECT_EQ(after.weight_version, "v1");
  EXPECT_EQ(backend_->WeightVersion().value(), "v1");
  std::filesystem::remove(wrong_shapes);
}

TEST_F(PolicyServerWeightUpdateTest, RequestInFlightDuringAnUpdateCompletesOnItsWeights) {
  // The update must land while the long request runs; on a loaded machine a
  // request may end first, so the length grows until it does not.
  for (int max_new = 400;; max_new *= 4) {
    json back = Update({{"model_path", TinyWeights(1)}, {"weight_version", "v1"}});
    ASSERT_EQ(back["success"], true) << back.dump();
    // The reference: the long request with no update in between.
    GenerateRequest long_req = Request(max_new);
    auto reference = backend_->Generate(long_req, {});
    ASSERT_TRUE(reference.ok()) << reference.status().ToString();
    Result<GenerateResult> running = Status(Code::kUnknown, "not run");
    std::thread t([&] { running = backend_->Generate(long_req, {}); });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (engine_->stats().active == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    json r = Update({{"model_path", TinyWeights(2)}, {"weight_version", "v2"}});
    EXPECT_EQ(r["success"], true) << r.dump();
    GenerateResult fresh = Gen();
    t.join();
    ASSERT_TRUE(running.ok()) << running.status().ToString();
    EXPECT_EQ(fresh.weight_version, "v2");
    if (r["requests_on_old_weights"] == 0 && max_new < 6400) continue;  // ended before the update
    EXPECT_EQ(r["requests_on_old_weights"], 1) << "the long request ended before the update";
    EXPECT_EQ(running.value().weight_version, "v1");
    EXPECT_EQ(running.value().output_ids.size(), static_cast<size_t>(max_new));
    EXPECT_EQ(running.value().output_ids, reference.value().output_ids)
        << "the request's tokens changed with the update";
    break;
  }
}

TEST_F(PolicyServerWeightUpdateTest, CheckpointDirectoryStandsForItsModelSafetensors) {
  std::string dir = TempFile("ckpt-step-2");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(TinyWeights(2), dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  json r = Update({{"model_path", dir}, {"weight_version", "step-2"}});
  EXPECT_EQ(r["success"], true) << r.dump();
  EXPECT_EQ(Gen().weight_version, "step-2");
  std::string empty = TempFile("ckpt-empty");
  std::filesystem::create_directories(empty);
  json bad = Update({{"model_path", empty}});
  EXPECT_EQ(bad["success"], false) << bad.dump();
  EXPECT_NE(bad["message"].get<std::string>().find("not a regular file"), std::string::npos) << bad.dump();
  EXPECT_EQ(engine_->weight_version(), "step-2");
}

TEST_F(PolicyServerWeightUpdateTest, OnlyLoopbackPeersMayUpdate) {
  HttpReply reply = service_->HandleFrom(HttpPeer{"192.0.2.7", false}, "POST", "/update_weights_from_disk",
                                         json{{"model_path", TinyWeights(2)}}.dump());
  EXPECT_EQ(reply.status, 403);
  json r = json::parse(reply.body);
  EXPECT_EQ(r["success"], false);
  EXPECT_NE(r["message"].get<std::string>().find("--allow-remote-weight-updates"), std::string::npos);
  EXPECT_EQ(engine_->weight_version(), "v1");
  // Reading the version is fine from anywhere.
  EXPECT_EQ(service_->HandleFrom(HttpPeer{"192.0.2.7", false}, "GET", "/weight_version", "").status, 200);
  // The backend maps 403 to PERMISSION_DENIED; an unreachable server is UNAVAILABLE.
  BackendOptions o;
  o.url = "http://127.0.0.1:1";
  o.http.retry.max_attempts = 1;
  auto down = SglangBackend::Create(o);
  ASSERT_TRUE(down.ok());
  EXPECT_EQ(down.value()->UpdateWeightsFromDisk(TinyWeights(2), "v2", std::chrono::seconds(2)).code(),
            Code::kUnavailable);
  EXPECT_EQ(down.value()->WeightVersion().status().code(), Code::kUnavailable);
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
  for (const char* s : {"--save-weights", "--weight-version", "--allow-remote-weight-updates",
                        "/update_weights_from_disk", "/model_info"})
    EXPECT_NE(help.find(s), std::string::npos) << s;
}

TEST(PaddockPolicyCliTest, SaveWeightsWritesLoadableFilesThatDiffer) {
  std::string a = TempFile("cli_seed5.safetensors"), b = TempFile("cli_seed6.safetensors");
  auto [rc, out] = RunBinary("--save-weights " + a + " --seed 5");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("weight_version cli_seed5.safetensors@"), std::string::npos) << out;
  auto [rc2, out2] = RunBinary("--save-weights " + b + " --seed 6 --config tiny");
  EXPECT_EQ(rc2, 0) << out2;
  auto cfg = ConfigByName("tiny").value();
  auto wa = LoadSafetensors(a, cfg), wb = LoadSafetensors(b, cfg);
  ASSERT_TRUE(wa.ok() && wb.ok());
  EXPECT_NE(wa.value().digest, wb.value().digest);
  EXPECT_NE(DefaultWeightVersion(wa.value()), DefaultWeightVersion(wb.value()));
  auto [rc3, out3] = RunBinary("--save-weights " + TempFile("x.safetensors") + " --weights " + a);
  EXPECT_EQ(rc3, 2) << out3;
  auto [rc4, out4] = RunBinary("--save-weights /nonexistent-dir/x.safetensors");
  EXPECT_NE(rc4, 0) << out4;
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
          "--weight-version", "cli-v1", static_cast<char*>(nullptr));
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
  EXPECT_EQ(json::parse(gen)["meta_info"]["weight_version"], "cli-v1") << gen;
  // A weight update while serving: the seeded start weights for a file.
  auto [us, up] = Send(port, http::verb::post, "/update_weights_from_disk",
                       json{{"model_path", TinyWeights(2)}, {"weight_version", "cli-v2"}}.dump());
  EXPECT_EQ(us, 200) << up;
  auto [vs, version] = Send(port, http::verb::get, "/get_weight_version");
  EXPECT_EQ(json::parse(version)["weight_version"], "cli-v2") << version;
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  close(out[0]);
}
#endif

}  // namespace
}  // namespace paddock::policy::engine::server
