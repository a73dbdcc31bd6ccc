// Why an episode ended.
#pragma once

#include <optional>
#include <string_view>

namespace paddock::v4 {

enum class StopReason {
  kEos,          // the policy ended its turn with <｜end▁of▁sentence｜> and called no tool: its final answer
  kNoToolCall,   // a turn without tool calls where one was required, or one that stopped without EOS
  kBudget,       // the episode's token budget is spent (or too little is left for another turn)
  kMaxTurns,     // the policy had its last allowed turn
  kPolicyError,  // the backend failed (down, 5xx, garbage, deadline)
  kFormatError,  // the completion is not valid V4 output (malformed DSML, missing </think>, …)
};

// "eos", "no_tool_call", "budget", "max_turns", "policy_error", "format_error".
const char* StopReasonName(StopReason reason);
std::optional<StopReason> ParseStopReason(std::string_view name);

}  // namespace paddock::v4
