// paddock-policy: the embedded V4 engine served over HTTP like SGLang and the
// OpenAI-compatible API (docs/paddock-policy.md), or its KV/FLOPs report.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "policy/engine/embedded_engine.h"
#include "policy/engine/kv_report.h"
#include "policy/engine/server/http_server.h"
#include "policy/engine/server/policy_service.h"
#include "policy/engine/weights.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace {

using namespace paddock;
using namespace paddock::policy::engine;

constexpr const char* kUsage = R"(usage:
  paddock-policy [--listen HOST:PORT] [--config tiny|small] [--weights FILE] [--seed N]
                 [--weight-version V] [--threads N] [--tokenizer FILE] [--model-name NAME]
                 [--max-body-bytes N] [--allow-remote-weight-updates] [--exact-kv]
  paddock-policy --save-weights FILE [--config tiny|small] [--seed N]
  paddock-policy --report-kv --config NAME --context N [--json]

Serves the embedded V4 policy engine over HTTP:
  POST /generate              SGLang's request/response (input_ids or text, sampling_params,
                              return_logprob)
  POST /v1/completions        OpenAI completions (prompt: text or token ids)
  POST /v1/chat/completions   OpenAI chat through the V4 codec; with tools, the output is
                              constrained to well-formed tool calls (tool_constraint: false
                              turns that off)
  POST /update_weights_from_disk  SGLang's weight update: {"model_path": FILE, "weight_version": V};
                              new requests run on the new weights, running ones finish on theirs
  GET  /model_info, /weight_version (also /get_model_info, /get_weight_version)
  GET  /health, /metrics (Prometheus text), /v1/models

options:
  --listen HOST:PORT   address to serve on (default 127.0.0.1:30000; port 0 picks a free one
                       and prints it)
  --config NAME        model shape: tiny (default) or small
  --weights FILE       safetensors weights (default: deterministic weights from --seed)
  --seed N             seed of the generated weights (default 1)
  --weight-version V   weight_version reported until the first update (default: "seed-N", or
                       "FILE@DIGEST" for --weights: the file name and 8 hex digits of its contents)
  --allow-remote-weight-updates
                       accept /update_weights_from_disk from non-loopback peers (the server has
                       no authentication: anyone who reaches it can then make it load any file
                       it can read)
  --save-weights FILE  write the seeded weights of --config and --seed to FILE (safetensors,
                       loadable with --weights or /update_weights_from_disk) and exit; two
                       seeds give two weight files that generate different tokens
  --threads N          compute threads (default: all cores)
  --exact-kv           keep KV entries and indexer keys in float32 instead of emulating their
                       FP8/BF16/int4 storage (what a float32 trainer computes; used by the
                       twin's parity test, examples/train/parity.py)
  --tokenizer FILE     DeepSeek tokenizer.json (default $PADDOCK_TOKENIZER or
                       /usr/local/share/paddock/deepseek-v3-tokenizer.json)
  --model-name NAME    "model" in OpenAI responses (default paddock-policy)
  --max-body-bytes N   request body cap; larger bodies get 413 (default 16777216)
  --report-kv          print KV-cache bytes and attention FLOPs per token at --context for
                       --config against a GQA-8 BF16 baseline, then exit (--json: as JSON)
  --help               this text

docs/paddock-policy.md describes every field.
)";

int Fail(const std::string& msg) {
  std::fprintf(stderr, "paddock-policy: %s\n", msg.c_str());
  return 2;
}

bool ParseU64(const std::string& s, uint64_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || *end || s[0] == '-') return false;
  *out = v;
  return true;
}

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:30000", config = "tiny", weights, tokenizer_path, model_name = "paddock-policy";
  std::string weight_version, save_weights;
  uint64_t seed = 1, threads = 0, context = 0, max_body = 16u << 20;
  bool report = false, json = false, have_context = false, remote_updates = false, exact_kv = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    auto number = [&](uint64_t* out) {
      std::string v;
      if (!value(&v)) return false;
      if (!ParseU64(v, out)) {
        std::fprintf(stderr, "paddock-policy: %s: '%s' is not a non-negative integer\n", a.c_str(), v.c_str());
        std::exit(2);
      }
      return true;
    };
    bool ok = true;
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--listen") {
      ok = value(&listen);
    } else if (a == "--config") {
      ok = value(&config);
    } else if (a == "--weights") {
      ok = value(&weights);
    } else if (a == "--weight-version") {
      ok = value(&weight_version);
    } else if (a == "--save-weights") {
      ok = value(&save_weights);
    } else if (a == "--exact-kv") {
      exact_kv = true;
    } else if (a == "--allow-remote-weight-updates") {
      remote_updates = true;
    } else if (a == "--tokenizer") {
      ok = value(&tokenizer_path);
    } else if (a == "--model-name") {
      ok = value(&model_name);
    } else if (a == "--seed") {
      ok = number(&seed);
    } else if (a == "--threads") {
      ok = number(&threads);
    } else if (a == "--max-body-bytes") {
      ok = number(&max_body);
    } else if (a == "--context") {
      ok = number(&context);
      have_context = true;
    } else if (a == "--report-kv") {
      report = true;
    } else if (a == "--json") {
      json = true;
    } else {
      return Fail(fmt::format("unknown argument '{}' (--help lists the options)", a));
    }
    if (!ok) return Fail(fmt::format("{} needs a value", a));
  }

  if (report) {
    if (!have_context) return Fail("--report-kv needs --context N (tokens)");
    auto text = RunKvReport(config, context, json);
    if (!text.ok()) return Fail(text.status().message());
    std::fputs(text.value().c_str(), stdout);
    return 0;
  }
  if (json || have_context) return Fail("--json and --context go with --report-kv");

  if (!save_weights.empty()) {
    if (!weights.empty()) return Fail("--save-weights writes seeded weights; it does not take --weights");
    auto cfg = ConfigByName(config);
    if (!cfg.ok()) return Fail(cfg.status().message());
    auto w = SeededWeights(cfg.value(), seed);
    if (!w.ok()) return Fail(w.status().message());
    if (Status st = SaveSafetensors(w.value(), save_weights); !st.ok()) return Fail(st.message());
    auto saved = LoadSafetensors(save_weights, cfg.value());  // its default weight_version, and a check
    if (!saved.ok()) return Fail(saved.status().message());
    std::printf("paddock-policy: wrote %s weights (seed %llu) to %s; weight_version %s\n", config.c_str(),
                static_cast<unsigned long long>(seed), save_weights.c_str(),
                DefaultWeightVersion(saved.value()).c_str());
    return 0;
  }
  if (weight_version.size() > 256) return Fail("--weight-version: at most 256 characters");

  policy::engine::server::HttpServerOptions http;
  if (Status st = policy::engine::server::ParseListen(listen, &http.host, &http.port); !st.ok())
    return Fail(st.message());
  http.max_body_bytes = max_body;

  auto tokenizer = v4::Tokenizer::Load(tokenizer_path.empty() ? v4::Tokenizer::DefaultPath() : tokenizer_path);
  if (!tokenizer.ok()) return Fail(fmt::format("tokenizer: {}", tokenizer.status().message()));

  EngineOptions eo;
  eo.config = config;
  eo.weights_path = weights;
  eo.weight_seed = seed;
  eo.weight_version = weight_version;
  eo.threads = static_cast<int>(threads);
  eo.exact_kv = exact_kv;
  auto engine = EmbeddedEngine::Create(eo);
  if (!engine.ok()) return Fail(engine.status().message());
  std::shared_ptr<EmbeddedEngine> shared_engine = std::move(engine.value());

  policy::engine::server::ServiceOptions so;
  so.model_name = model_name;
  so.allow_remote_weight_updates = remote_updates;
  std::weak_ptr<EmbeddedEngine> weak = shared_engine;
  so.engine_metrics = [weak]() {
    std::vector<std::pair<std::string, double>> m;
    auto e = weak.lock();
    if (!e) return m;
    EngineStats s = e->stats();
    m.push_back({"steps_total", static_cast<double>(s.steps)});
    m.push_back({"step_sequences_total", static_cast<double>(s.step_sequences)});
    m.push_back({"max_batch_size", static_cast<double>(s.max_step_sequences)});
    m.push_back({"active_sequences", static_cast<double>(s.active)});
    m.push_back({"prefix_cache_entries", static_cast<double>(s.prefix_cache_entries)});
    m.push_back({"prefix_cache_bytes", static_cast<double>(s.prefix_cache_bytes)});
    m.push_back({"weight_updates", static_cast<double>(s.weight_updates)});
    return m;
  };
  auto service = std::make_shared<policy::engine::server::PolicyService>(shared_engine, tokenizer.value(), so);
  auto server = policy::engine::server::HttpServer::Start(service, http);
  if (!server.ok()) return Fail(server.status().message());

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::printf("paddock-policy: serving %s on http://%s:%u (weight_version %s)\n", shared_engine->describe().c_str(),
              http.host.c_str(), server.value()->port(), shared_engine->weight_version().c_str());
  std::fflush(stdout);
  while (!g_stop) pause();
  std::printf("paddock-policy: stopping\n");
  server.value()->Stop();
  return 0;
}
