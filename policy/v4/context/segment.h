// Segments of an episode's token context: which part of the ids came from
// the prompt, which the policy generated, which are observations.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace paddock::v4 {

enum class SegmentKind {
  kPrompt,        // the rendered opening prompt (system, tools, first user turn)
  kPolicyOutput,  // ids as the policy generated them; the only trained-on tokens
  kObservation,   // tool results, a later user turn, reminders: rendered and tokenized suffix
};

// "prompt", "policy_output", "observation".
const char* SegmentKindName(SegmentKind kind);
std::optional<SegmentKind> ParseSegmentKind(std::string_view name);

// A half-open range of the context: ids [begin, end) and the bytes
// [text_begin, text_end) of EpisodeContext::text() those ids decode to.
struct Segment {
  SegmentKind kind;
  size_t begin = 0;
  size_t end = 0;
  size_t text_begin = 0;
  size_t text_end = 0;
  size_t size() const { return end - begin; }
};

}  // namespace paddock::v4
