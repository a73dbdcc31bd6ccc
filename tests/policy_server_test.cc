// The paddock-policy server over real HTTP on loopback: every endpoint's
// documented fields, the three policy backends (SGLang, OpenAI completions,
// OpenAI chat) against it, bad requests (each named), body cap, unknown
// paths, concurrent requests reaching the engine together, and tool calls
// under the constraint parsing strictly.
//
// The engine here is ScriptedEngine, a small deterministic Engine (engine.h)
// in this file: it picks uniformly among the ids the constraint allows from a
// seeded generator. It is a stand-in for the model only so the HTTP layer can
// be checked field by field; tests/policy_server_e2e_test.cc runs the real
// embedded engine behind the same server.
#include <atomic>
#include <mutex>
#include <optional>
#include <set>
#include <chrono>
#include <cmath>
#include <random>
#include <thread>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "policy/backends/openai_chat_backend.h"
#include "policy/backends/openai_completions_backend.h"
#include "policy/backends/sglang_backend.h"
#include "policy/engine/server/http_server.h"
#include "policy/engine/server/policy_service.h"
#include "policy/v4/decode/decoder.h"
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

// Deterministic engine: seed + prompt → tokens; honours constraints, stop ids,
// max_new_tokens; records how many Generate calls overlapped.
class ScriptedEngine : public Engine {
 public:
  explicit ScriptedEngine(int32_t vocab, std::chrono::milliseconds hold = std::chrono::milliseconds(0))
      : vocab_(vocab), hold_(hold) {}

  // Fault injection: the next Generate calls fail with this status (an engine
  // failure cannot be provoked on demand in a real engine).
  void FailWith(Status st) {
    std::lock_guard lock(mu_);
    fail_ = std::move(st);
  }

  Result<GenerateOutput> Generate(GenerateJob job) override {
    {
      std::lock_guard lock(mu_);
      if (!fail_.ok()) return fail_;
    }
    int now = ++inflight_;
    int seen = max_inflight_.load();
    while (now > seen && !max_inflight_.compare_exchange_weak(seen, now)) {
    }
    if (hold_.count()) std::this_thread::sleep_for(hold_);  // lets concurrent calls overlap
    GenerateOutput out;
    out.prompt_tokens = job.prompt.size();
    uint64_t h = job.sampling.seed * 0x9E3779B97F4A7C15ull;
    for (int32_t id : job.prompt) h = (h ^ static_cast<uint64_t>(id)) * 0x100000001B3ull;
    std::mt19937_64 rng(h);
    std::vector<uint8_t> allowed(static_cast<size_t>(vocab_));
    out.finish = Finish::kLength;
    for (int step = 0; step < job.sampling.max_new_tokens; ++step) {
      std::vector<int32_t> ids;
      if (job.constraint) {
        std::fill(allowed.begin(), allowed.end(), 0);
        job.constraint->AllowedNext(allowed);
        for (int32_t i = 0; i < vocab_; ++i)
          if (allowed[static_cast<size_t>(i)]) ids.push_back(i);
      }
      int32_t pick;
      float lp;
      if (job.constraint && ids.size() < static_cast<size_t>(vocab_)) {
        if (ids.empty()) return Error(Code::kInternal, "constraint allowed nothing");
        // EOS whenever allowed and the dice say so, else uniform.
        bool eos_ok = std::find(ids.begin(), ids.end(), eos_token_id()) != ids.end();
        pick = eos_ok && rng() % 4 == 0 ? eos_token_id() : ids[rng() % ids.size()];
        lp = -std::log(static_cast<float>(ids.size()));
      } else {
        pick = rng() % 16 == 0 ? eos_token_id() : static_cast<int32_t>(1000 + rng() % 20000);
        lp = -std::log(20000.0f);
      }
      out.tokens.push_back(pick);
      out.logprobs.push_back(lp);
      if (job.constraint) job.constraint->Accept(pick);
      if (pick == eos_token_id() && !job.sampling.ignore_eos) {
        out.finish = Finish::kEos;
        break;
      }
      const auto& stops = job.sampling.stop_token_ids;
      if (std::find(stops.begin(), stops.end(), pick) != stops.end()) {
        out.finish = Finish::kStopToken;
        out.matched_stop_token = pick;
        break;
      }
      if (job.constraint && job.constraint->Complete()) {
        out.finish = Finish::kConstraintComplete;
        break;
      }
    }
    --inflight_;
    ++calls_;
    return out;
  }
  int32_t vocab_size() const override { return vocab_; }
  int32_t eos_token_id() const override { return 1; }
  size_t max_context() const override { return 4096; }
  std::string describe() const override { return "scripted test engine"; }

  int max_inflight() const { return max_inflight_.load(); }
  int calls() const { return calls_.load(); }

 private:
  int32_t vocab_;
  std::chrono::milliseconds hold_;
  std::atomic<int> inflight_{0}, max_inflight_{0}, calls_{0};
  std::mutex mu_;
  Status fail_;
};

struct Reply {
  int status = 0;
  std::string body;
  std::string content_type;
  json Json() const { return json::parse(body, nullptr, false); }
};

Reply Send(uint16_t port, http::verb method, const std::string& target, const std::string& body = "") {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::content_type, "application/json");
  req.body() = body;
  req.prepare_payload();
  http::write(socket, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  beast::error_code ec;
  http::read(socket, buffer, res, ec);
  Reply r;
  r.status = static_cast<int>(res.result_int());
  r.body = res.body();
  r.content_type = std::string(res[http::field::content_type]);
  socket.shutdown(tcp::socket::shutdown_both, ec);
  return r;
}

Reply Post(uint16_t port, const std::string& target, const json& body) {
  return Send(port, http::verb::post, target, body.dump());
}

json Tools() {
  return json::parse(R"([
    {"type":"function","function":{"name":"bash","description":"run a shell command",
      "parameters":{"type":"object","properties":{"command":{"type":"string"},"timeout":{"type":"integer"}},
                    "required":["command"]}}},
    {"type":"function","function":{"name":"write_file",
      "parameters":{"type":"object","properties":{"path":{"type":"string"},"append":{"type":"boolean"}},
                    "required":["path","append"]}}}
  ])");
}

class PolicyServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Tok()) GTEST_SKIP() << "no tokenizer at " << v4::Tokenizer::DefaultPath() << " (scripts/install-deps.sh)";
    StartServer(std::chrono::milliseconds(0), 1 << 16);
  }
  void StartServer(std::chrono::milliseconds hold, size_t max_body) {
    server_.reset();
    engine_ = std::make_shared<ScriptedEngine>(static_cast<int32_t>(Tok()->vocab_size()), hold);
    ServiceOptions so;
    so.grammar.max_reasoning_chars = 24;
    so.grammar.max_content_chars = 24;
    so.grammar.max_string_chars = 16;
    service_ = std::make_shared<PolicyService>(engine_, Tok(), so);
    HttpServerOptions ho;
    ho.port = 0;
    ho.max_body_bytes = max_body;
    auto s = HttpServer::Start(service_, ho);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s.value());
    port_ = server_->port();
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  void ExpectBad(const std::string& target, const json& body, int status, const std::string& param) {
    Reply r = Post(port_, target, body);
    EXPECT_EQ(r.status, status) << target << " " << body.dump() << " → " << r.body;
    json j = r.Json();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    EXPECT_EQ(j["error"]["param"], param) << r.body;
    EXPECT_EQ(j["error"]["code"], status);
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  }

  std::shared_ptr<ScriptedEngine> engine_;
  std::shared_ptr<PolicyService> service_;
  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
};

TEST_F(PolicyServerTest, GenerateAnswersSglangFields) {
  json req = {{"input_ids", {100, 200, 300}},
              {"sampling_params", {{"max_new_tokens", 12}, {"temperature", 0.7}, {"sampling_seed", 5}}},
              {"return_logprob", true}};
  Reply r = Post(port_, "/generate", req);
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.Json();
  ASSERT_TRUE(j["text"].is_string());
  ASSERT_TRUE(j["output_ids"].is_array());
  const json& meta = j["meta_info"];
  size_t n = j["output_ids"].size();
  EXPECT_GE(n, 1u);
  EXPECT_LE(n, 12u);
  EXPECT_EQ(meta["prompt_tokens"], 3);
  EXPECT_EQ(meta["completion_tokens"], n);
  EXPECT_TRUE(meta["cached_tokens"].is_number_integer());
  ASSERT_EQ(meta["output_token_logprobs"].size(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_TRUE(meta["output_token_logprobs"][i][0].is_number_float());
    EXPECT_EQ(meta["output_token_logprobs"][i][1], j["output_ids"][i]);
    EXPECT_TRUE(meta["output_token_logprobs"][i][2].is_null());
  }
  std::string type = meta["finish_reason"]["type"];
  if (type == "length") {
    EXPECT_EQ(n, 12u);
    EXPECT_EQ(meta["finish_reason"]["length"], 12);
  } else {
    EXPECT_EQ(type, "stop");
    EXPECT_EQ(meta["finish_reason"]["matched"], 1);
    EXPECT_EQ(j["output_ids"].back(), 1);
  }
  // Same seed, same prompt: same tokens. The text is the ids decoded.
  Reply again = Post(port_, "/generate", req);
  EXPECT_EQ(again.Json()["output_ids"], j["output_ids"]);
  std::vector<uint32_t> ids = j["output_ids"].get<std::vector<uint32_t>>();
  std::vector<uint32_t> shown;
  for (uint32_t id : ids)
    if (id != 1) shown.push_back(id);
  EXPECT_EQ(j["text"], Tok()->Decode(shown)) << "skip_special_tokens defaults to true";
  // Text prompts are tokenized by the server; no logprobs unless asked.
  Reply t = Post(port_, "/generate", {{"text", "Hello"}, {"sampling_params", {{"max_new_tokens", 3}}}});
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_EQ(t.Json()["meta_info"]["prompt_tokens"], Tok()->Encode("Hello").size());
  EXPECT_FALSE(t.Json()["meta_info"].contains("output_token_logprobs"));
}

TEST_F(PolicyServerTest, GenerateStopTokensAndStrings) {
  // A stop token: generation ends on it and finish_reason names it.
  json req = {{"input_ids", {5, 6, 7}}, {"sampling_params", {{"max_new_tokens", 64}, {"ignore_eos", true}, {"seed", 3}}}};
  Reply free = Post(port_, "/generate", req);
  ASSERT_EQ(free.status, 200);
  std::vector<int32_t> ids = free.Json()["output_ids"];
  ASSERT_GE(ids.size(), 3u);
  int32_t stop = ids[2];
  req["sampling_params"]["stop_token_ids"] = {stop};
  Reply stopped = Post(port_, "/generate", req);
  json j = stopped.Json();
  EXPECT_EQ(j["meta_info"]["finish_reason"]["type"], "stop");
  EXPECT_EQ(j["meta_info"]["finish_reason"]["matched"], stop);
  EXPECT_EQ(j["output_ids"].back(), stop);
  // A stop string: cut at its first occurrence, named in matched.
  std::string text = free.Json()["text"];
  std::string needle = Tok()->Decode(std::vector<uint32_t>{static_cast<uint32_t>(ids[1])});
  req["sampling_params"].erase("stop_token_ids");
  req["sampling_params"]["stop"] = needle;
  j = Post(port_, "/generate", req).Json();
  EXPECT_EQ(j["meta_info"]["finish_reason"]["type"], "stop") << j.dump();
  EXPECT_EQ(j["meta_info"]["finish_reason"]["matched"], needle);
  EXPECT_EQ(j["text"], text.substr(0, text.find(needle)));
  EXPECT_LE(j["output_ids"].size(), 2u);
}

TEST_F(PolicyServerTest, SglangBackendAgainstServer) {
  BackendOptions o;
  o.url = Url();
  auto backend = SglangBackend::Create(o);
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  GenerateRequest req;
  req.input_ids = {10, 20, 30, 40};
  req.sampling.max_new_tokens = 16;
  req.sampling.seed = 3;
  req.return_logprobs = true;
  auto res = backend.value()->Generate(req, {});
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_TRUE(res.value().token_exact);
  EXPECT_EQ(res.value().output_ids.size(), res.value().logprobs.size());
  EXPECT_FALSE(res.value().output_ids.empty());
  if (res.value().finish_reason == FinishReason::kEos) {
    EXPECT_EQ(res.value().output_ids.back(), 1);
  }
  if (res.value().finish_reason == FinishReason::kLength) {
    EXPECT_EQ(res.value().output_ids.size(), 16u);
  }
  // The client's stop token ids come back as kStop with the id.
  req.sampling.stop_token_ids = {res.value().output_ids[0]};
  auto stop = backend.value()->Generate(req, {});
  ASSERT_TRUE(stop.ok()) << stop.status().ToString();
  EXPECT_EQ(stop.value().finish_reason, FinishReason::kStop);
  EXPECT_EQ(stop.value().matched_stop_token, res.value().output_ids[0]);
}

TEST_F(PolicyServerTest, CompletionsBackendAgainstServer) {
  BackendOptions o;
  o.url = Url();
  o.model = "paddock-policy";
  auto backend = OpenAiCompletionsBackend::Create(o);
  ASSERT_TRUE(backend.ok());
  GenerateRequest req;
  req.input_ids = {10, 20, 30};
  req.sampling.max_new_tokens = 10;
  req.sampling.seed = 9;
  auto res = backend.value()->Generate(req, {});
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_TRUE(res.value().token_exact) << "tokens come back as token_id:N";
  EXPECT_EQ(res.value().output_ids.size(), res.value().logprobs.size());
  // The same request through /generate yields the same ids (same engine, seed, prompt).
  json g = Post(port_, "/generate",
                {{"input_ids", {10, 20, 30}}, {"sampling_params", {{"max_new_tokens", 10}, {"seed", 9}}}})
               .Json();
  EXPECT_EQ(g["output_ids"].get<std::vector<int32_t>>(), res.value().output_ids);
  // Raw response fields.
  json j = Post(port_, "/v1/completions", {{"prompt", "Say hi"}, {"max_tokens", 5}, {"logprobs", 1}}).Json();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "paddock-policy");
  const json& c = j["choices"][0];
  EXPECT_TRUE(c["text"].is_string());
  EXPECT_TRUE(c["finish_reason"] == "stop" || c["finish_reason"] == "length");
  EXPECT_EQ(c["logprobs"]["tokens"].size(), c["logprobs"]["token_logprobs"].size());
  EXPECT_EQ(j["usage"]["prompt_tokens"], Tok()->Encode("Say hi").size());
  EXPECT_EQ(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
}

// A request without a seed samples afresh each time (as SGLang does): the same
// prompt sent G times is G samples, which a GRPO group needs. With a seed, the
// same tokens come back.
TEST_F(PolicyServerTest, UnseededRequestsDifferAndSeededOnesRepeat) {
  auto ask = [&](std::optional<int> seed) {
    json sp = {{"max_new_tokens", 24}, {"ignore_eos", true}, {"temperature", 1.0}};
    if (seed) sp["seed"] = *seed;
    return Post(port_, "/generate", {{"input_ids", {10, 20, 30}}, {"sampling_params", sp}})
        .Json()["output_ids"]
        .get<std::vector<int32_t>>();
  };
  std::set<std::vector<int32_t>> unseeded;
  for (int i = 0; i < 4; ++i) unseeded.insert(ask(std::nullopt));
  EXPECT_GE(unseeded.size(), 3u) << "four unseeded samples of one prompt came back (nearly) identical";
  EXPECT_EQ(ask(5), ask(5));
}

TEST_F(PolicyServerTest, ChatWithToolsIsConstrainedAndParses) {
  BackendOptions o;
  o.url = Url();
  auto backend = OpenAiChatBackend::Create(o);
  ASSERT_TRUE(backend.ok());
  int with_calls = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    GenerateRequest req;
    req.messages = {{"system", "You run commands."}, {"user", "List the files."}};
    req.tools = Tools();
    req.sampling.max_new_tokens = 300;
    req.sampling.seed = seed;
    req.extra_body = {{"tool_choice", "required"}};
    auto res = backend.value()->Generate(req, {});
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    ASSERT_TRUE(res.value().tool_calls.is_array()) << "seed " << seed;
    EXPECT_EQ(res.value().finish_reason, FinishReason::kToolCalls);
    for (const auto& call : res.value().tool_calls) {
      std::string name = call["function"]["name"];
      EXPECT_TRUE(name == "bash" || name == "write_file") << name;
      json args = json::parse(call["function"]["arguments"].get<std::string>());
      if (name == "bash") EXPECT_TRUE(args["command"].is_string());
      if (name == "write_file") EXPECT_TRUE(args["append"].is_boolean());
      EXPECT_TRUE(call["id"].is_string());
    }
    with_calls += !res.value().tool_calls.empty();
  }
  EXPECT_EQ(with_calls, 6);
  // Raw: thinking mode gives reasoning_content; the strict decode succeeded.
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
               {"tools", Tools()},
               {"thinking", true},
               {"max_tokens", 300},
               {"seed", 4},
               {"logprobs", true}};
  json j = Post(port_, "/v1/chat/completions", body).Json();
  ASSERT_TRUE(j.contains("choices")) << j.dump();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_TRUE(j["paddock"]["constrained"]);
  EXPECT_TRUE(j["paddock"]["decode_error"].is_null()) << j.dump();
  const json& msg = j["choices"][0]["message"];
  EXPECT_EQ(msg["role"], "assistant");
  EXPECT_TRUE(msg["reasoning_content"].is_string());
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), j["usage"]["completion_tokens"]);
  // The output ids decode (strictly, with the schemas) to the same message.
  std::vector<uint32_t> ids = j["paddock"]["output_ids"].get<std::vector<uint32_t>>();
  const json tools = Tools();
  auto strict = v4::DecodeCompletion(Tok()->Decode(ids), true, &tools);
  ASSERT_TRUE(std::holds_alternative<json>(strict));
  EXPECT_EQ(std::get<json>(strict)["reasoning_content"], msg["reasoning_content"]);
}

TEST_F(PolicyServerTest, ChatConstraintOffSamplesFreely) {
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
               {"tools", Tools()},
               {"thinking", true},
               {"tool_constraint", false},
               {"max_tokens", 40},
               {"seed", 2}};
  json j = Post(port_, "/v1/chat/completions", body).Json();
  ASSERT_TRUE(j.contains("choices")) << j.dump();
  EXPECT_FALSE(j["paddock"]["constrained"]);
  // Free sampling from the scripted engine never writes </think>: not a well-formed message.
  EXPECT_FALSE(j["paddock"]["decode_error"].is_null());
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  // tool_choice "none" with the constraint: text only, well-formed.
  body["tool_constraint"] = true;
  body["tool_choice"] = "none";
  body["max_tokens"] = 200;
  j = Post(port_, "/v1/chat/completions", body).Json();
  EXPECT_TRUE(j["paddock"]["decode_error"].is_null()) << j.dump();
  EXPECT_FALSE(j["choices"][0]["message"].contains("tool_calls"));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
}

// An engine without weight updates (the Engine default): the SGLang endpoints
// answer in SGLang's shapes — "default" version, success:false on update —
// and the backends that have no weight updates say UNIMPLEMENTED.
TEST_F(PolicyServerTest, WeightEndpointsOnAnEngineWithoutUpdates) {
  Reply info = Send(port_, http::verb::get, "/model_info");
  EXPECT_EQ(info.status, 200);
  EXPECT_EQ(info.Json()["weight_version"], "default") << info.body;
  EXPECT_EQ(info.Json()["is_generation"], true);
  json g = Post(port_, "/generate", {{"input_ids", {1, 2}}, {"sampling_params", {{"max_new_tokens", 2}}}}).Json();
  EXPECT_EQ(g["meta_info"]["weight_version"], "default") << g.dump();
  Reply up = Post(port_, "/update_weights_from_disk", {{"model_path", "/tmp/w.safetensors"}});
  EXPECT_EQ(up.status, 400);
  EXPECT_EQ(up.Json()["success"], false) << up.body;
  EXPECT_NE(up.Json()["message"].get<std::string>().find("cannot load new weights"), std::string::npos) << up.body;
  EXPECT_EQ(Send(port_, http::verb::get, "/update_weights_from_disk").status, 405);

  BackendOptions o;
  o.url = Url();
  auto sglang = SglangBackend::Create(o);
  ASSERT_TRUE(sglang.ok());
  Status st = sglang.value()->UpdateWeightsFromDisk("/tmp/w.safetensors", "v2", std::chrono::seconds(5));
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("cannot load new weights"), std::string::npos) << st.ToString();
  EXPECT_EQ(sglang.value()->WeightVersion().value(), "default");
  auto completions = OpenAiCompletionsBackend::Create(o);
  auto chat = OpenAiChatBackend::Create(o);
  ASSERT_TRUE(completions.ok() && chat.ok());
  EXPECT_EQ(completions.value()->UpdateWeightsFromDisk("/tmp/w", "", std::chrono::seconds(1)).code(),
            Code::kUnimplemented);
  EXPECT_EQ(chat.value()->WeightVersion().status().code(), Code::kUnimplemented);
}

TEST_F(PolicyServerTest, HealthMetricsModelsAndUnknownPaths) {
  Reply h = Send(port_, http::verb::get, "/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.Json()["status"], "ok");
  EXPECT_EQ(h.Json()["engine"], "scripted test engine");
  Reply models = Send(port_, http::verb::get, "/v1/models");
  EXPECT_EQ(models.Json()["data"][0]["id"], "paddock-policy");
  EXPECT_EQ(models.Json()["data"][0]["max_model_len"], 4096);
  Reply nf = Send(port_, http::verb::get, "/nope");
  EXPECT_EQ(nf.status, 404);
  EXPECT_TRUE(nf.Json().contains("error"));
  EXPECT_EQ(Send(port_, http::verb::get, "/generate").status, 405);
  EXPECT_EQ(Send(port_, http::verb::post, "/health").status, 405);
  Post(port_, "/generate", {{"input_ids", {1, 2}}, {"sampling_params", {{"max_new_tokens", 4}}}});
  Reply m = Send(port_, http::verb::get, "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_NE(m.content_type.find("text/plain"), std::string::npos);
  EXPECT_NE(m.body.find("paddock_policy_requests_total{endpoint=\"/generate\",status=\"200\"} 1"), std::string::npos)
      << m.body;
  EXPECT_NE(m.body.find("paddock_policy_requests_total{endpoint=\"other\",status=\"404\"} 1"), std::string::npos);
  EXPECT_NE(m.body.find("paddock_policy_prompt_tokens_total 2"), std::string::npos);
  // The 405 above and the 200.
  EXPECT_NE(m.body.find("paddock_policy_request_duration_seconds_count{endpoint=\"/generate\"} 2"), std::string::npos);
  EXPECT_NE(m.body.find("paddock_policy_completion_tokens_total"), std::string::npos);
}

TEST_F(PolicyServerTest, BadRequestsNameTheField) {
  ExpectBad("/generate", {{"sampling_params", {{"max_new_tokens", 4}}}}, 400, "input_ids");
  ExpectBad("/generate", {{"input_ids", {1}}, {"text", "x"}}, 400, "text");
  ExpectBad("/generate", {{"input_ids", "abc"}}, 400, "input_ids");
  ExpectBad("/generate", {{"input_ids", {1, -4}}}, 400, "input_ids[1]");
  ExpectBad("/generate", {{"input_ids", {1, 99999999}}}, 400, "input_ids[1]");
  ExpectBad("/generate", {{"input_ids", {{1, 2}, {3}}}}, 400, "input_ids");
  ExpectBad("/generate", {{"input_ids", json::array()}}, 400, "input_ids");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", {{"temperature", "hot"}}}}, 400,
            "sampling_params.temperature");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", {{"top_p", 0}}}}, 400, "sampling_params.top_p");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", {{"max_new_tokens", 0}}}}, 400,
            "sampling_params.max_new_tokens");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", {{"max_new_tokens", 5000}}}}, 400,
            "sampling_params.max_new_tokens");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", {{"stop_token_ids", {"x"}}}}}, 400,
            "sampling_params.stop_token_ids[0]");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", {{"stop", 5}}}}, 400, "sampling_params.stop");
  ExpectBad("/generate", {{"input_ids", {1}}, {"sampling_params", "x"}}, 400, "sampling_params");
  ExpectBad("/generate", {{"input_ids", {1}}, {"return_logprob", "yes"}}, 400, "return_logprob");
  ExpectBad("/generate", {{"input_ids", {1}}, {"stream", true}}, 400, "stream");
  ExpectBad("/v1/completions", {{"max_tokens", 3}}, 400, "prompt");
  ExpectBad("/v1/completions", {{"prompt", {"a", "b"}}}, 400, "prompt");
  ExpectBad("/v1/completions", {{"prompt", "a"}, {"n", 2}}, 400, "n");
  ExpectBad("/v1/completions", {{"prompt", "a"}, {"logprobs", 99}}, 400, "logprobs");
  ExpectBad("/v1/completions", {{"prompt", "a"}, {"echo", true}}, 400, "echo");
  ExpectBad("/v1/chat/completions", {{"messages", json::array()}}, 400, "messages");
  ExpectBad("/v1/chat/completions", {{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}, 400, "messages");
  ExpectBad("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", 3}}, 400,
            "tools");
  ExpectBad("/v1/chat/completions",
            {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", Tools()}, {"tool_choice", "maybe"}}, 400,
            "tool_choice");
  ExpectBad("/v1/chat/completions",
            {{"messages", {{{"role", "user"}, {"content", "x"}}}},
             {"tools", Tools()},
             {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}},
            400, "tool_choice");
  ExpectBad("/v1/chat/completions",
            {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", {{{"type", "function"}, {"function", {{"name", "a\"b"}}}}}}},
            400, "tools");
  // Not JSON, not an object.
  Reply r = Send(port_, http::verb::post, "/generate", "{not json");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["param"], "body");
  EXPECT_EQ(Send(port_, http::verb::post, "/v1/chat/completions", "[1]").status, 400);
  // Nothing reached the engine.
  EXPECT_EQ(engine_->calls(), 0);
}

TEST_F(PolicyServerTest, EngineErrorsMapToHttpStatuses) {
  const std::vector<std::pair<Code, int>> cases = {{Code::kResourceExhausted, 503}, {Code::kUnavailable, 503},
                                                   {Code::kInvalidArgument, 400}, {Code::kDeadlineExceeded, 504},
                                                   {Code::kInternal, 500}};
  for (const auto& [code, status] : cases) {
    engine_->FailWith(Status(code, "engine says no"));
    for (const char* target : {"/generate", "/v1/completions", "/v1/chat/completions"}) {
      json body = std::string(target) == "/generate" ? json{{"input_ids", {1, 2}}}
                  : std::string(target) == "/v1/completions"
                      ? json{{"prompt", "x"}}
                      : json{{"messages", {{{"role", "user"}, {"content", "x"}}}}};
      Reply r = Post(port_, target, body);
      EXPECT_EQ(r.status, status) << target << " " << CodeName(code) << " " << r.body;
      EXPECT_NE(r.Json()["error"]["message"].get<std::string>().find("engine says no"), std::string::npos);
      EXPECT_EQ(r.Json()["error"]["type"], status < 500 ? "invalid_request_error" : "server_error");
    }
  }
  // The SGLang client sees the mapped status as its typed error.
  engine_->FailWith(Status(Code::kInternal, "engine says no"));
  BackendOptions o;
  o.url = Url();
  o.http.retry.max_attempts = 1;
  auto backend = SglangBackend::Create(o);
  GenerateRequest req;
  req.input_ids = {1, 2};
  auto res = backend.value()->Generate(req, {});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kUnavailable) << res.status().ToString();
  engine_->FailWith(Status::Ok());
  EXPECT_EQ(Post(port_, "/generate", {{"input_ids", {1, 2}}}).status, 200);
}

TEST_F(PolicyServerTest, OversizedBodyIs413AndServerStaysUp) {
  StartServer(std::chrono::milliseconds(0), 4096);
  std::string big = json{{"text", std::string(10000, 'a')}}.dump();
  Reply r = Send(port_, http::verb::post, "/generate", big);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.Json()["error"]["param"], "body");
  EXPECT_EQ(Send(port_, http::verb::get, "/health").status, 200);
  EXPECT_NE(Send(port_, http::verb::get, "/metrics").body.find("status=\"413\""), std::string::npos);
}

// A request that is not HTTP, or whose head passes the 64 KiB limit, gets 400
// (its error names no field) and the server goes on: it used to abort on
// building that error's JSON.
TEST_F(PolicyServerTest, MalformedOrOverlongHeadIs400AndServerStaysUp) {
  StartServer(std::chrono::milliseconds(0), 4096);
  Reply r = Send(port_, http::verb::get, "/health?x=" + std::string(70000, 'a'));
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(r.Json()["error"]["param"].is_null()) << r.body;
  EXPECT_EQ(Send(port_, http::verb::get, "/health").status, 200);
  EXPECT_NE(Send(port_, http::verb::get, "/metrics").body.find("status=\"400\""), std::string::npos);
}

TEST_F(PolicyServerTest, ConcurrentRequestsReachTheEngineTogether) {
  StartServer(std::chrono::milliseconds(150), 1 << 16);
  constexpr int kClients = 8;
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      Reply r = Post(port_, "/generate", {{"input_ids", {i + 10, 2}}, {"sampling_params", {{"max_new_tokens", 4}}}});
      ok += r.status == 200;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients);
  EXPECT_GE(engine_->max_inflight(), 2) << "the server serialized the requests";
  Reply m = Send(port_, http::verb::get, "/metrics");
  // The gauge the server exposes agrees with what the engine saw.
  std::string line = "paddock_policy_generate_max_concurrent " + std::to_string(engine_->max_inflight());
  EXPECT_NE(m.body.find(line), std::string::npos) << m.body;
}

TEST(ParseListenTest, AcceptsAndRefuses) {
  std::string host;
  uint16_t port = 0;
  ASSERT_TRUE(ParseListen("127.0.0.1:30000", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 30000);
  ASSERT_TRUE(ParseListen("[::1]:8080", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  for (const char* bad : {"", "localhost", "1.2.3.4:", ":80", "1.2.3.4:70000", "1.2.3.4:x", "name:80"}) {
    Status st = ParseListen(bad, &host, &port);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << bad;
  }
}

TEST(HttpServerStartTest, PortInUseIsUnavailable) {
  if (!Tok()) GTEST_SKIP();
  auto engine = std::make_shared<ScriptedEngine>(static_cast<int32_t>(Tok()->vocab_size()));
  auto service = std::make_shared<PolicyService>(engine, Tok());
  HttpServerOptions o;
  o.port = 0;
  auto a = HttpServer::Start(service, o);
  ASSERT_TRUE(a.ok());
  o.port = a.value()->port();
  auto b = HttpServer::Start(service, o);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kUnavailable);
  EXPECT_NE(b.status().message().find(std::to_string(o.port)), std::string::npos);
}

}  // namespace
}  // namespace paddock::policy::engine::server
