#include "policy/engine/server/policy_service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <random>

#include <fmt/format.h>

#include "policy/v4/decode/decoder.h"
#include "policy/v4/decode/dsml_parser.h"
#include "policy/v4/encode/encoder.h"

namespace paddock::policy::engine::server {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Errors: a Status whose message starts with the offending field ("field: why").

Status Bad(std::string_view field, std::string_view why) {
  return Status(Code::kInvalidArgument, fmt::format("{}: {}", field, why));
}

int HttpStatusFor(Code code) {
  switch (code) {
    case Code::kInvalidArgument:
    case Code::kOutOfRange:
    case Code::kFailedPrecondition: return 400;
    case Code::kNotFound: return 404;
    case Code::kUnimplemented: return 501;
    case Code::kResourceExhausted:
    case Code::kUnavailable:
    case Code::kCancelled:
    case Code::kAborted: return 503;
    case Code::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

HttpReply ErrorReply(int status, const std::string& message, const std::string& param = "") {
  json err = {{"message", message},
              {"type", status < 500 ? "invalid_request_error" : "server_error"},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", status}};
  return {status, "application/json", json{{"error", err}, {"object", "error"}}.dump()};
}

HttpReply ErrorReply(const Status& st) {
  int status = HttpStatusFor(st.code());
  std::string param;
  if (st.code() == Code::kInvalidArgument || st.code() == Code::kOutOfRange) {
    size_t colon = st.message().find(':');
    if (colon != std::string::npos && st.message().find(' ') > colon) param = st.message().substr(0, colon);
  }
  return ErrorReply(status, st.message(), param);
}

HttpReply JsonReply(const json& body) { return {200, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace)}; }

// ---------------------------------------------------------------------------
// Field readers: absent or null → nullopt; wrong type or range → INVALID_ARGUMENT naming the field.

Result<std::optional<double>> ReadNumber(const json& obj, const char* key, const std::string& path, double lo,
                                         double hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) return Bad(path + key, "must be a number");
  double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) return Bad(path + key, fmt::format("must be in [{}, {}]", lo, hi));
  return std::optional<double>(v);
}

Result<std::optional<int64_t>> ReadInt(const json& obj, const char* key, const std::string& path, int64_t lo,
                                       int64_t hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) return Bad(path + key, "must be an integer");
  int64_t v = it->is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(it->get<uint64_t>(), INT64_MAX))
                                       : it->get<int64_t>();
  if (v < lo || v > hi) return Bad(path + key, fmt::format("must be in [{}, {}]", lo, hi));
  return std::optional<int64_t>(v);
}

Result<std::optional<bool>> ReadBool(const json& obj, const char* key, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<bool>();
  if (!it->is_boolean()) return Bad(path + key, "must be true or false");
  return std::optional<bool>(it->get<bool>());
}

Result<std::vector<int32_t>> ReadIds(const json& v, const std::string& field, int32_t vocab) {
  if (!v.is_array()) return Bad(field, "must be an array of token ids");
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].is_array()) return Bad(field, "batched requests (a list of lists) are not supported; send one request each");
    if (!v[i].is_number_integer()) return Bad(fmt::format("{}[{}]", field, i), "must be an integer token id");
    int64_t id = v[i].get<int64_t>();
    if (id < 0 || id >= vocab)
      return Bad(fmt::format("{}[{}]", field, i), fmt::format("token id {} is outside the vocabulary [0, {})", id, vocab));
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

Result<std::vector<std::string>> ReadStops(const json& obj, const char* key, const std::string& path) {
  std::vector<std::string> out;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return out;
  if (it->is_string()) {
    out.push_back(it->get<std::string>());
  } else if (it->is_array()) {
    for (size_t i = 0; i < it->size(); ++i) {
      if (!(*it)[i].is_string()) return Bad(fmt::format("{}{}[{}]", path, key, i), "must be a string");
      out.push_back((*it)[i].get<std::string>());
    }
  } else {
    return Bad(path + key, "must be a string or an array of strings");
  }
  for (const auto& s : out)
    if (s.empty()) return Bad(path + key, "stop strings must not be empty");
  if (out.size() > 16) return Bad(path + key, "at most 16 stop strings");
  return out;
}

// The seed of a request that names none: drawn afresh, as SGLang samples an
// unseeded request from its own random state. A fixed default would give every
// sample of a GRPO group (the same prompt, G times) the same tokens.
uint64_t FreshSeed() {
  thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()};
  return rng();
}

// Sampling knobs shared by every endpoint. `p` is the object holding them,
// `path` its prefix in error messages ("sampling_params." or "").
struct Knobs {
  Sampling sampling;
  std::vector<std::string> stop;
  bool skip_special = true;
};

Status ReadSampling(const json& p, const std::string& path, const char* max_key, int default_max, Knobs* k,
                    int32_t vocab) {
  if (!p.is_object()) return Bad(path.empty() ? "body" : path.substr(0, path.size() - 1), "must be an object");
  PADDOCK_ASSIGN_OR_RETURN(auto temperature, ReadNumber(p, "temperature", path, 0, 100));
  PADDOCK_ASSIGN_OR_RETURN(auto top_p, ReadNumber(p, "top_p", path, 0, 1));
  PADDOCK_ASSIGN_OR_RETURN(auto top_k, ReadInt(p, "top_k", path, -1, 1 << 30));
  PADDOCK_ASSIGN_OR_RETURN(auto max_new, ReadInt(p, max_key, path, 1, 1 << 20));
  PADDOCK_ASSIGN_OR_RETURN(auto ignore_eos, ReadBool(p, "ignore_eos", path));
  PADDOCK_ASSIGN_OR_RETURN(auto skip, ReadBool(p, "skip_special_tokens", path));
  std::optional<int64_t> seed;
  for (const char* key : {"sampling_seed", "seed"}) {
    PADDOCK_ASSIGN_OR_RETURN(auto s, ReadInt(p, key, path, INT64_MIN, INT64_MAX));
    if (s) seed = s;
  }
  if (top_p && *top_p <= 0) return Bad(path + "top_p", "must be in (0, 1]");
  Sampling& s = k->sampling;
  if (temperature) s.temperature = *temperature;
  if (top_p) s.top_p = *top_p;
  if (top_k) s.top_k = *top_k < 0 ? 0 : static_cast<int>(*top_k);
  s.max_new_tokens = max_new ? static_cast<int>(*max_new) : default_max;
  if (ignore_eos) s.ignore_eos = *ignore_eos;
  s.seed = seed ? static_cast<uint64_t>(*seed) : FreshSeed();
  if (skip) k->skip_special = *skip;
  if (auto it = p.find("stop_token_ids"); it != p.end() && !it->is_null()) {
    PADDOCK_ASSIGN_OR_RETURN(s.stop_token_ids, ReadIds(*it, path + "stop_token_ids", vocab));
  }
  PADDOCK_ASSIGN_OR_RETURN(k->stop, ReadStops(p, "stop", path));
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Stop strings: a constraint that allows what its inner constraint allows (or
// everything) and completes once the generated bytes contain a stop string.
// The engine owns (and destroys) the constraint; the match is reported through
// a shared slot.
using StopMatch = std::shared_ptr<std::optional<std::string>>;

class StopStrings : public TokenConstraint {
 public:
  StopStrings(std::unique_ptr<TokenConstraint> inner, std::vector<std::string> stops,
              std::shared_ptr<const constrain::TokenBytes> vocab, StopMatch matched)
      : inner_(std::move(inner)), stops_(std::move(stops)), vocab_(std::move(vocab)), matched_(std::move(matched)) {
    for (const auto& s : stops_) longest_ = std::max(longest_, s.size());
  }
  void AllowedNext(std::vector<uint8_t>& allowed) override {
    if (inner_) {
      inner_->AllowedNext(allowed);
    } else {
      std::fill(allowed.begin(), allowed.end(), 1);
    }
  }
  void Accept(int32_t token) override {
    if (inner_) inner_->Accept(token);
    if (token < 0 || static_cast<size_t>(token) >= vocab_->vocab_size()) return;
    size_t from = tail_.size() >= longest_ ? tail_.size() - longest_ + 1 : 0;
    tail_ += vocab_->bytes(token);
    for (const auto& s : stops_) {
      if (tail_.find(s, from) != std::string::npos) {
        *matched_ = s;
        break;
      }
    }
    if (tail_.size() > 4 * longest_ + 256) tail_.erase(0, tail_.size() - longest_);
  }
  bool Complete() const override { return matched_->has_value() || (inner_ && inner_->Complete()); }

 private:
  std::unique_ptr<TokenConstraint> inner_;
  std::vector<std::string> stops_;
  std::shared_ptr<const constrain::TokenBytes> vocab_;
  size_t longest_ = 0;
  std::string tail_;
  StopMatch matched_;
};

// Truncates `text` before the first occurrence of any of `stops`.
void TrimAtStop(std::string& text, const std::vector<std::string>& stops) {
  size_t cut = std::string::npos;
  for (const auto& s : stops) cut = std::min(cut, text.find(s));
  if (cut != std::string::npos) text.resize(cut);
}

const char* FinishKind(Finish f) {
  switch (f) {
    case Finish::kEos: return "eos";
    case Finish::kLength: return "length";
    case Finish::kStopToken: return "stop_token";
    case Finish::kConstraintComplete: return "constraint_complete";
    case Finish::kCancelled: return "cancelled";
  }
  return "unknown";
}

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

// ---------------------------------------------------------------------------

PolicyService::PolicyService(std::shared_ptr<Engine> engine, std::shared_ptr<const v4::Tokenizer> tokenizer,
                             ServiceOptions options)
    : engine_(std::move(engine)), tokenizer_(std::move(tokenizer)), options_(std::move(options)) {
  vocab_ = constrain::TokenBytes::Build(*tokenizer_);
}

void PolicyService::Record(const std::string& endpoint, int status, double seconds) {
  std::lock_guard lock(metrics_mu_);
  ++requests_[{endpoint, status}];
  auto& counts = latency_counts_[endpoint];
  if (counts.empty()) counts.assign(latency_buckets_.size() + 1, 0);
  size_t b = 0;
  while (b < latency_buckets_.size() && seconds > latency_buckets_[b]) ++b;
  ++counts[b];
  latency_sum_[endpoint] += seconds;
}

void PolicyService::CountRejected(const std::string& endpoint, int status) { Record(endpoint, status, 0); }

HttpReply PolicyService::Handle(const std::string& method, const std::string& target, const std::string& body) {
  return HandleFrom(HttpPeer{"127.0.0.1", true}, method, target, body);
}

HttpReply PolicyService::HandleFrom(const HttpPeer& peer, const std::string& method, const std::string& target,
                                    const std::string& body) {
  auto start = Clock::now();
  std::string path = target.substr(0, target.find('?'));
  HttpReply reply;
  std::string endpoint = path;
  auto post = [&](HttpReply (PolicyService::*fn)(const json&)) {
    if (method != "POST") return ErrorReply(405, fmt::format("{} takes POST, not {}", path, method));
    json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) return ErrorReply(400, "body: not valid JSON", "body");
    if (!parsed.is_object()) return ErrorReply(400, "body: must be a JSON object", "body");
    return (this->*fn)(parsed);
  };
  auto get = [&](HttpReply (PolicyService::*fn)()) {
    if (method != "GET" && method != "HEAD") return ErrorReply(405, fmt::format("{} takes GET, not {}", path, method));
    return (this->*fn)();
  };
  if (path == "/generate") {
    reply = post(&PolicyService::Generate);
  } else if (path == "/v1/completions") {
    reply = post(&PolicyService::Completions);
  } else if (path == "/v1/chat/completions") {
    if (method != "POST") {
      reply = ErrorReply(405, fmt::format("{} takes POST, not {}", path, method));
    } else {
      // Parsed twice: the prompt embeds tool schemas with their keys in the order written.
      json parsed = json::parse(body, nullptr, false);
      ojson ordered = ojson::parse(body, nullptr, false);
      if (parsed.is_discarded() || ordered.is_discarded()) {
        reply = ErrorReply(400, "body: not valid JSON", "body");
      } else if (!parsed.is_object()) {
        reply = ErrorReply(400, "body: must be a JSON object", "body");
      } else {
        reply = ChatCompletions(parsed, ordered);
      }
    }
  } else if (path == "/update_weights_from_disk") {
    reply = method == "POST" ? UpdateWeightsFromDisk(peer, body)
                             : ErrorReply(405, fmt::format("{} takes POST, not {}", path, method));
  } else if (path == "/model_info" || path == "/get_model_info") {
    reply = get(&PolicyService::ModelInfo);
  } else if (path == "/weight_version" || path == "/get_weight_version") {
    reply = get(&PolicyService::WeightVersion);
  } else if (path == "/health") {
    reply = get(&PolicyService::Health);
  } else if (path == "/metrics") {
    reply = get(&PolicyService::Metrics);
  } else if (path == "/v1/models") {
    reply = get(&PolicyService::Models);
  } else {
    endpoint = "other";
    reply = ErrorReply(404, fmt::format("no endpoint {}; see /health, /metrics, /generate, /v1/completions, "
                                        "/v1/chat/completions, /v1/models, /model_info, /update_weights_from_disk",
                                        path));
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Record(endpoint, reply.status, seconds);
  return reply;
}

Result<GenerateOutput> PolicyService::Run(GenerateJob job) {
  const bool constrained = job.constraint != nullptr;
  int now = ++inflight_;
  int seen = max_inflight_.load();
  while (now > seen && !max_inflight_.compare_exchange_weak(seen, now)) {
  }
  {
    std::lock_guard lock(metrics_mu_);
    ++concurrency_hist_[now];
    ++generate_calls_;
    constrained_ += constrained;
  }
  auto out = engine_->Generate(std::move(job));
  --inflight_;
  if (out.ok()) {
    std::lock_guard lock(metrics_mu_);
    prompt_tokens_ += out.value().prompt_tokens;
    cached_tokens_ += out.value().cached_prompt_tokens;
    completion_tokens_ += out.value().tokens.size();
    ++finish_counts_[FinishKind(out.value().finish)];
  }
  return out;
}

Result<std::shared_ptr<constrain::ToolGrammar>> PolicyService::GrammarFor(const json& tools,
                                                                          const constrain::GrammarOptions& o) {
  std::string key = fmt::format("{}|{}|{}|{}|{}", tools.dump(), o.thinking, o.require_tool_call,
                                json(o.only_tools).dump(), o.max_tool_calls);
  {
    std::lock_guard lock(grammar_mu_);
    if (auto it = grammars_.find(key); it != grammars_.end()) return it->second;
  }
  PADDOCK_ASSIGN_OR_RETURN(auto g, constrain::ToolGrammar::Build(tools, vocab_, o));
  std::lock_guard lock(grammar_mu_);
  if (grammars_.size() >= 64) grammars_.clear();  // bounded: a new tool set rebuilds its masks
  grammars_[key] = g;
  return g;
}

// --- tool requests (/v1/chat/completions, and /generate's Paddock extension) --

namespace {

Result<ToolRequest> ReadToolRequest(const json& body) {
  ToolRequest r;
  if (auto t = body.find("tools"); t != body.end() && !t->is_null()) {
    if (!t->is_array()) return Bad("tools", "must be an array");
    for (size_t i = 0; i < t->size(); ++i)
      if (!(*t)[i].is_object()) return Bad("tools", fmt::format("element {} is not a tool object", i));
    r.tools = *t;
  }
  // tool_choice: "none" | "auto" | "required" | {"type":"function","function":{"name":…}}
  if (auto tc = body.find("tool_choice"); tc != body.end() && !tc->is_null()) {
    const char* why = "must be \"none\", \"auto\", \"required\" or a function object";
    if (tc->is_string()) {
      r.choice = tc->get<std::string>();
      if (r.choice != "none" && r.choice != "auto" && r.choice != "required") return Bad("tool_choice", why);
    } else if (tc->is_object() && tc->contains("function") && (*tc)["function"].is_object() &&
               (*tc)["function"].contains("name") && (*tc)["function"]["name"].is_string()) {
      r.choice = "required";
      r.only.push_back((*tc)["function"]["name"].get<std::string>());
    } else {
      return Bad("tool_choice", why);
    }
  }
  // Thinking: "thinking": bool, or chat_template_kwargs {"thinking": bool} / {"thinking_mode": "thinking"}.
  PADDOCK_ASSIGN_OR_RETURN(auto th, ReadBool(body, "thinking", ""));
  if (th) r.thinking = *th;
  if (auto kw = body.find("chat_template_kwargs"); kw != body.end() && kw->is_object()) {
    PADDOCK_ASSIGN_OR_RETURN(auto t2, ReadBool(*kw, "thinking", "chat_template_kwargs."));
    if (t2) r.thinking = *t2;
    if (auto m = kw->find("thinking_mode"); m != kw->end() && m->is_string()) r.thinking = *m == "thinking";
  }
  PADDOCK_ASSIGN_OR_RETURN(auto use, ReadBool(body, "tool_constraint", ""));
  r.constrain = use.value_or(true);
  return r;
}

// A grammar that does not build names the field at fault: tool_choice (a
// function that is not among the tools), else tools.
HttpReply ToolErrorReply(const Status& st) {
  if (st.code() != Code::kInvalidArgument) return ErrorReply(st);
  return ErrorReply(400, st.message(), st.message().rfind("tool_choice", 0) == 0 ? "tool_choice" : "tools");
}

}  // namespace

Result<std::unique_ptr<TokenConstraint>> PolicyService::ToolConstraint(const ToolRequest& r, int max_new_tokens) {
  if (r.tools.empty() || !r.constrain) return std::unique_ptr<TokenConstraint>();
  constrain::GrammarOptions o = options_.grammar;
  o.thinking = r.thinking;
  o.require_tool_call = r.choice == "required";
  o.only_tools = r.only;
  PADDOCK_ASSIGN_OR_RETURN(auto g, GrammarFor(r.choice == "none" ? json::array() : r.tools, o));
  return g->NewConstraint(max_new_tokens);
}

// --- /generate (SGLang) ---------------------------------------------------

HttpReply PolicyService::Generate(const json& body) {
  auto started = Clock::now();
  if (auto s = body.find("stream"); s != body.end() && s->is_boolean() && s->get<bool>())
    return ErrorReply(400, "stream: streaming is not supported; send stream=false", "stream");
  std::vector<int32_t> prompt;
  auto ids = body.find("input_ids");
  auto text = body.find("text");
  bool have_ids = ids != body.end() && !ids->is_null();
  bool have_text = text != body.end() && !text->is_null();
  if (have_ids == have_text)
    return ErrorReply(400, "input_ids, text: give exactly one of them", have_ids ? "text" : "input_ids");
  if (have_ids) {
    auto r = ReadIds(*ids, "input_ids", engine_->vocab_size());
    if (!r.ok()) return ErrorReply(r.status());
    prompt = std::move(r.value());
  } else {
    if (!text->is_string()) return ErrorReply(400, "text: must be a string (batched requests are not supported)", "text");
    for (uint32_t id : tokenizer_->Encode(text->get<std::string>())) prompt.push_back(static_cast<int32_t>(id));
  }
  if (prompt.empty()) return ErrorReply(400, have_ids ? "input_ids: must not be empty" : "text: must not be empty",
                                        have_ids ? "input_ids" : "text");
  Knobs k;
  json sp = body.contains("sampling_params") && !body["sampling_params"].is_null() ? body["sampling_params"]
                                                                                   : json::object();
  if (Status st = ReadSampling(sp, "sampling_params.", "max_new_tokens", 128, &k, engine_->vocab_size()); !st.ok())
    return ErrorReply(st);
  auto rl = ReadBool(body, "return_logprob", "");
  if (!rl.ok()) return ErrorReply(rl.status());
  bool return_logprob = rl.value().value_or(false);
  if (prompt.size() + static_cast<size_t>(k.sampling.max_new_tokens) > engine_->max_context())
    return ErrorReply(400,
                      fmt::format("sampling_params.max_new_tokens: prompt ({} tokens) + max_new_tokens ({}) exceeds "
                                  "the context of {} tokens",
                                  prompt.size(), k.sampling.max_new_tokens, engine_->max_context()),
                      "sampling_params.max_new_tokens");

  // Paddock extension: "tools" (+ "tool_choice", "thinking") constrain the
  // output to a well-formed V4 message as on /v1/chat/completions. The prompt
  // is the caller's: it must already carry the tools (SGLang knows none of this).
  auto treq = ReadToolRequest(body);
  if (!treq.ok()) return ErrorReply(treq.status());
  GenerateJob job;
  job.prompt = prompt;
  job.sampling = k.sampling;
  auto tc = ToolConstraint(treq.value(), k.sampling.max_new_tokens);
  if (!tc.ok()) return ToolErrorReply(tc.status());
  job.constraint = std::move(tc.value());
  const bool constrained = job.constraint != nullptr;
  auto stop_match = std::make_shared<std::optional<std::string>>();
  if (!k.stop.empty())
    job.constraint = std::make_unique<StopStrings>(std::move(job.constraint), k.stop, vocab_, stop_match);
  auto run = Run(std::move(job));
  if (!run.ok()) return ErrorReply(run.status());
  const GenerateOutput& out = run.value();

  std::vector<uint32_t> shown;
  for (int32_t id : out.tokens)
    if (!k.skip_special || static_cast<size_t>(id) >= vocab_->vocab_size() || !vocab_->special(id))
      shown.push_back(static_cast<uint32_t>(id));
  std::string out_text = tokenizer_->Decode(shown);
  json finish;
  if (*stop_match) {
    TrimAtStop(out_text, {**stop_match});
    finish = {{"type", "stop"}, {"matched", **stop_match}};
  } else {
    switch (out.finish) {
      case Finish::kLength: finish = {{"type", "length"}, {"length", out.tokens.size()}}; break;
      case Finish::kCancelled: finish = {{"type", "abort"}, {"message", "generation cancelled"}}; break;
      case Finish::kStopToken:
        finish = {{"type", "stop"},
                  {"matched", out.matched_stop_token ? json(*out.matched_stop_token)
                                                     : (out.tokens.empty() ? json(nullptr) : json(out.tokens.back()))}};
        break;
      default: finish = {{"type", "stop"}, {"matched", engine_->eos_token_id()}}; break;
    }
  }
  json meta = {{"id", fmt::format("gen-{}", next_id_++)},
               {"finish_reason", finish},
               {"prompt_tokens", out.prompt_tokens},
               {"completion_tokens", out.tokens.size()},
               {"cached_tokens", out.cached_prompt_tokens},
               {"e2e_latency", std::chrono::duration<double>(Clock::now() - started).count()},
               // SGLang's field; here the version that produced these tokens.
               {"weight_version", out.weight_version.empty() ? engine_->weight_version() : out.weight_version}};
  if (constrained) meta["paddock_constrained"] = true;
  if (return_logprob) {
    json lps = json::array();
    for (size_t i = 0; i < out.tokens.size(); ++i)
      lps.push_back({i < out.logprobs.size() ? json(out.logprobs[i]) : json(nullptr), out.tokens[i], nullptr});
    meta["output_token_logprobs"] = std::move(lps);
    meta["input_token_logprobs"] = json::array();
  }
  return JsonReply({{"text", out_text}, {"output_ids", out.tokens}, {"meta_info", std::move(meta)}});
}

// --- /v1/completions --------------------------------------------------------

namespace {

Status ReadOpenAiCommon(const json& body) {
  if (auto s = body.find("stream"); s != body.end() && s->is_boolean() && s->get<bool>())
    return Bad("stream", "streaming is not supported; send stream=false");
  PADDOCK_ASSIGN_OR_RETURN(auto n, ReadInt(body, "n", "", 1, 1));
  (void)n;
  return Status::Ok();
}

// vLLM's stop_reason: the matched stop token id or stop string; null for EOS.
json StopReason(const GenerateOutput& out, const std::optional<std::string>& matched_string) {
  if (matched_string) return *matched_string;
  if (out.finish == Finish::kStopToken && out.matched_stop_token) return *out.matched_stop_token;
  return nullptr;
}

}  // namespace

HttpReply PolicyService::Completions(const json& body) {
  if (Status st = ReadOpenAiCommon(body); !st.ok()) return ErrorReply(st);
  if (auto e = body.find("echo"); e != body.end() && e->is_boolean() && e->get<bool>())
    return ErrorReply(400, "echo: echoing the prompt is not supported", "echo");
  auto p = body.find("prompt");
  if (p == body.end() || p->is_null()) return ErrorReply(400, "prompt: missing", "prompt");
  std::vector<int32_t> prompt;
  if (p->is_string()) {
    for (uint32_t id : tokenizer_->Encode(p->get<std::string>())) prompt.push_back(static_cast<int32_t>(id));
  } else if (p->is_array()) {
    if (!p->empty() && (*p)[0].is_string())
      return ErrorReply(400, "prompt: a list of prompts is not supported; send one request each", "prompt");
    auto r = ReadIds(*p, "prompt", engine_->vocab_size());
    if (!r.ok()) return ErrorReply(r.status());
    prompt = std::move(r.value());
  } else {
    return ErrorReply(400, "prompt: must be a string or an array of token ids", "prompt");
  }
  if (prompt.empty()) return ErrorReply(400, "prompt: must not be empty", "prompt");
  Knobs k;
  if (Status st = ReadSampling(body, "", "max_tokens", options_.default_max_tokens, &k, engine_->vocab_size());
      !st.ok())
    return ErrorReply(st);
  auto lp = ReadInt(body, "logprobs", "", 0, 20);
  if (!lp.ok()) return ErrorReply(lp.status());
  auto as_ids = ReadBool(body, "return_tokens_as_token_ids", "");
  if (!as_ids.ok()) return ErrorReply(as_ids.status());
  auto ret_ids = ReadBool(body, "return_token_ids", "");
  if (!ret_ids.ok()) return ErrorReply(ret_ids.status());
  if (prompt.size() + static_cast<size_t>(k.sampling.max_new_tokens) > engine_->max_context())
    return ErrorReply(400,
                      fmt::format("max_tokens: prompt ({} tokens) + max_tokens ({}) exceeds the context of {} tokens",
                                  prompt.size(), k.sampling.max_new_tokens, engine_->max_context()),
                      "max_tokens");
  GenerateJob job;
  job.prompt = prompt;
  job.sampling = k.sampling;
  auto stop_match = std::make_shared<std::optional<std::string>>();
  if (!k.stop.empty()) job.constraint = std::make_unique<StopStrings>(nullptr, k.stop, vocab_, stop_match);
  auto run = Run(std::move(job));
  if (!run.ok()) return ErrorReply(run.status());
  const GenerateOutput& out = run.value();
  std::optional<std::string> matched = *stop_match;

  std::vector<uint32_t> shown;
  for (int32_t id : out.tokens)
    if (!k.skip_special || static_cast<size_t>(id) >= vocab_->vocab_size() || !vocab_->special(id))
      shown.push_back(static_cast<uint32_t>(id));
  std::string text = tokenizer_->Decode(shown);
  if (matched) TrimAtStop(text, {*matched});
  json choice = {{"index", 0},
                 {"text", text},
                 {"finish_reason", out.finish == Finish::kLength ? "length" : "stop"},
                 {"stop_reason", StopReason(out, matched)},
                 {"logprobs", nullptr}};
  if (lp.value()) {
    json tokens = json::array(), token_lps = json::array(), offsets = json::array();
    size_t offset = 0;
    for (size_t i = 0; i < out.tokens.size(); ++i) {
      int32_t id = out.tokens[i];
      std::string piece = static_cast<size_t>(id) < vocab_->vocab_size() ? vocab_->bytes(id) : "";
      tokens.push_back(as_ids.value().value_or(false) ? fmt::format("token_id:{}", id) : piece);
      token_lps.push_back(i < out.logprobs.size() ? json(out.logprobs[i]) : json(nullptr));
      offsets.push_back(offset);
      offset += piece.size();
    }
    choice["logprobs"] = {{"tokens", tokens}, {"token_logprobs", token_lps}, {"text_offset", offsets},
                          {"top_logprobs", nullptr}};
  }
  if (ret_ids.value().value_or(false)) choice["token_ids"] = out.tokens;
  return JsonReply({{"id", fmt::format("cmpl-{}", next_id_++)},
                    {"object", "text_completion"},
                    {"created", UnixNow()},
                    {"model", options_.model_name},
                    {"choices", json::array({choice})},
                    {"usage",
                     {{"prompt_tokens", out.prompt_tokens},
                      {"completion_tokens", out.tokens.size()},
                      {"total_tokens", out.prompt_tokens + out.tokens.size()},
                      {"prompt_tokens_details", {{"cached_tokens", out.cached_prompt_tokens}}}}}});
}

// --- /v1/chat/completions ---------------------------------------------------

HttpReply PolicyService::ChatCompletions(const json& body, const ojson& ob) {
  if (Status st = ReadOpenAiCommon(body); !st.ok()) return ErrorReply(st);
  auto msgs = ob.find("messages");
  if (msgs == ob.end() || !msgs->is_array() || msgs->empty())
    return ErrorReply(400, "messages: must be a non-empty array", "messages");
  auto treq = ReadToolRequest(body);
  if (!treq.ok()) return ErrorReply(treq.status());
  const ToolRequest& tr = treq.value();
  const bool thinking = tr.thinking;
  ojson tools = ojson::array();
  if (!tr.tools.empty()) tools = ob["tools"];  // as written: the prompt embeds the schemas in key order
  auto want_lp = ReadBool(body, "logprobs", "");
  if (!want_lp.ok()) return ErrorReply(want_lp.status());

  Knobs k;
  const char* max_key = body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (Status st = ReadSampling(body, "", max_key, options_.default_max_tokens, &k, engine_->vocab_size()); !st.ok())
    return ErrorReply(st);

  // The prompt, through the V4 encoder: OpenAI's top-level tools join the
  // first system message (one is added when there is none).
  ojson messages = *msgs;
  if (!tools.empty()) {
    size_t sys = messages.size();
    for (size_t i = 0; i < messages.size(); ++i)
      if (messages[i].is_object() && messages[i].value("role", "") == "system") {
        sys = i;
        break;
      }
    if (sys == messages.size()) {
      messages.insert(messages.begin(), ojson{{"role", "system"}, {"content", ""}});
      sys = 0;
    }
    messages[sys]["tools"] = tools;
  }
  ojson request = {{"messages", messages}, {"thinking_mode", thinking ? "thinking" : "chat"}};
  if (auto re = ob.find("reasoning_effort"); re != ob.end()) request["reasoning_effort"] = *re;
  auto prompt_text = v4::EncodePrompt(request);
  if (!prompt_text.ok()) {
    Status st = prompt_text.status();
    if (st.code() == Code::kInvalidArgument) return ErrorReply(400, st.message(), "messages");
    return ErrorReply(st);
  }
  std::vector<int32_t> prompt;
  for (uint32_t id : tokenizer_->Encode(prompt_text.value())) prompt.push_back(static_cast<int32_t>(id));
  if (prompt.size() + static_cast<size_t>(k.sampling.max_new_tokens) > engine_->max_context())
    return ErrorReply(400,
                      fmt::format("{}: prompt ({} tokens) + {} ({}) exceeds the context of {} tokens", max_key,
                                  prompt.size(), max_key, k.sampling.max_new_tokens, engine_->max_context()),
                      max_key);

  const json& tools_json = tr.tools;
  // The completion reasons first in thinking mode, except the answer to a
  // task message (a user message with `task` last), which has no thinking block.
  ToolRequest turn = tr;
  turn.thinking = v4::NextTurnHasReasoning(request);
  GenerateJob job;
  job.prompt = prompt;
  job.sampling = k.sampling;
  auto tc = ToolConstraint(turn, k.sampling.max_new_tokens);
  if (!tc.ok()) return ToolErrorReply(tc.status());
  job.constraint = std::move(tc.value());
  const bool constrained = job.constraint != nullptr;
  auto stop_match = std::make_shared<std::optional<std::string>>();
  if (!k.stop.empty())
    job.constraint = std::make_unique<StopStrings>(std::move(job.constraint), k.stop, vocab_, stop_match);
  auto run = Run(std::move(job));
  if (!run.ok()) return ErrorReply(run.status());
  const GenerateOutput& out = run.value();
  std::optional<std::string> matched = *stop_match;

  std::vector<uint32_t> ids(out.tokens.begin(), out.tokens.end());
  std::string completion = tokenizer_->Decode(ids);
  if (matched) TrimAtStop(completion, {*matched});

  // Strict decode first (with the schemas); a completion that is cut off or
  // unconstrained and malformed is read tolerantly and the error reported.
  std::string content, reasoning;
  json calls = json::array();
  json decode_error = nullptr;
  auto strict = v4::DecodeCompletion(completion, turn.thinking, tools.empty() ? nullptr : &tools_json);
  if (std::holds_alternative<json>(strict)) {
    const json& m = std::get<json>(strict);
    content = m["content"];
    reasoning = m["reasoning_content"];
    calls = m["tool_calls"];
  } else {
    const auto& e = std::get<v4::DecodeError>(strict);
    decode_error = {{"kind", v4::DecodeErrorKindName(e.kind)}, {"message", e.message}, {"offset", e.offset}};
    v4::DsmlParserOptions po;
    po.thinking_mode = turn.thinking;
    po.mode = v4::DsmlMode::kTolerant;
    v4::DsmlParser parser(po);
    parser.Feed(completion);
    parser.Finish();
    for (auto& ev : parser.TakeEvents()) {
      if (ev.kind == v4::DsmlEvent::Kind::kReasoning) reasoning += ev.text;
      if (ev.kind == v4::DsmlEvent::Kind::kContent) content += ev.text;
      if (ev.kind == v4::DsmlEvent::Kind::kToolCallEnd)
        calls.push_back({{"type", "function"}, {"function", {{"name", ev.text}, {"arguments", ev.value}}}});
    }
  }
  uint64_t id = next_id_++;
  for (size_t i = 0; i < calls.size(); ++i) calls[i]["id"] = fmt::format("call_{}_{}", id, i);
  json message = {{"role", "assistant"}, {"content", content.empty() && !calls.empty() ? json(nullptr) : json(content)}};
  if (thinking) message["reasoning_content"] = reasoning;
  if (!calls.empty()) message["tool_calls"] = calls;
  std::string finish = out.finish == Finish::kLength ? "length" : (!calls.empty() && !matched ? "tool_calls" : "stop");
  json ch = {{"index", 0}, {"message", message}, {"finish_reason", finish}, {"stop_reason", StopReason(out, matched)},
             {"logprobs", nullptr}};
  if (want_lp.value().value_or(false)) {
    json content_lps = json::array();
    for (size_t i = 0; i < out.tokens.size(); ++i) {
      int32_t tid = out.tokens[i];
      std::string piece = static_cast<size_t>(tid) < vocab_->vocab_size() ? vocab_->bytes(tid) : "";
      json bytes = json::array();
      for (unsigned char c : piece) bytes.push_back(c);
      content_lps.push_back({{"token", piece},
                             {"logprob", i < out.logprobs.size() ? json(out.logprobs[i]) : json(nullptr)},
                             {"bytes", bytes},
                             {"top_logprobs", json::array()}});
    }
    ch["logprobs"] = {{"content", content_lps}};
  }
  json reply = {{"id", fmt::format("chatcmpl-{}", id)},
                {"object", "chat.completion"},
                {"created", UnixNow()},
                {"model", options_.model_name},
                {"choices", json::array({ch})},
                {"usage",
                 {{"prompt_tokens", out.prompt_tokens},
                  {"completion_tokens", out.tokens.size()},
                  {"total_tokens", out.prompt_tokens + out.tokens.size()},
                  {"prompt_tokens_details", {{"cached_tokens", out.cached_prompt_tokens}}}}},
                {"paddock",
                 {{"constrained", constrained},
                  {"decode_error", decode_error},
                  {"output_ids", out.tokens},
                  {"weight_version", out.weight_version.empty() ? engine_->weight_version() : out.weight_version}}}};
  return JsonReply(reply);
}

// --- /health, /v1/models, /metrics ------------------------------------------

HttpReply PolicyService::Health() {
  return JsonReply({{"status", "ok"},
                    {"model", options_.model_name},
                    {"engine", engine_->describe()},
                    {"weight_version", engine_->weight_version()}});
}

HttpReply PolicyService::Models() {
  return JsonReply({{"object", "list"},
                    {"data", json::array({{{"id", options_.model_name},
                                           {"object", "model"},
                                           {"owned_by", "paddock"},
                                           {"max_model_len", engine_->max_context()}}})}});
}

HttpReply PolicyService::Metrics() {
  std::string m;
  auto esc = [](const std::string& s) {
    std::string o;
    for (char c : s) {
      if (c == '\\' || c == '"') o += '\\';
      if (c == '\n') {
        o += "\\n";
        continue;
      }
      o += c;
    }
    return o;
  };
  {
    std::lock_guard lock(metrics_mu_);
    m += "# HELP paddock_policy_requests_total HTTP requests answered, by endpoint and status.\n"
         "# TYPE paddock_policy_requests_total counter\n";
    for (const auto& [k, v] : requests_)
      m += fmt::format("paddock_policy_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", esc(k.first), k.second, v);
    m += "# HELP paddock_policy_request_duration_seconds Time from request to response, by endpoint.\n"
         "# TYPE paddock_policy_request_duration_seconds histogram\n";
    for (const auto& [ep, counts] : latency_counts_) {
      uint64_t cum = 0;
      for (size_t b = 0; b < counts.size(); ++b) {
        cum += counts[b];
        std::string le = b < latency_buckets_.size() ? fmt::format("{}", latency_buckets_[b]) : "+Inf";
        m += fmt::format("paddock_policy_request_duration_seconds_bucket{{endpoint=\"{}\",le=\"{}\"}} {}\n", esc(ep),
                         le, cum);
      }
      m += fmt::format("paddock_policy_request_duration_seconds_sum{{endpoint=\"{}\"}} {}\n", esc(ep),
                       latency_sum_[ep]);
      m += fmt::format("paddock_policy_request_duration_seconds_count{{endpoint=\"{}\"}} {}\n", esc(ep), cum);
    }
    m += fmt::format(
        "# HELP paddock_policy_prompt_tokens_total Prompt tokens of finished generations.\n"
        "# TYPE paddock_policy_prompt_tokens_total counter\npaddock_policy_prompt_tokens_total {}\n"
        "# HELP paddock_policy_cached_prompt_tokens_total Prompt tokens served from the prefix cache.\n"
        "# TYPE paddock_policy_cached_prompt_tokens_total counter\npaddock_policy_cached_prompt_tokens_total {}\n"
        "# HELP paddock_policy_completion_tokens_total Generated tokens.\n"
        "# TYPE paddock_policy_completion_tokens_total counter\npaddock_policy_completion_tokens_total {}\n"
        "# HELP paddock_policy_generate_calls_total Engine generations started.\n"
        "# TYPE paddock_policy_generate_calls_total counter\npaddock_policy_generate_calls_total {}\n"
        "# HELP paddock_policy_constrained_generations_total Generations under the tool constraint.\n"
        "# TYPE paddock_policy_constrained_generations_total counter\npaddock_policy_constrained_generations_total {}\n",
        prompt_tokens_, cached_tokens_, completion_tokens_, generate_calls_, constrained_);
    m += "# HELP paddock_policy_generate_concurrency_total Generations by how many were in flight (itself "
         "included) when it started.\n# TYPE paddock_policy_generate_concurrency_total counter\n";
    for (const auto& [n, v] : concurrency_hist_)
      m += fmt::format("paddock_policy_generate_concurrency_total{{inflight=\"{}\"}} {}\n", n, v);
    m += "# HELP paddock_policy_finish_total Finished generations by how they ended.\n"
         "# TYPE paddock_policy_finish_total counter\n";
    for (const auto& [k, v] : finish_counts_)
      m += fmt::format("paddock_policy_finish_total{{reason=\"{}\"}} {}\n", k, v);
    m += fmt::format(
        "# HELP paddock_policy_weight_updates_total /update_weights_from_disk calls by result.\n"
        "# TYPE paddock_policy_weight_updates_total counter\n"
        "paddock_policy_weight_updates_total{{result=\"ok\"}} {}\n"
        "paddock_policy_weight_updates_total{{result=\"failed\"}} {}\n"
        "# HELP paddock_policy_weight_update_last_seconds Duration of the last successful weight update.\n"
        "# TYPE paddock_policy_weight_update_last_seconds gauge\npaddock_policy_weight_update_last_seconds {}\n",
        weight_updates_ok_, weight_updates_failed_, last_weight_update_seconds_);
  }
  m += fmt::format(
      "# HELP paddock_policy_generate_inflight Generations running now.\n"
      "# TYPE paddock_policy_generate_inflight gauge\npaddock_policy_generate_inflight {}\n"
      "# HELP paddock_policy_generate_max_concurrent Most generations seen in flight at once.\n"
      "# TYPE paddock_policy_generate_max_concurrent gauge\npaddock_policy_generate_max_concurrent {}\n",
      inflight_.load(), max_inflight_.load());
  if (options_.engine_metrics) {
    for (const auto& [name, value] : options_.engine_metrics()) {
      m += fmt::format("# TYPE paddock_policy_engine_{} gauge\npaddock_policy_engine_{} {}\n", name, name, value);
    }
  }
  return {200, "text/plain; version=0.0.4", m};
}

}  // namespace paddock::policy::engine::server
