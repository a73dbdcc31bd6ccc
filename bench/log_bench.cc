// log_bench: the trajectory log (replay/) on this machine's disk, in one run:
//  1. durable step appends: one writer syncing every step alone (the
//     baseline) vs 256 concurrent writers sharing syncs (group commit);
//  2. fast-forward: GetCall of logged results through the in-process API;
//  3. resume: reading back one episode of 1,000 steps, cold (log just
//     reopened) and warm.
// Targets (issue 4): 2 ≥ 10x baseline and ≥ 20k steps/s; fast-forward ≥ 200k
// calls/s; resume ≤ 50 ms. Like for like (issue 13): the same 256 writers
// through raw RocksDB, each Put with sync=true (RocksDB's own write group
// batches their WAL syncs), values of the step's serialized size; group commit
// must reach ≥ 2.0x that. Beside it, the asynchronous API (AppendStepAsync)
// with the same 256 episodes in flight on the rollout engine's few threads.
// See bench/README.md, "log_bench".
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include "replay/trajectory_log.h"

namespace {

using paddock::replay::CallKey;
using paddock::replay::LogOptions;
using paddock::replay::TrajectoryLog;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A step as the rollout engine logs it: a 256-token completion with logprobs,
// one tool call and its observation (about 2.5 KB serialized).
paddock::v1::StepRecordProto MakeStep(const std::string& episode, uint64_t step) {
  paddock::v1::StepRecordProto s;
  s.set_episode_id(episode);
  s.set_step(step);
  auto* rq = s.mutable_policy_request();
  for (int i = 0; i < 64; ++i) rq->add_prompt_token_ids(100 + i);
  rq->set_prompt_is_delta(true);
  rq->set_model("v4");
  rq->set_temperature(1.0);
  auto* rs = s.mutable_policy_response();
  for (int i = 0; i < 256; ++i) {
    rs->add_token_ids(static_cast<uint32_t>((step * 7919 + i * 104729) % 128000));
    rs->add_logprobs(-0.01f * static_cast<float>(i % 97));
  }
  rs->set_text(std::string(600, 'x'));
  auto* call = s.add_tool_calls();
  call->set_id("call-0");
  call->set_name("bash");
  call->set_arguments_json(R"({"command":"pytest -q tests/test_parser.py"})");
  auto* obs = s.add_observations();
  obs->set_tool_call_id("call-0");
  obs->set_content(std::string(400, 'o'));
  s.set_reward(0.0);
  s.mutable_timings()->set_policy_us(850000);
  return s;
}

void Check(const paddock::Status& st, const char* what) {
  if (!st.ok()) {
    fmt::print(stderr, "log_bench: {}: {}\n", what, st.ToString());
    std::exit(1);
  }
}

std::unique_ptr<TrajectoryLog> OpenLog(const std::string& dir, bool group_commit) {
  LogOptions options;
  options.dir = dir;
  options.group_commit = group_commit;
  options.created_by = "log_bench";
  auto log = TrajectoryLog::Open(options);
  Check(log.status(), "opening the log");
  return std::move(log).value();
}

// Runs `write(w)` on `writers` threads released together once all are
// started; returns the seconds from the release to the last one's end.
double TimeWriters(int writers, const std::function<void(int)>& write) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      ++ready;
      while (!go.load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
      write(w);
    });
  }
  while (ready.load() < writers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto t0 = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  return Seconds(Clock::now() - t0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"log_bench: trajectory log durability, fast-forward and resume"};
  std::string dir = "/var/tmp/paddock-log-bench";
  int writers = 256;
  int steps_per_writer = 100;
  int baseline_steps = 1000;
  int lookups = 1000000;
  int lookup_threads = 2;
  int rounds = 3;
  int submit_threads = 2;
  app.add_option("--dir", dir, "scratch directory for the databases (on the disk to measure; removed first)");
  app.add_option("--writers", writers, "concurrent writers for group commit");
  app.add_option("--steps-per-writer", steps_per_writer, "steps each concurrent writer appends");
  app.add_option("--baseline-steps", baseline_steps, "steps the single synced writer appends");
  app.add_option("--submit-threads", submit_threads,
                 "threads submitting the asynchronous appends (the rollout engine's pool)")
      ->check(CLI::Range(1, 1024));
  bool only_async = false;
  app.add_flag("--only-async", only_async, "run only the asynchronous appends (for a profiler), then stop");
  app.add_option("--rounds", rounds, "alternating baseline/group-commit rounds (medians compared)");
  app.add_option("--lookups", lookups, "fast-forward GetCall lookups");
  app.add_option("--lookup-threads", lookup_threads, "threads doing the lookups");
  CLI11_PARSE(app, argc, argv);

  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  fmt::print("log_bench: databases under {}, {} hardware threads\n\n", dir, std::thread::hardware_concurrency());

  // 1. Durable appends. The machine is shared, so the baseline and group
  // commit alternate over several rounds and the medians are compared.
  auto baseline = [&](int round) {
    auto log = OpenLog(fmt::format("{}/baseline-{}", dir, round), /*group_commit=*/false);
    auto t0 = Clock::now();
    for (int i = 0; i < baseline_steps; ++i) Check(log->AppendStep(MakeStep("baseline", i)), "append");
    double s = Seconds(Clock::now() - t0);
    double rate = baseline_steps / s;
    fmt::print("  round {}: 1 writer, one sync per step:   {:>8.0f} steps/s  ({} steps, {} syncs, {:.3f} ms/step)\n",
               round, rate, baseline_steps, log->GetCommitStats().syncs - 1, 1000 * s / baseline_steps);
    return rate;
  };
  auto concurrent = [&](int round, bool group_commit, int steps_each) {
    auto log = OpenLog(fmt::format("{}/{}-{}", dir, group_commit ? "group" : "nogroup", round), group_commit);
    auto before = log->GetCommitStats();
    double s = TimeWriters(writers, [&](int w) {
      std::string ep = fmt::format("episode-{:04d}", w);
      for (int i = 0; i < steps_each; ++i) Check(log->AppendStep(MakeStep(ep, i)), "append");
    });
    auto after = log->GetCommitStats();
    uint64_t total = uint64_t(writers) * steps_each;
    uint64_t syncs = after.syncs - before.syncs;
    double rate = total / s;
    fmt::print("  round {}: {} writers, {}: {:>8.0f} steps/s  ({} steps, {} syncs, {:.1f} steps/sync, largest group {})\n",
               round, writers, group_commit ? "group commit  " : "sync per write", rate, total, syncs,
               double(total) / double(syncs), after.max_group);
    return rate;
  };
  // The asynchronous API as the rollout engine uses it: `writers` episodes in
  // flight, each with one step outstanding, driven by `submit_threads`
  // threads (the engine's pool): a completion hands its episode back to them
  // (a queue), and one of them builds and submits the episode's next step.
  auto async_writers = [&](int round) {
    auto log = OpenLog(fmt::format("{}/async-{}", dir, round), true);
    auto before = log->GetCommitStats();
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::pair<int, int>> ready;  // (episode, next step)
    int finished = 0;
    auto t0 = Clock::now();
    auto submit = [&](int w, int i) {
      log->AppendStepAsync(MakeStep(fmt::format("episode-{:04d}", w), i), [&, w, i](paddock::Status st) {
        Check(st, "async append");
        std::lock_guard lock(mu);
        // Wake the submitters (and the main thread, which shares the
        // condition) only when they may be asleep: a batch of completions
        // costs one wake-up, as a thread pool's queue does.
        bool was_idle = ready.empty();
        if (i + 1 < steps_per_writer) {
          ready.emplace_back(w, i + 1);
        } else {
          ++finished;
        }
        if (was_idle || finished == writers) cv.notify_all();
      });
    };
    {
      std::lock_guard lock(mu);
      for (int w = 0; w < writers; ++w) ready.emplace_back(w, 0);
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < submit_threads; ++t) {
      threads.emplace_back([&] {
        std::unique_lock lock(mu);
        for (;;) {
          cv.wait(lock, [&] { return !ready.empty() || finished == writers; });
          if (ready.empty()) return;
          std::vector<std::pair<int, int>> take;
          take.swap(ready);
          lock.unlock();
          for (auto [w, i] : take) submit(w, i);
          lock.lock();
        }
      });
    }
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return finished == writers; });
      cv.notify_all();
    }
    for (auto& t : threads) t.join();
    double s = Seconds(Clock::now() - t0);
    auto after = log->GetCommitStats();
    uint64_t total = uint64_t(writers) * steps_per_writer;
    uint64_t syncs = after.syncs - before.syncs;
    double rate = total / s;
    fmt::print("  round {}: {} episodes in flight on {} threads, AppendStepAsync: {:>8.0f} steps/s  ({} syncs, {:.1f} steps/sync)\n",
               round, writers, submit_threads, rate, syncs, double(total) / double(syncs));
    return rate;
  };
  // Raw RocksDB: one default column family, sync=true per Put, the same
  // writers and value size; RocksDB's write group is the only batching.
  const size_t step_bytes = MakeStep("episode-0000", 0).ByteSizeLong();
  auto raw = [&](int round) {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    std::string path = fmt::format("{}/raw-{}", dir, round);
    rocksdb::Status st = rocksdb::DB::Open(options, path, &db);
    if (!st.ok()) {
      fmt::print(stderr, "log_bench: raw RocksDB at {}: {}\n", path, st.ToString());
      std::exit(1);
    }
    std::unique_ptr<rocksdb::DB> owned(db);
    const std::string value(step_bytes, 'v');
    double s = TimeWriters(writers, [&](int w) {
      rocksdb::WriteOptions wo;
      wo.sync = true;
      for (int i = 0; i < steps_per_writer; ++i) {
        std::string key = fmt::format("episode-{:04d}/{:08d}", w, i);
        rocksdb::Status st = owned->Put(wo, key, value);
        if (!st.ok()) {
          fmt::print(stderr, "log_bench: raw put: {}\n", st.ToString());
          std::exit(1);
        }
      }
    });
    double rate = double(writers) * steps_per_writer / s;
    fmt::print("  round {}: {} writers, raw RocksDB Put sync=true ({} B values): {:>8.0f} writes/s\n", round, writers,
               step_bytes, rate);
    return rate;
  };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  fmt::print("durable step appends (~2.5 KB steps, WAL fdatasync before each return):\n");
  std::vector<double> base_rates, group_rates, async_rates, raw_rates;
  if (only_async) {  // for profiling the asynchronous path alone
    for (int round = 1; round <= rounds; ++round) async_writers(round);
    return 0;
  }
  for (int round = 1; round <= rounds; ++round) {
    base_rates.push_back(baseline(round));
    group_rates.push_back(concurrent(round, true, steps_per_writer));
    async_rates.push_back(async_writers(round));
    raw_rates.push_back(raw(round));
  }
  double nogroup_rate = concurrent(1, false, std::max(1, baseline_steps / writers));
  double baseline_rate = median(base_rates), group_rate = median(group_rates);
  fmt::print("median: one sync per step {:.0f} steps/s; {} writers with group commit {:.0f} steps/s = {:.1f}x "
             "(target >= 10x and >= 20000 steps/s: {})\n",
             baseline_rate, writers, group_rate, group_rate / baseline_rate,
             group_rate >= 10 * baseline_rate && group_rate >= 20000 ? "met" : "NOT MET");
  fmt::print("({} writers without group commit: {:.0f} steps/s, {:.1f}x the single writer)\n", writers,
             nogroup_rate, nogroup_rate / baseline_rate);
  double raw_rate = median(raw_rates);
  fmt::print("like for like: group commit {:.0f} steps/s vs raw RocksDB's own write group {:.0f} writes/s = {:.2f}x "
             "(target >= 2.0x: {})\n",
             group_rate, raw_rate, group_rate / raw_rate, group_rate >= 2.0 * raw_rate ? "met" : "NOT MET");
  double async_rate = median(async_rates);
  fmt::print("like for like, asynchronous: {} episodes in flight on {} threads {:.0f} steps/s vs raw RocksDB's {} "
             "synchronous writers {:.0f} writes/s = {:.2f}x (target >= 2.0x: {})\n\n",
             writers, submit_threads, async_rate, writers, raw_rate, async_rate / raw_rate,
             async_rate >= 2.0 * raw_rate ? "met" : "NOT MET");

  // 2. Fast-forward: GetCall of logged results.
  {
    auto log = OpenLog(dir + "/calls", true);
    constexpr int kEpisodes = 100, kSteps = 1000;  // 100k calls with results
    const std::string result(512, 'r');
    std::vector<std::thread> threads;
    for (int t = 0; t < 64; ++t) {
      threads.emplace_back([&, t] {
        for (int e = t; e < kEpisodes; e += 64) {
          std::string ep = fmt::format("ff-{:03d}", e);
          for (uint64_t s = 0; s < kSteps; ++s) {
            CallKey key{ep, s, 0};
            Check(log->PutIntent(key, paddock::replay::RequestFingerprint(key.ToString()), "exec pytest", false), "intent");
            Check(log->PutResult(key, result), "result");
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    Check(log->Compact(), "compact");  // the lookups read SST files through the block cache
    auto run = [&](int nthreads) {
      std::atomic<uint64_t> found{0};
      std::vector<std::thread> ts;
      auto t0 = Clock::now();
      for (int t = 0; t < nthreads; ++t) {
        ts.emplace_back([&, t] {
          std::mt19937_64 rng(t);
          uint64_t n = 0;
          for (int i = 0; i < lookups / nthreads; ++i) {
            CallKey key{fmt::format("ff-{:03d}", rng() % kEpisodes), rng() % kSteps, 0};
            auto call = log->GetCall(key);
            if (call.ok() && call->has_value() && (*call)->has_result) ++n;
          }
          found += n;
        });
      }
      for (auto& t : ts) t.join();
      double s = Seconds(Clock::now() - t0);
      uint64_t total = uint64_t(lookups / nthreads) * nthreads;
      if (found != total) fmt::print(stderr, "log_bench: {} of {} lookups found no result\n", total - found, total);
      return total / s;
    };
    double one = run(1);
    double many = run(lookup_threads);
    fmt::print("fast-forward GetCall (100k logged results, random keys): {:.0f} calls/s on 1 thread, {:.0f} calls/s on {} threads (target >= 200000: {})\n\n",
               one, many, lookup_threads, std::max(one, many) >= 200000 ? "met" : "NOT MET");
  }

  // 3. Resume: read back one episode of 1,000 steps among others.
  {
    const std::string db = dir + "/resume";
    {
      auto log = OpenLog(db, true);
      std::vector<std::thread> threads;
      for (int w = 0; w < 16; ++w) {
        threads.emplace_back([&, w] {
          std::string ep = fmt::format("resume-{:02d}", w);
          for (int i = 0; i < 1000; ++i) Check(log->AppendStep(MakeStep(ep, i)), "append");
        });
      }
      for (auto& t : threads) t.join();
      Check(log->Compact(), "compact");
    }
    auto t_open = Clock::now();
    auto log = OpenLog(db, true);
    double open_ms = 1000 * Seconds(Clock::now() - t_open);
    auto read = [&](const std::string& ep) {
      auto t0 = Clock::now();
      auto steps = log->ReadSteps(ep);
      double ms = 1000 * Seconds(Clock::now() - t0);
      Check(steps.status(), "read steps");
      if (steps->size() != 1000) fmt::print(stderr, "log_bench: read {} steps, not 1000\n", steps->size());
      return ms;
    };
    double cold = read("resume-07");
    double warm = read("resume-07");
    fmt::print("resume: ReadSteps of a 1,000-step episode: {:.1f} ms cold (just reopened; open took {:.0f} ms incl. checksum verification), {:.1f} ms warm (target <= 50 ms: {})\n",
               cold, open_ms, warm, cold <= 50 ? "met" : "NOT MET");
  }
  std::filesystem::remove_all(dir);
  return 0;
}
