#include "policy/v4/context/context_manager.h"

#include <algorithm>

#include "policy/v4/context/observation_cut.h"
#include "policy/v4/encode/encoder.h"

namespace paddock::v4 {

using ojson = nlohmann::ordered_json;

ContextManager::ContextManager(EpisodeContext context, ContextLimits limits)
    : context_(std::move(context)), limits_(limits) {
  eos_id_ = context_.tokenizer().TokenId(kEndOfSentence).value_or(0);
  if (BudgetLeft() < limits_.min_turn_tokens)
    Stop(StopReason::kBudget, "the prompt leaves too little of the budget for a policy turn");
}

size_t ContextManager::BudgetLeft() const {
  return context_.size() >= limits_.max_context_tokens ? 0 : limits_.max_context_tokens - context_.size();
}

size_t ContextManager::MaxNewTokens() const {
  return stopped() ? 0 : std::min(limits_.max_new_tokens, BudgetLeft());
}

std::optional<StopReason> ContextManager::Stop(StopReason r, std::string detail) {
  stop_ = r;
  stop_detail_ = std::move(detail);
  return stop_;
}

Result<std::optional<StopReason>> ContextManager::OnPolicyTurn(const PolicyTurn& turn) {
  if (stopped())
    return Error(Code::kFailedPrecondition, "episode already stopped ({})", StopReasonName(*stop_));
  if (!turn.status.ok()) return Stop(StopReason::kPolicyError, turn.status.ToString());

  const size_t budget_before = BudgetLeft();
  const bool ended = !turn.ids.empty() && turn.ids.back() == eos_id_;
  ojson message = turn.message ? *turn.message
                               : ojson{{"role", "assistant"}, {"content", context_.tokenizer().Decode(turn.ids)}};
  PADDOCK_RETURN_IF_ERROR(context_.AppendPolicyOutput(turn.ids, std::move(message)));
  ++turns_;

  if (!ended && turn.ids.size() >= budget_before)
    return Stop(StopReason::kBudget, "the policy turn was cut at the end of the token budget");
  if (!turn.message) return Stop(StopReason::kFormatError, turn.format_error);
  auto calls = turn.message->find("tool_calls");
  const bool has_calls = calls != turn.message->end() && calls->is_array() && !calls->empty();
  if (!has_calls) {
    if (ended && !limits_.tool_calls_required) return Stop(StopReason::kEos);
    return Stop(StopReason::kNoToolCall, ended ? "the task requires tool calls" : "the turn ended without EOS");
  }
  if (turns_ >= limits_.max_turns) return Stop(StopReason::kMaxTurns);
  if (BudgetLeft() < limits_.min_turn_tokens)
    return Stop(StopReason::kBudget, "too little of the token budget left for another turn");
  return std::optional<StopReason>();
}

Result<std::optional<StopReason>> ContextManager::OnObservation(const ojson& messages) {
  if (stopped())
    return Error(Code::kFailedPrecondition, "episode already stopped ({})", StopReasonName(*stop_));
  if (!messages.is_array()) return Error(Code::kInvalidArgument, "observation: must be an array of messages");
  ojson cut = messages;
  size_t n_cut = 0, omitted = 0;
  for (ojson& m : cut) {
    if (!m.is_object()) continue;
    auto content = m.find("content");
    if (content == m.end() || !content->is_string()) continue;
    CutText c = CutHeadTail(context_.tokenizer(), content->get_ref<const std::string&>(),
                            limits_.max_observation_tokens);
    if (!c.cut) continue;
    *content = std::move(c.text);
    ++n_cut;
    omitted += c.tokens_omitted;
  }
  PADDOCK_RETURN_IF_ERROR(context_.AppendObservation(cut).status());
  observations_cut_ += n_cut;
  tokens_omitted_ += omitted;
  if (BudgetLeft() < limits_.min_turn_tokens)
    return Stop(StopReason::kBudget, "too little of the token budget left for another turn");
  return std::optional<StopReason>();
}

}  // namespace paddock::v4
