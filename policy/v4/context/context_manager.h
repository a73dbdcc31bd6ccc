// The context manager of one episode: a token budget over its EpisodeContext,
// long observations cut head and tail (in tokens), and the decision whether
// the episode goes on or stops, and why.
//
// The loop it serves:
//   ContextManager cm(std::move(ctx), limits);
//   while (!cm.stopped()) {
//     result = backend.Generate(cm.BackendInput(), cm.MaxNewTokens());
//     if (auto stop = cm.OnPolicyTurn(turn_from(result)); stop) break;   // eos, no_tool_call, …
//     cm.OnObservation(run_tools(...));                                     // may stop: budget
//   }
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/v4/context/episode_context.h"
#include "policy/v4/context/stop_reason.h"
#include "sandbox/base/status.h"

namespace paddock::v4 {

struct ContextLimits {
  size_t max_context_tokens = 131072;    // the episode's budget: every token of the context
  size_t max_turns = 64;                 // policy turns
  size_t max_observation_tokens = 4096;  // a tool result or user content longer than this is cut head and tail
  size_t max_new_tokens = 8192;          // per policy turn, further bounded by the budget left
  size_t min_turn_tokens = 64;           // a policy turn needs at least this much budget left
  // Agentic tasks that end through a tool (e.g. "submit"): a turn without tool
  // calls is then no_tool_call even when it ended with <｜end▁of▁sentence｜>.
  bool tool_calls_required = false;
};

// What one policy generation returned, as the caller saw it.
struct PolicyTurn {
  Status status;              // the backend call; not ok → policy_error (nothing appended)
  std::vector<uint32_t> ids;  // output ids exactly as generated
  // The assistant message decoded from the output (tool calls with ids), or
  // nullopt when the decoder rejected the completion (format_error).
  std::optional<nlohmann::ordered_json> message;
  std::string format_error;  // the decoder's reason, when message is nullopt
};

class ContextManager {
 public:
  using ojson = nlohmann::ordered_json;

  ContextManager(EpisodeContext context, ContextLimits limits);

  // What to send to the backend, and how many tokens it may generate.
  std::span<const uint32_t> BackendInput() const { return context_.BackendInput(); }
  size_t MaxNewTokens() const;
  size_t BudgetLeft() const;

  // Records a policy turn and says whether the episode stops with it, in this
  // order: policy_error (backend failed); budget (output cut because the budget
  // ran out); format_error (undecodable completion); eos / no_tool_call (no
  // tool calls); max_turns (this was the last turn allowed); budget (too little
  // left for another turn). The ids are appended in every case but policy_error.
  // FAILED_PRECONDITION once the episode has stopped.
  Result<std::optional<StopReason>> OnPolicyTurn(const PolicyTurn& turn);

  // Appends an observation (messages as for EpisodeContext::AppendObservation)
  // after cutting each string content longer than max_observation_tokens head
  // and tail; stops with budget when too little is left for another turn.
  Result<std::optional<StopReason>> OnObservation(const ojson& messages);

  bool stopped() const { return stop_.has_value(); }
  std::optional<StopReason> stop_reason() const { return stop_; }
  const std::string& stop_detail() const { return stop_detail_; }  // the error behind policy_error/format_error
  size_t turns() const { return turns_; }
  size_t observations_cut() const { return observations_cut_; }
  size_t tokens_omitted() const { return tokens_omitted_; }
  const EpisodeContext& context() const { return context_; }
  const ContextLimits& limits() const { return limits_; }

 private:
  std::optional<StopReason> Stop(StopReason r, std::string detail = {});

  EpisodeContext context_;
  ContextLimits limits_;
  uint32_t eos_id_ = 0;
  std::optional<StopReason> stop_;
  std::string stop_detail_;
  size_t turns_ = 0;
  size_t observations_cut_ = 0;
  size_t tokens_omitted_ = 0;
};

}  // namespace paddock::v4
