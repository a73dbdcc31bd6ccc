// constrain_bench: the cost of one constrained-decoding step (AllowedNext of the
// tool constraint, policy/engine/constrain) over DeepSeek's 128k vocabulary,
// while sampling random logits under the constraint — with the per-state mask
// cache (what the engine runs), with the cache dropped before every step (a
// trie walk each step), and the floor every sampler pays without a
// constraint (setting all 128k entries of the mask). Medians over every step of
// every sequence, same run. See bench/README.md, "constrain_bench".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "policy/engine/constrain/tool_grammar.h"
#include "policy/v4/tokenizer/tokenizer.h"

using paddock::policy::engine::constrain::GrammarOptions;
using paddock::policy::engine::constrain::TokenBytes;
using paddock::policy::engine::constrain::ToolGrammar;
using Clock = std::chrono::steady_clock;

namespace {

struct Stats {
  std::vector<double> us;
  void Add(double v) { us.push_back(v); }
  double Median() {
    std::sort(us.begin(), us.end());
    return us.empty() ? 0 : us[us.size() / 2];
  }
  double P99() {
    std::sort(us.begin(), us.end());
    return us.empty() ? 0 : us[std::min(us.size() - 1, us.size() * 99 / 100)];
  }
  double Mean() {
    double s = 0;
    for (double v : us) s += v;
    return us.empty() ? 0 : s / static_cast<double>(us.size());
  }
};

double Us(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::micro>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
  int sequences = argc > 1 ? std::atoi(argv[1]) : 20;
  if (argc > 1 && (std::string(argv[1]) == "--help" || sequences <= 0)) {
    std::printf("usage: constrain_bench [SEQUENCES (default 20)]\n");
    return std::string(argv[1]) == "--help" ? 0 : 2;
  }
  auto tok = paddock::v4::Tokenizer::Load(paddock::v4::Tokenizer::DefaultPath());
  if (!tok.ok()) {
    std::fprintf(stderr, "constrain_bench: %s\n", tok.status().ToString().c_str());
    return 1;
  }
  auto t0 = Clock::now();
  auto vocab = TokenBytes::Build(*tok.value());
  auto t1 = Clock::now();
  nlohmann::json tools = nlohmann::json::parse(R"([
    {"type":"function","function":{"name":"bash","parameters":{"type":"object","properties":{
      "command":{"type":"string"},"timeout":{"type":"integer"},"env":{"type":"object",
      "properties":{"k":{"type":"string"}},"required":["k"]}},"required":["command"]}}},
    {"type":"function","function":{"name":"write_file","parameters":{"type":"object","properties":{
      "path":{"type":"string"},"content":{"type":"string"},"mode":{"enum":["w","a"]},
      "lines":{"type":"array","items":{"type":"integer"}}},"required":["path","content"]}}}])");
  GrammarOptions o;  // default caps: reasoning/content 512, strings 256 code points
  o.thinking = true;
  auto g = ToolGrammar::Build(tools, vocab, o);
  if (!g.ok()) return 1;
  auto t2 = Clock::now();

  const size_t n = vocab->vocab_size();
  std::vector<uint8_t> allowed(n);
  Stats cached, uncached, floor;
  size_t steps = 0, calls = 0;
  // As the server does: one grammar per (tools, options), its mask cache shared
  // by every sequence; a second copy for the uncached timing.
  std::shared_ptr<ToolGrammar> grammars[2], shadows[2];
  for (int req = 0; req < 2; ++req) {
    o.require_tool_call = req == 1;
    grammars[req] = ToolGrammar::Build(tools, vocab, o).value();
    shadows[req] = ToolGrammar::Build(tools, vocab, o).value();
  }
  for (int seq = 0; seq < sequences; ++seq) {
    std::mt19937_64 rng(static_cast<uint64_t>(seq) + 1);
    std::normal_distribution<double> normal(0.0, 2.0);
    auto c = grammars[seq % 2]->NewConstraint(1024);
    auto shadow = shadows[seq % 2]->NewConstraint(1024);  // same tokens, timed uncached
    for (int step = 0; step < 1024; ++step) {
      std::fill(allowed.begin(), allowed.end(), 0);
      auto a = Clock::now();
      c->AllowedNext(allowed);
      auto b = Clock::now();
      cached.Add(Us(a, b));
      std::vector<uint8_t> shadow_allowed(n);
      shadows[seq % 2]->ClearCache();
      a = Clock::now();
      shadow->AllowedNext(shadow_allowed);
      b = Clock::now();
      uncached.Add(Us(a, b));
      std::vector<uint8_t> all(n);
      a = Clock::now();
      std::fill(all.begin(), all.end(), 1);
      b = Clock::now();
      floor.Add(Us(a, b));
      // Random logits with a bonus for EOS and '<'/'\n'-led tokens (structure).
      std::vector<std::pair<double, int32_t>> cand;
      for (size_t id = 0; id < n; ++id) {
        if (!allowed[id]) continue;
        const std::string& bytes = vocab->bytes(static_cast<int32_t>(id));
        double l = normal(rng) + (static_cast<int32_t>(id) == vocab->eos_id() ? 6 : 0) +
                   (!bytes.empty() && (bytes[0] == '<' || bytes[0] == '\n') ? 4 : 0);
        cand.push_back({l, static_cast<int32_t>(id)});
      }
      if (cand.empty()) {
        std::fprintf(stderr, "constrain_bench: no token allowed at step %d of sequence %d\n", step, seq);
        return 1;
      }
      double mx = -1e9, sum = 0;
      for (auto& [l, id] : cand) mx = std::max(mx, l);
      for (auto& [l, id] : cand) sum += std::exp(l - mx);
      double r = std::uniform_real_distribution<double>(0, sum)(rng);
      int32_t pick = cand.back().second;
      for (auto& [l, id] : cand)
        if ((r -= std::exp(l - mx)) <= 0) {
          pick = id;
          break;
        }
      c->Accept(pick);
      shadow->Accept(pick);
      ++steps;
      if (c->Complete()) break;
    }
    ++calls;
  }
  std::printf("constrain_bench: vocabulary %zu ids, token bytes + trie built in %.0f ms, grammar in %.2f ms\n", n,
              std::chrono::duration<double, std::milli>(t1 - t0).count(),
              std::chrono::duration<double, std::milli>(t2 - t1).count());
  std::printf("%zu sequences, %zu steps (random logits under the constraint)\n\n", calls, steps);
  std::printf("| per step | n | median µs | mean µs | p99 µs |\n| --- | ---: | ---: | ---: | ---: |\n");
  auto row = [](const char* name, Stats& s) {
    std::printf("| %s | %zu | %.1f | %.1f | %.1f |\n", name, s.us.size(), s.Median(), s.Mean(), s.P99());
  };
  row("AllowedNext, per-state cache (as run)", cached);
  row("AllowedNext, cache dropped (trie walk)", uncached);
  row("no constraint: fill 128k-entry mask", floor);
  std::printf("\ncached / no-constraint floor: median %.2fx, mean %.2fx\n", cached.Median() / floor.Median(),
              cached.Mean() / floor.Mean());
  return 0;
}
