#include "policy/v4/context/segment.h"

namespace paddock::v4 {

const char* SegmentKindName(SegmentKind kind) {
  switch (kind) {
    case SegmentKind::kPrompt: return "prompt";
    case SegmentKind::kPolicyOutput: return "policy_output";
    case SegmentKind::kObservation: return "observation";
  }
  return "unknown";
}

std::optional<SegmentKind> ParseSegmentKind(std::string_view name) {
  if (name == "prompt") return SegmentKind::kPrompt;
  if (name == "policy_output") return SegmentKind::kPolicyOutput;
  if (name == "observation") return SegmentKind::kObservation;
  return std::nullopt;
}

}  // namespace paddock::v4
