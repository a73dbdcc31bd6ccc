// Internal state of the rollout engine (rollout_engine.cc, episode.cc,
// export.cc). Not a public header.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <nlohmann/json.hpp>

#include "policy/backends/backend.h"
#include "policy/v4/context/episode_context.h"
#include "policy/v4/tokenizer/tokenizer.h"
#include "rollout/engine/fair_scheduler.h"
#include "rollout/engine/groups.h"
#include "rollout/engine/outcome.h"
#include "rollout/engine/rollout_engine.h"
#include "rollout/engine/task.h"

namespace paddock::rollout {

using Clock = std::chrono::steady_clock;

// The system prompt of a task that gives none (the tool list follows it).
inline constexpr const char* kDefaultSystem =
    "You are an agent working in a Linux sandbox. Use the tools to complete the task. "
    "When you are done, call submit.";
int64_t NowUnixMs();

struct Rollout;

// One episode. Its fields are touched only by the one step of it in flight
// (steps are chained: each posts the next), so they need no lock; what other
// threads read (the summary) is copied under Rollout::mu.
struct Episode {
  Rollout* ro = nullptr;
  size_t index = 0;
  const Task* task = nullptr;
  size_t task_index = 0;
  uint32_t sample = 0;
  std::string id;
  v1::EpisodeSummary summary;

  std::shared_ptr<Sandbox> sandbox;
  std::optional<v4::EpisodeContext> ctx;
  std::set<uint64_t> logged_steps;
  uint64_t step = 0;                 // the current turn (1-based)
  size_t last_request_size = 0;      // context size at the previous policy request
  std::shared_ptr<policy::CancelToken> cancel;
  Clock::time_point started, deadline;
  std::optional<Clock::time_point> unavailable_since;
  int backoff_ms = 0;
  int consecutive_malformed = 0;
  std::string submission;
  bool submitted = false;
  bool replaying = true;             // still answering from the log
  uint32_t reapplied = 0, reapply_diffs = 0, in_doubt_reruns = 0;
  uint32_t relocations = 0;       // times its sandbox was lost and the episode restarted from the log
  std::string relocation_note;    // why, for the episode record
  bool relocating = false;        // moved, its new sandbox not created yet
  // Eager relocation: its sandbox reported gone (Sandbox::WatchGone) while the
  // episode waited on the policy, and a new one is built before its next call
  // (rollout_engine.cc, "eager relocation"). Guarded by reloc_mu; the step in
  // flight owns everything else, as above.
  std::mutex reloc_mu;
  uint64_t sandbox_serial = 0;    // which sandbox a gone report is about
  bool idle = false;              // the step let go of the sandbox (its turn is at the policy, or queued)
  uint64_t idle_through = 0;      // turns finished when it did (their calls are logged)
  bool gone_reported = false;     // the sandbox of sandbox_serial said it is gone
  bool rebuilding = false;        // a rebuild runs for it
  std::shared_ptr<Sandbox> rebuilt;  // built, not adopted yet
  std::string rebuilt_note;
  uint32_t rebuilt_reapplied = 0, rebuilt_diffs = 0;
  std::function<void()> after_rebuild;  // the policy's answer, parked until the rebuild ends
  uint32_t infra_retries = 0;     // times it ended infra and was run again (retry_infra)
  std::string retry_note;         // why, per retry
  int64_t queue_us = -1;          // rollout start (or resume) → the episode's first start; -1 until then
  bool waiting_for_sandbox = false;
  int create_backoff_ms = 0;
  std::optional<FairScheduler::Slot> slot;  // its slot of the engine's bound, while it runs
  Clock::time_point policy_wait_start;
  int64_t step_policy_wait_us = 0;   // the current turn's wait for a policy slot
  // The policy version its request in flight was asked under, and whether a
  // policy update aborted it (it is then asked again, not interrupted).
  std::string asked_version;
  uint64_t asked_epoch = 0;
  bool aborted_for_update = false;
  // Policy epochs its turns ran under (live or replayed), for policy_lag.
  std::optional<uint64_t> min_epoch, max_epoch;
  std::string last_version;
  // The request being retried.
  policy::GenerateRequest pending_request;
  std::string pending_fingerprint;
};

struct TaskPrompt {
  nlohmann::ordered_json tools;       // OpenAI-style schemas (prompt order)
  nlohmann::json tools_plain;         // the same for the decoder
  nlohmann::ordered_json start_request;
};

struct Rollout {
  std::string id;
  v1::StartRolloutRequest req;
  bool local_client = false;  // started or resumed over the unix socket (SandboxSpec::local_client)
  std::vector<Task> tasks;
  std::vector<TaskPrompt> prompts;
  std::shared_ptr<policy::PolicyBackend> backend;
  std::string policy_label;           // "kind url"
  std::vector<std::unique_ptr<Episode>> episodes;
  int64_t started_unix_ms = 0;
  Clock::time_point started;
  Clock::time_point resumed_at;
  bool resume_pending_live = false;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<size_t> pending;         // episodes to start, in order
  size_t active = 0;
  uint64_t flow = 0;                  // its id in the engine's FairScheduler (one per run)
  size_t waiting_for_sandbox = 0;  // episodes whose create found no node (or a draining daemon), retrying
  size_t concurrency = 64;
  size_t policy_in_flight = 0, max_in_flight = 64;
  std::deque<std::function<void()>> policy_waiters;
  std::set<Episode*> in_policy;       // episodes with a request in flight (aborted by a policy update)
  // The policy version new generations run under; paused while an update
  // drains the generations in flight and the server loads new weights.
  std::string policy_version = "v0";
  uint64_t policy_epoch = 0;
  bool policy_paused = false;
  // A fork (ForkEpisode) replays its parent's first `fork_step` turns, which
  // were asked with the parent's seed index; 0: not a fork.
  uint64_t fork_step = 0;
  size_t fork_seed_index = 0;
  std::string state = "running";      // running|finished|cancelled|interrupted
  bool stopping = false;              // cancel or drain: no new steps
  bool cancelled = false;
  std::vector<v1::EpisodeSummary> finished;  // in finish order (done or failed)
  uint32_t done = 0, failed = 0, cancelled_count = 0;
  double reward_sum = 0;
  std::vector<double> sandbox_start_ms;
  GroupTracker groups;                // which groups (tasks) have all their samples ended
  uint32_t infra = 0, infra_retries = 0;
  uint64_t generation = 0;            // bumped on every change, for watchers

  std::atomic<uint64_t> tool_calls{0}, policy_calls{0}, generated_tokens{0};
  std::atomic<uint64_t> replayed_policy{0}, replayed_tools{0};
  // Rate samples for the progress line.
  Clock::time_point rate_t;
  uint64_t rate_tools = 0, rate_tokens = 0;
  double tools_per_s = 0, tokens_per_s = 0;
};

// Export of one episode from the log (export.cc).
Result<std::string> ExportEpisodeLine(replay::TrajectoryLog& log, const v4::Tokenizer* tokenizer,
                                      const v1::StartRolloutRequest& req, const Task* task,
                                      const v1::EpisodeSummary& summary);

std::string SummaryJson(const v1::EpisodeSummary& s);
bool ParseSummaryJson(const std::string& json, v1::EpisodeSummary* s);

}  // namespace paddock::rollout
