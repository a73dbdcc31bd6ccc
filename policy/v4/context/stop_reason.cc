#include "policy/v4/context/stop_reason.h"

#include <array>

namespace paddock::v4 {

namespace {
constexpr std::array<StopReason, 6> kAll = {StopReason::kEos,      StopReason::kNoToolCall,
                                            StopReason::kBudget,   StopReason::kMaxTurns,
                                            StopReason::kPolicyError, StopReason::kFormatError};
}

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kEos: return "eos";
    case StopReason::kNoToolCall: return "no_tool_call";
    case StopReason::kBudget: return "budget";
    case StopReason::kMaxTurns: return "max_turns";
    case StopReason::kPolicyError: return "policy_error";
    case StopReason::kFormatError: return "format_error";
  }
  return "unknown";
}

std::optional<StopReason> ParseStopReason(std::string_view name) {
  for (StopReason r : kAll)
    if (name == StopReasonName(r)) return r;
  return std::nullopt;
}

}  // namespace paddock::v4
