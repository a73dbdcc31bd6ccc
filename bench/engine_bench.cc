// engine_bench: the embedded engine's decode speed (bench/README.md, "engine_bench").
//   1. decode tokens/s of one sequence at 4k context, through the Engine API
//      (real 4096-token prefill, then greedy decode), one thread;
//   2. throughput of 32 concurrent sequences vs one, through the Engine API
//      (the worker batches them into one matmul per layer), one thread;
//   3. decode cost per token at 4k/16k/64k context for the hybrid-attention
//      model and for the same model with plain attention (caches filled with
//      Model::FillSynthetic, then real decode steps), one thread.
// Medians of --repeats runs. Run by hand, never in CI.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "policy/engine/embedded_engine.h"
#include "policy/engine/kv_report.h"
#include "policy/engine/model.h"

using namespace paddock::policy::engine;
using Clock = std::chrono::steady_clock;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// CPU seconds of this process (the engine's worker does the work; clients wait)
// and of the calling thread: on a machine shared with other load these show
// the cost of the work itself, beside wall time.
double ProcessCpu() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
double ThreadCpu() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::vector<int32_t> Prompt(size_t n, int salt) {
  std::vector<int32_t> p;
  for (size_t i = 0; i < n; ++i) p.push_back(static_cast<int32_t>((i * 7919 + salt * 104729 + 11) % 128000 + 2));
  return p;
}

GenerateJob Job(std::vector<int32_t> prompt, int max_new, uint64_t seed) {
  GenerateJob job;
  job.prompt = std::move(prompt);
  job.sampling.max_new_tokens = max_new;
  job.sampling.ignore_eos = true;
  job.sampling.temperature = 1.0;
  job.sampling.seed = seed;
  return job;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engine_bench: decode speed of the embedded V4 engine (tiny config)"};
  int repeats = 3, decode_tokens = 256, batch = 32, batch_tokens = 128, ctx_tokens = 32;
  std::string config_name = "tiny";
  std::vector<size_t> contexts = {4096, 16384, 65536};
  bool skip_plain = false;
  app.add_option("--config", config_name, "model config")->capture_default_str();
  app.add_option("--repeats", repeats, "runs per scenario (median reported)")->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens, "tokens decoded at 4k context")->capture_default_str();
  app.add_option("--batch", batch, "concurrent sequences in the batched scenario")->capture_default_str();
  app.add_option("--batch-tokens", batch_tokens, "tokens each sequence generates there")->capture_default_str();
  app.add_option("--context-tokens", ctx_tokens, "decode steps timed per context length")->capture_default_str();
  app.add_option("--contexts", contexts, "context lengths for the scaling scenario")->capture_default_str();
  app.add_flag("--skip-plain", skip_plain, "skip the plain-attention baseline");
  CLI11_PARSE(app, argc, argv);

  auto config = ConfigByName(config_name);
  if (!config.ok()) {
    fmt::print(stderr, "{}\n", config.status().ToString());
    return 2;
  }
  fmt::print("engine_bench: config {}, AVX2+FMA {}, hardware threads {}\n", config.value().Describe(),
             CpuHasAvx2Fma() ? "yes" : "no", std::thread::hardware_concurrency());

  EngineOptions one_thread;
  one_thread.config = config_name;
  one_thread.threads = 1;
  one_thread.prefix_cache_entries = 0;

  // 1. One sequence at 4k context.
  {
    auto engine = EmbeddedEngine::Create(one_thread);
    if (!engine.ok()) {
      fmt::print(stderr, "{}\n", engine.status().ToString());
      return 1;
    }
    std::vector<double> tps, cpu_tps, prefill;
    for (int r = 0; r < repeats; ++r) {
      // Prefill plus one token, then prefill plus decode_tokens: the CPU time
      // difference is the decode's.
      double c0 = ProcessCpu();
      auto head = engine.value()->Generate(Job(Prompt(4096, r), 1, r));
      double c1 = ProcessCpu();
      auto out = engine.value()->Generate(Job(Prompt(4096, r), decode_tokens, r));
      double c2 = ProcessCpu();
      if (!head.ok() || !out.ok()) return 1;
      tps.push_back(out.value().tokens.size() / (out.value().decode_ms / 1000.0));
      cpu_tps.push_back((out.value().tokens.size() - 1) / ((c2 - c1) - (c1 - c0)));
      prefill.push_back(4096 / (out.value().prefill_ms / 1000.0));
      fmt::print(stderr, "[decode-4k] {}/{}: {:.0f} tok/s wall, {:.0f} tok/CPU-s\n", r + 1, repeats, tps.back(),
                 cpu_tps.back());
    }
    fmt::print("\n| scenario | median (wall) | median (per CPU-second) | runs |\n|---|---|---|---|\n");
    fmt::print("| decode, 1 sequence, 4k context, 1 thread | {:.0f} tokens/s | {:.0f} tokens/s | {} |\n", Median(tps),
               Median(cpu_tps), repeats);
    fmt::print("| prefill 4096 tokens, 1 thread | {:.0f} tokens/s | | {} |\n", Median(prefill), repeats);
  }

  // 2. Batched vs single, through the Engine API.
  {
    auto engine = EmbeddedEngine::Create(one_thread);
    std::vector<double> single, batched, single_cpu, batched_cpu;
    for (int r = 0; r < repeats; ++r) {
      auto t0 = Clock::now();
      double c0 = ProcessCpu();
      auto out = engine.value()->Generate(Job(Prompt(16, 1000 + r), batch_tokens, r));
      single.push_back(out.value().tokens.size() / Seconds(t0, Clock::now()));
      single_cpu.push_back(out.value().tokens.size() / (ProcessCpu() - c0));
      std::vector<std::thread> threads;
      std::vector<size_t> produced(batch);
      t0 = Clock::now();
      c0 = ProcessCpu();
      for (int i = 0; i < batch; ++i)
        threads.emplace_back([&, i] {
          auto o = engine.value()->Generate(Job(Prompt(16, 2000 + 100 * r + i), batch_tokens, i));
          produced[i] = o.ok() ? o.value().tokens.size() : 0;
        });
      for (auto& t : threads) t.join();
      size_t total = 0;
      for (size_t p : produced) total += p;
      batched.push_back(total / Seconds(t0, Clock::now()));
      batched_cpu.push_back(total / (ProcessCpu() - c0));
      fmt::print(stderr, "[batch] {}/{}: single {:.0f} tok/s ({:.0f}/CPU-s), {} sequences {:.0f} tok/s ({:.0f}/CPU-s)\n",
                 r + 1, repeats, single.back(), single_cpu.back(), batch, batched.back(), batched_cpu.back());
    }
    auto st = engine.value()->stats();
    fmt::print("| 1 sequence (16-token prompt + {} new), 1 thread, Engine API | {:.0f} tokens/s | {:.0f} tokens/s | {} |\n",
               batch_tokens, Median(single), Median(single_cpu), repeats);
    fmt::print("| {} concurrent sequences (same), 1 thread, Engine API (up to {} per step) | {:.0f} tokens/s = {:.1f}x single | {:.0f} tokens/s = {:.1f}x single | {} |\n",
               batch, st.max_step_sequences, Median(batched), Median(batched) / Median(single), Median(batched_cpu),
               Median(batched_cpu) / Median(single_cpu), repeats);
  }

  // 3. Decode cost vs context, hybrid vs plain attention.
  {
    fmt::print("\n| context | hybrid CPU ms/token | plain CPU ms/token | hybrid wall ms/token | plain wall ms/token | hybrid KV bytes | plain KV bytes |\n|---|---|---|---|---|---|---|\n");
    Config hybrid = config.value();
    Config plain = PlainAttentionVariant(hybrid);
    auto mh = Model::Create(SeededWeights(hybrid, 1).value(), 1).value();
    auto mp = Model::Create(SeededWeights(plain, 1).value(), 1).value();
    std::vector<double> base(2, 0);
    for (size_t ctx : contexts) {
      double ms[2] = {0, 0}, wall[2] = {0, 0};
      size_t bytes[2] = {0, 0};
      for (int k = 0; k < 2; ++k) {
        if (k == 1 && skip_plain) continue;
        Model& m = k == 0 ? *mh : *mp;
        std::vector<double> per, per_wall;
        for (int r = 0; r < repeats; ++r) {
          SequenceState s = m.NewSequence();
          m.FillSynthetic(s, ctx, r + 1);
          bytes[k] = s.CacheBytes();
          std::vector<float> logits;
          int32_t tok = 17;
          auto t0 = Clock::now();
          double c0 = ThreadCpu();
          for (int i = 0; i < ctx_tokens; ++i) {
            Model::Chunk chunk{&s, std::span<const int32_t>(&tok, 1), true};
            m.Forward(std::span<const Model::Chunk>(&chunk, 1), logits);
            tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
          }
          per.push_back((ThreadCpu() - c0) * 1000.0 / ctx_tokens);
          per_wall.push_back(Seconds(t0, Clock::now()) * 1000.0 / ctx_tokens);
        }
        ms[k] = Median(per);
        wall[k] = Median(per_wall);
        if (base[k] == 0) base[k] = ms[k];
        fmt::print(stderr, "[context] {} {}: {:.3f} ms/token\n", k ? "plain" : "hybrid", ctx, ms[k]);
      }
      fmt::print("| {} | {:.3f} ({:.2f}x) | {:.3f} ({:.2f}x) | {:.3f} | {:.3f} | {} | {} |\n", ctx, ms[0], ms[0] / base[0],
                 ms[1], base[1] > 0 ? ms[1] / base[1] : 0.0, wall[0], wall[1], bytes[0], bytes[1]);
    }
  }
  return 0;
}
