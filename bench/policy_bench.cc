// policy_bench: throughput of the V4 policy engine's tokenizer (issue 5 target:
// ≥ 25 MB/s encode on one core on a mixed corpus of code, prose, JSON and CJK,
// with exact ids). Run by hand: build/bench/policy_bench [--runs N] ...
//
// Corpus, all from the repository (so every machine measures the same bytes):
//   code  every *.cc and *.h under policy/ rollout/ sandbox/ sdk/ proto/ tests/ bench/
//   prose every *.md in the repository (README, docs/, bench/, tests/data/v4/)
//   json  tests/data/v4/encoding_public.jsonl and decoding_public.jsonl, line by line
//   cjk   every distinct JSON string in tests/data/v4/*.jsonl that is mostly CJK (a third
//         or more of its bytes ideographs, kana or full-width forms): the Chinese and
//         Japanese messages of the conformance vectors
// One Encode call per file (code, prose), per line (json) or per string (cjk).
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "policy/v4/context/episode_context.h"
#include "policy/v4/encode/encoder.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using paddock::v4::Tokenizer;

namespace {

struct Category {
  std::string name;
  std::vector<std::string> docs;
  size_t bytes() const {
    size_t n = 0;
    for (const auto& d : docs) n += d.size();
    return n;
  }
};

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Mostly CJK: at least a third of the bytes are ideographs/kana/CJK punctuation
// (U+3000..U+9FFF, UTF-8 lead bytes E3..E9) or full-width forms (EF BC/BD).
bool HasCjk(const std::string& s) {
  size_t cjk = 0;
  for (size_t i = 0; i + 2 < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    auto d = static_cast<unsigned char>(s[i + 1]);
    if ((c >= 0xE3 && c <= 0xE9) || (c == 0xEF && (d == 0xBC || d == 0xBD))) {
      cjk += 3;
      i += 2;
    }
  }
  return cjk * 3 >= s.size() && cjk > 0;
}

void CollectCjk(const nlohmann::json& j, std::set<std::string>* out) {
  if (j.is_string()) {
    if (HasCjk(j.get_ref<const std::string&>())) out->insert(j.get<std::string>());
  } else if (j.is_structured()) {
    for (const auto& v : j) CollectCjk(v, out);
  }
}

std::vector<Category> BuildCorpus(const fs::path& root) {
  Category code{"code", {}}, prose{"prose", {}}, json{"json", {}}, cjk{"cjk", {}};
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    std::string name = it->path().filename().string();
    if (it->is_directory() && (name == "build" || name == ".git" || name == "node_modules" ||
                               (!name.empty() && name[0] == '.'))) {
      it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file()) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  std::set<std::string> cjk_strings;
  for (const auto& p : files) {
    std::string rel = fs::relative(p, root).string();
    std::string ext = p.extension().string();
    if (ext == ".cc" || ext == ".h") {
      code.docs.push_back(ReadAll(p));
    } else if (ext == ".md") {
      prose.docs.push_back(ReadAll(p));
    } else if (ext == ".jsonl" && rel.rfind("tests/data/v4/", 0) == 0) {
      std::ifstream in(p);
      std::string line;
      bool as_json = rel.find("encoding_public") != std::string::npos ||
                     rel.find("decoding_public") != std::string::npos;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        if (as_json) json.docs.push_back(line);
        CollectCjk(nlohmann::json::parse(line, nullptr, false), &cjk_strings);
      }
    }
  }
  cjk.docs.assign(cjk_strings.begin(), cjk_strings.end());
  return {code, prose, json, cjk};
}

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

struct Timing {
  double wall = 0, cpu = 0;
  size_t tokens = 0;
};

Timing EncodeAll(const Tokenizer& tok, const Category& c) {
  Timing t;
  auto w0 = std::chrono::steady_clock::now();
  double c0 = ThreadCpuSeconds();
  for (const auto& d : c.docs) t.tokens += tok.Encode(d).size();
  t.cpu = ThreadCpuSeconds() - c0;
  t.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  return t;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void Usage() {
  std::puts(
      "policy_bench: V4 tokenizer encode throughput (MB/s, one thread) on a mixed corpus.\n"
      "  --runs N          measured runs over the whole corpus (default 7); median reported\n"
      "  --tokenizer PATH  tokenizer.json (default $PADDOCK_TOKENIZER or the install-deps.sh path)\n"
      "  --source-dir DIR  repository root the corpus is read from (default: this checkout)\n"
      "  --target MBPS     target to compare with (default 25)\n"
      "Exit status 0 when exact on tests/data/v4/tokenizer_public.jsonl (always checked first)\n"
      "and the whole corpus encodes at the target or faster, cold and warm (CPU time); 1 otherwise.");
}

}  // namespace

// Token-in-token-out context scenarios (defined at the end of this file).
bool RunContextScenarios(const std::shared_ptr<const Tokenizer>& tok, int runs);

int main(int argc, char** argv) {
  int runs = 7;
  double target = 25;
  std::string tok_path = Tokenizer::DefaultPath();
  fs::path root = PADDOCK_SOURCE_DIR;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      Usage();
      return 0;
    } else if (a == "--runs") {
      runs = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--tokenizer") {
      tok_path = next();
    } else if (a == "--source-dir") {
      root = next();
    } else if (a == "--target") {
      target = std::atof(next().c_str());
    } else {
      std::fprintf(stderr, "unknown flag %s (see --help)\n", a.c_str());
      return 2;
    }
  }

  auto t0 = std::chrono::steady_clock::now();
  auto loaded = Tokenizer::Load(tok_path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "policy_bench: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Tokenizer& tok = *loaded.value();

  // Exactness first: a fast tokenizer with wrong ids is worth nothing.
  size_t exact = 0, total = 0;
  {
    std::ifstream in(root / "tests/data/v4/tokenizer_public.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line);
      ++total;
      if (tok.Encode(j["text"].get<std::string>()) == j["ids"].get<std::vector<uint32_t>>()) ++exact;
    }
  }

  auto corpus = BuildCorpus(root);
  size_t all_bytes = 0;
  for (const auto& c : corpus) all_bytes += c.bytes();
  fmt::print("policy_bench: tokenizer {} (loaded in {:.0f} ms, PCRE2 JIT {})\n", tok_path, load_s * 1e3,
             tok.jit() ? "on" : "off");
  fmt::print("exact ids: {}/{} cases of tests/data/v4/tokenizer_public.jsonl\n", exact, total);
  fmt::print("corpus from {}: {:.1f} KB in", root.string(), all_bytes / 1e3);
  for (const auto& c : corpus) fmt::print(" {} {:.1f} KB ({} docs);", c.name, c.bytes() / 1e3, c.docs.size());
  fmt::print("\n");

  // Round trip on the whole corpus (not timed).
  for (const auto& c : corpus)
    for (const auto& d : c.docs)
      if (tok.Decode(tok.Encode(d)) != d) {
        fmt::print(stderr, "policy_bench: round trip failed in {} corpus\n", c.name);
        return 1;
      }

  // Each run: a cold pass (a freshly loaded tokenizer, empty word cache: text never
  // seen before) and a warm pass (the loaded tokenizer, its cache filled: text
  // whose words were seen, as in a long rollout). Medians over the runs.
  const size_t K = corpus.size();
  std::vector<std::vector<double>> wall(K), cpu(K), cold(K);
  std::vector<double> all_wall, all_cpu, all_cold;
  std::vector<size_t> tokens(K);
  for (int r = 0; r < runs; ++r) {
    {
      auto fresh = Tokenizer::Load(tok_path);
      double cw = 0;
      for (size_t k = 0; k < K; ++k) {
        Timing t = EncodeAll(*fresh.value(), corpus[k]);
        cold[k].push_back(t.cpu);
        cw += t.cpu;
      }
      all_cold.push_back(cw);
    }
    double w = 0, c = 0;
    for (size_t k = 0; k < K; ++k) {
      Timing t = EncodeAll(tok, corpus[k]);
      wall[k].push_back(t.wall);
      cpu[k].push_back(t.cpu);
      tokens[k] = t.tokens;
      w += t.wall;
      c += t.cpu;
    }
    all_wall.push_back(w);
    all_cpu.push_back(c);
  }

  fmt::print("\n{:<10} {:>8} {:>9} {:>9} {:>11} {:>11} {:>11}\n", "corpus", "MB", "tokens", "bytes/tok",
             "cold MB/s", "warm MB/s", "warm wall");
  size_t all_tokens = 0;
  double inv_cold = 0, inv_warm = 0;  // equal mix: 1 MB of each category
  for (size_t k = 0; k < K; ++k) {
    double mb = corpus[k].bytes() / 1e6;
    all_tokens += tokens[k];
    double c = mb / Median(cold[k]), w = mb / Median(cpu[k]);
    inv_cold += 1 / c / K;
    inv_warm += 1 / w / K;
    fmt::print("{:<10} {:>8.3f} {:>9} {:>9.2f} {:>11.1f} {:>11.1f} {:>11.1f}\n", corpus[k].name, mb, tokens[k],
               double(corpus[k].bytes()) / std::max<size_t>(1, tokens[k]), c, w, mb / Median(wall[k]));
  }
  double mb = all_bytes / 1e6;
  double warm_all = mb / Median(all_cpu), cold_all = mb / Median(all_cold);
  fmt::print("{:<10} {:>8.3f} {:>9} {:>9.2f} {:>11.1f} {:>11.1f} {:>11.1f}\n", "all", mb, all_tokens,
             double(all_bytes) / std::max<size_t>(1, all_tokens), cold_all, warm_all, mb / Median(all_wall));
  fmt::print("{:<10} {:>8} {:>9} {:>9} {:>11.1f} {:>11.1f}\n", "equal mix", "", "", "", 1 / inv_cold, 1 / inv_warm);
  fmt::print(
      "\nMB/s on one thread, medians of {} runs, by the thread's CPU time (what one core does, whatever\n"
      "else the machine runs; 'warm wall' is wall clock). cold = first pass of a freshly loaded tokenizer\n"
      "(empty word cache); warm = the same text again (word cache filled). 'all' = the corpus as read;\n"
      "'equal mix' = 25% of each category by bytes (harmonic mean; the cjk sample is small, so its cold\n"
      "figure is mostly start-up: cold CPU caches right after the load).\n", runs);
  bool ok = exact == total && cold_all >= target && warm_all >= target;
  fmt::print("target: >= {:.0f} MB/s encode on the mixed corpus (all, cold and warm): {} ({:.1f} cold, {:.1f} "
             "warm; equal mix {:.1f} cold, {:.1f} warm); exact {}/{}\n", target, ok ? "MET" : "NOT MET",
             cold_all, warm_all, 1 / inv_cold, 1 / inv_warm, exact, total);
  bool context_ok = RunContextScenarios(loaded.value(), runs);
  return ok && context_ok ? 0 : 1;
}

// ---------------------------------------------------------------------------
// Token-in-token-out context (policy/v4/context), issue 5 targets:
//  - appending one observation (~500 tokens) to a context of 1k, 16k and 128k
//    tokens costs time proportional to the observation, not the context;
//  - encoding a 200-turn tool conversation (EncodePrompt) takes <= 1 ms.
// For contrast, the naive way (render the whole conversation again and
// tokenize all of it) is timed at the same sizes.

namespace {

using ojson = nlohmann::ordered_json;
using paddock::v4::EpisodeContext;

ojson BenchTools() {
  return ojson::parse(R"([{"type":"function","function":{"name":"bash","description":"Run a shell command in the sandbox","parameters":{"type":"object","properties":{"cmd":{"type":"string","description":"the command"}},"required":["cmd"]}}}])");
}

ojson BenchCall(int i) {
  return {{"id", fmt::format("call_{}", i)}, {"type", "function"},
          {"function", {{"name", "bash"}, {"arguments", ojson{{"cmd", fmt::format("pytest -x tests/test_{}.py", i)}}.dump()}}}};
}

ojson BenchAssistant(int i) {
  return {{"role", "assistant"},
          {"reasoning_content", "The last run shows a failure in the parser; run the next test file to narrow it down."},
          {"content", ""},
          {"tool_calls", ojson::array({BenchCall(i)})}};
}

// About 500 tokens of a test log.
std::string BenchObservation(int i) {
  std::string s = fmt::format("============================= test session starts (run {}) ==============================\n", i);
  for (int k = 0; s.size() < 1250; ++k)
    s += fmt::format("tests/test_parser.py::test_case_{} PASSED [{:3d}%]  elapsed=0.{:03d}s\n", k, k * 3 % 100, k * 37 % 1000);
  s += "FAILED tests/test_parser.py::test_unicode - AssertionError: '日本語' != '日本'\n";
  return s;
}

ojson BenchToolResult(int i) {
  return ojson::array({{{"role", "tool"}, {"tool_call_id", fmt::format("call_{}", i)}, {"content", BenchObservation(i)}}});
}

double MedianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double TimeUs(F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

bool RunContextScenarios(const std::shared_ptr<const Tokenizer>& tok, int runs) {
  const ojson request = {{"thinking_mode", "thinking"}, {"drop_thinking", true}, {"reasoning_effort", nullptr},
                         {"messages", ojson::array({{{"role", "system"}, {"content", "You are a coding agent."}, {"tools", BenchTools()}},
                                                    {{"role", "user"}, {"content", "Fix the failing test."}}})}};
  auto started = EpisodeContext::Start(tok, request);
  if (!started.ok()) {
    fmt::print(stderr, "policy_bench: context: {}\n", started.status().ToString());
    return false;
  }
  // The ids of one policy turn, as the codec renders it (the same text every turn; call ids are not rendered).
  std::vector<uint32_t> turn_ids;
  {
    ojson a = request, b = request;
    b["messages"].push_back(BenchAssistant(0));
    auto ra = paddock::v4::EncodePrompt(a), rb = paddock::v4::EncodePrompt(b);
    turn_ids = tok->Encode(rb.value().substr(ra.value().size()));
  }
  const size_t obs_tokens = tok->Encode(BenchObservation(0)).size();

  fmt::print("\ncontext: append one observation ({} tokens of tool result) after a policy turn; medians of {} "
             "appends\n", obs_tokens, std::max(runs, 51));
  fmt::print("{:>10} {:>8} {:>12} {:>10} {:>14} {:>10} {:>10} {:>22}\n", "context", "turns", "append (us)",
             "cpu (us)", "of which tok", "ids added", "us/1k ids", "naive re-render+tok (us)");
  EpisodeContext ctx = std::move(started).value();
  int turn = 0;
  std::vector<double> append_us;
  bool ok = true;
  for (size_t target : {1000, 16000, 128000}) {
    while (ctx.size() + turn_ids.size() < target) {
      (void)ctx.AppendPolicyOutput(turn_ids, BenchAssistant(turn));
      (void)ctx.AppendObservation(BenchToolResult(turn));
      ++turn;
    }
    (void)ctx.AppendPolicyOutput(turn_ids, BenchAssistant(turn));
    // Each sample appends to a copy of the context with room reserved (as a
    // long-lived context has from geometric growth), so it times the append only.
    std::vector<double> samples, cpu_samples, naive;
    size_t added = 0;
    for (int r = 0; r < std::max(runs, 51); ++r) {
      EpisodeContext c = ctx;
      c.Reserve(4096);
      ojson obs = BenchToolResult(turn);
      size_t before = c.size();
      double cpu0 = ThreadCpuSeconds();
      samples.push_back(TimeUs([&] { (void)c.AppendObservation(obs); }));
      cpu_samples.push_back((ThreadCpuSeconds() - cpu0) * 1e6);
      added = c.size() - before;
    }
    // Of which tokenizing the observation's text (the tokenizer's word cache grows with all text seen).
    std::vector<double> tok_us;
    const std::string obs_text = BenchObservation(turn);
    for (int r = 0; r < std::max(runs, 51); ++r) {
      double cpu0 = ThreadCpuSeconds();
      auto ids = tok->Encode(obs_text);
      tok_us.push_back((ThreadCpuSeconds() - cpu0) * 1e6);
      if (ids.empty()) std::abort();
    }
    for (int r = 0; r < 3; ++r) {
      ojson req = ctx.Request();
      for (const ojson& m : BenchToolResult(turn)) req["messages"].push_back(m);
      naive.push_back(TimeUs([&] {
        auto text = paddock::v4::EncodePrompt(req);
        auto ids = tok->Encode(text.value());
        if (ids.empty()) std::abort();
      }));
    }
    double med = MedianOf(samples), cpu = MedianOf(cpu_samples);
    append_us.push_back(cpu);
    fmt::print("{:>10} {:>8} {:>12.1f} {:>10.1f} {:>14.1f} {:>10} {:>10.1f} {:>22.0f}\n", ctx.size(), turn + 1, med,
               cpu, MedianOf(tok_us), added, cpu / added * 1000, MedianOf(naive));
  }
  // Proportional to the observation: the 128k append (thread CPU time) within 2x of the 1k one.
  bool flat = append_us.back() <= 2 * append_us.front() + 20;
  fmt::print("target: append time does not grow with the context (cpu, 128k vs 1k: {:.1f} us vs {:.1f} us): {}\n",
             append_us.back(), append_us.front(), flat ? "MET" : "NOT MET");
  ok &= flat;

  // Encoding a 200-turn tool conversation.
  ojson conv = request;
  for (int i = 0; i < 200; ++i) {
    conv["messages"].push_back(BenchAssistant(i));
    for (const ojson& m : BenchToolResult(i)) conv["messages"].push_back(m);
  }
  size_t bytes = 0, tokens = 0;
  std::vector<double> enc;
  for (int r = 0; r < std::max(runs, 21); ++r) {
    enc.push_back(TimeUs([&] {
      auto text = paddock::v4::EncodePrompt(conv);
      bytes = text.value().size();
    }));
  }
  tokens = tok->Encode(paddock::v4::EncodePrompt(conv).value()).size();
  double enc_med = MedianOf(enc);
  bool enc_ok = enc_med <= 1000;
  fmt::print("\nencode a 200-turn tool conversation (401 messages, {:.0f} KB prompt, {} tokens): median {:.0f} us "
             "over {} runs; target <= 1 ms: {}\n", bytes / 1e3, tokens, enc_med, enc.size(), enc_ok ? "MET" : "NOT MET");
  ok &= enc_ok;
  return ok;
}
