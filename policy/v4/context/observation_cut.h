// Cutting a long observation head and tail, measured in tokens.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "policy/v4/tokenizer/tokenizer.h"

namespace paddock::v4 {

// The marker put where the middle was cut; {} is the number of tokens omitted.
inline constexpr std::string_view kOmittedMarkerFormat = "\n[... {} tokens omitted ...]\n";

struct CutText {
  std::string text;
  bool cut = false;
  size_t tokens_before = 0;  // tokens of the text on its own
  size_t tokens_omitted = 0;
};

// Text of at most `max_tokens` tokens (tokenized on its own) is returned as
// is. Longer text keeps its first and last tokens — half of what is left after
// the marker each, the head taking the odd one — around the marker. Cuts move
// to UTF-8 character boundaries, so the result is valid UTF-8 when the input
// was; tokenized on its own it has at most `max_tokens` tokens (a cut never
// makes a text longer than the original).
CutText CutHeadTail(const Tokenizer& tokenizer, std::string_view text, size_t max_tokens);

}  // namespace paddock::v4
