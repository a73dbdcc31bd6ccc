// The rollout engine inside paddockd: runs the episodes of a rollout (a set of
// tasks against one policy) and logs every step in the trajectory log.
//
// One episode: sandbox (through the SandboxManager and its warm pools) →
// setup commands → loop { policy generation on the token-in-token-out context
// → DSML decode → tool calls in order → observations appended } until a stop
// reason → verifier → reward.
//
// What a caller may rely on:
// - Every policy call and tool call is write-ahead logged under the key
//   (episode, step, call): policy call 0, tool calls 1..n; the verifier at
//   step kVerifierStep. A resumed episode replays its logged policy outputs
//   (same ids, same logprobs) and tool results (fast-forward), then goes on
//   live. The first policy call whose prompt differs from the logged one
//   fails the episode (the log names both requests) instead of diverging.
// - A resumed episode always gets a new sandbox (the old one died with the
//   daemon, or was destroyed at cancel/drain). It is rebuilt: setup re-run,
//   then the replayed calls that change the sandbox (bash, write_file,
//   str_replace) re-applied in order with their outputs discarded (not for
//   function sandboxes, which keep no state between calls), so the
//   sandbox holds each call's effect exactly once. A call that was in doubt
//   (intent, no result) ran, if at all, in the sandbox that is gone, so it
//   runs again in the rebuilt one; the episode's rebuild_note says so.
// - Scheduling: up to `concurrency` episodes of a rollout run at once, started
//   in task order, and up to EngineOptions::max_running_episodes over all
//   rollouts; when that bound is reached, episodes queue (never fail) and each
//   free slot goes to the highest priority with episodes queued, among equal
//   priorities by sandbox-time in proportion to weight (fair_scheduler.h).
//   Policy requests in flight are bounded per rollout (FIFO waiters, so
//   progress is fair); sandbox calls and log writes run on a
//   bounded blocking pool, never on the I/O thread. Transient policy errors
//   (UNAVAILABLE, RESOURCE_EXHAUSTED, a request deadline) are retried with
//   backoff until the rollout's unavailable_wait_s or the episode deadline.
// - A sandbox that reports itself gone (Sandbox::WatchGone: a front's node
//   was declared lost, after its lease fenced the sandbox) while its episode
//   is idle (its turn at the policy, or its next turn queued) is rebuilt at
//   once, on up to relocation_threads threads: a new sandbox, setup re-run,
//   the logged calls of the finished turns that changed the old one
//   re-applied in order; the policy's answer, when it comes first, waits for
//   it. The episode keeps its slot (the rebuild is its work, not a new
//   episode's) and its turn. An episode whose call meets the lost sandbox
//   first (or whose rebuild failed) starts again from the log, as above, its
//   new sandbox built on the same threads.
// - Cancel and Drain stop episodes at their next step boundary (in-flight
//   policy requests are cancelled; a running tool call finishes and is
//   logged). Their steps stay in the log and ResumeRollout continues them.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "replay/trajectory_log.h"
#include "rollout.pb.h"
#include "sandbox/base/status.h"
#include "sandbox/manager.h"

namespace paddock::rollout {

inline constexpr uint64_t kVerifierStep = 1ull << 32;

struct EngineOptions {
  size_t blocking_threads = 64;  // sandbox creates, execs and log writes
  std::string tokenizer_path;    // empty: v4::Tokenizer::DefaultPath()
  // The verifier's trusted toolset: a static busybox (Debian's busybox-static)
  // whose applets the verifier's shell runs instead of the sandbox's tools,
  // sealed from the agent (ExecRequest::trusted_program). Unreadable: the
  // verifier runs the sandbox's /bin/sh, with a warning.
  std::string verifier_toolset = "/bin/busybox";
  // Episodes running at once over all rollouts (paddockd
  // --max-running-episodes); 0: the SandboxManager's max_sandboxes, so that
  // episodes queue in the engine rather than find the daemon full.
  uint32_t max_running_episodes = 0;
  // Sandboxes rebuilt at once for episodes whose sandbox reported gone (a
  // front's lost node) while idle: eager relocation runs on threads of its
  // own, this many, so that a thousand rebuilds neither wait behind the turns
  // queued on the blocking pool nor take its threads from them. A rebuild
  // mostly waits (the node's create, the setup, a log sync): at 16, 1,000 took
  // 2.0 s in fleet_sim_bench; at 64, 0.6 s (bench/README.md).
  size_t relocation_threads = 64;
};

// Counters of the engine, for benchmarks and tests.
struct EngineStats {
  uint64_t turns = 0;                 // policy turns completed (live or replayed)
  uint64_t live_policy_calls = 0;
  uint64_t replayed_policy_calls = 0;
  uint64_t live_tool_calls = 0;
  uint64_t replayed_tool_calls = 0;
  uint64_t reapplied_tool_calls = 0;  // re-run to rebuild a sandbox
  uint64_t relocated_episodes = 0;    // moved to a new sandbox after theirs was lost (a node), counted when it is up
  uint64_t eager_relocations = 0;     // of those, rebuilt while the episode waited on the policy (before its next call)
  int64_t last_resume_to_live_us = -1;  // ResumeRollout → its first live policy call
  uint64_t running_episodes = 0;      // now, over all rollouts
  uint64_t queued_episodes = 0;       // ready, waiting for a slot of max_running_episodes
  uint64_t max_running_episodes = 0;  // the bound in effect
};

class RolloutEngine {
 public:
  RolloutEngine(SandboxManager& manager, replay::TrajectoryLog& log, EngineOptions options = {});
  ~RolloutEngine();  // drains with no grace
  RolloutEngine(const RolloutEngine&) = delete;
  RolloutEngine& operator=(const RolloutEngine&) = delete;

  // INVALID_ARGUMENT for bad tasks ("line N: field 'x': …") or a bad policy
  // spec; ALREADY_EXISTS for a rollout id in use; FAILED_PRECONDITION when
  // the tokenizer cannot be loaded.
  // `local_client`: asked for over the daemon's unix socket, so task images
  // pulled on first use may come from loopback and --insecure-registry hosts
  // (SandboxSpec::local_client); TCP clients' rollouts pull as their Pull does.
  Result<v1::StartRolloutResponse> Start(v1::StartRolloutRequest request, bool local_client = false);
  // NOT_FOUND for an unknown rollout; FAILED_PRECONDITION while it runs.
  Result<v1::ResumeRolloutResponse> Resume(const v1::ResumeRolloutRequest& request, bool local_client = false);
  // Returns how many episodes were cancelled.
  Result<uint32_t> Cancel(const std::string& rollout_id, const std::string& episode_id = "");
  Result<v1::RolloutProgress> Progress(const std::string& rollout_id);
  Result<std::vector<v1::RolloutProgress>> List(size_t limit = 0);
  Result<v1::EpisodeDetail> GetEpisode(const std::string& episode_id);
  // Sends events until the rollout stops running, `send` returns false or
  // `stop` returns true. NOT_FOUND for an unknown rollout.
  Status Watch(const v1::WatchRequest& request, const std::function<bool(const v1::RolloutEvent&)>& send,
               const std::function<bool()>& stop);
  // JSON lines (docs/export.schema.json), a line per episode, to `sink`
  // (return false to stop).
  Status Export(const std::string& rollout_id, bool include_unfinished,
                const std::function<bool(const std::string&)>& sink);
  // The rollout's complete groups (samples of one task, all ended) in
  // completion order, minus those `consumer` acknowledged; with `follow`,
  // until the rollout stops running, `send` returns false or `stop` returns
  // true. NOT_FOUND for an unknown rollout, INVALID_ARGUMENT for a bad consumer.
  Status StreamGroups(const v1::StreamGroupsRequest& request,
                      const std::function<bool(const v1::EpisodeGroup&)>& send, const std::function<bool()>& stop);
  // Records what a consumer took (durably, in the trajectory log).
  Result<v1::AckGroupsResponse> AckGroups(const v1::AckGroupsRequest& request);
  // A new rollout of forks of one episode at a turn (Rollouts.ForkEpisode):
  // each fork's log starts with the episode's first `at_step` turns, which it
  // replays (its sandbox rebuilt by re-applying the logged calls that changed
  // it), then it samples on its own. NOT_FOUND for an unknown episode or task;
  // FAILED_PRECONDITION when the turn is not logged, ended the episode, or a
  // call before it is in doubt.
  Result<v1::ForkEpisodeResponse> Fork(const v1::ForkEpisodeRequest& request, bool local_client = false);
  // A new policy version for a running rollout (Rollouts.UpdatePolicy):
  // pauses new generations, lets those in flight finish (or aborts and re-asks
  // them), has the server load the weights, resumes. NOT_FOUND when the
  // rollout is not running here; FAILED_PRECONDITION when the server refuses
  // the weights (the old version stays) or another update runs.
  Result<v1::UpdatePolicyResponse> UpdatePolicy(const v1::UpdatePolicyRequest& request);
  // Graceful drain (SIGTERM): no new steps start; waits up to `grace` for
  // running steps, cancelling in-flight policy requests. Rollouts left
  // "interrupted" resume later. Blocks; idempotent.
  void Drain(std::chrono::milliseconds grace);

  EngineStats stats() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace paddock::rollout
