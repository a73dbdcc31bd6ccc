#include "policy/v4/context/observation_cut.h"

#include <vector>

#include <fmt/format.h>

namespace paddock::v4 {
namespace {

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

size_t SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Drops a character cut off at the end.
void TrimIncompleteTail(std::string& s) {
  size_t i = s.size(), back = 0;
  while (i > 0 && back < 4 && IsContinuation(static_cast<unsigned char>(s[i - 1]))) --i, ++back;
  if (i == 0) return;
  unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  if (lead >= 0x80 && SequenceLength(lead) > back + 1) s.resize(i - 1);
}

// Drops the continuation bytes of a character cut off at the start.
void TrimIncompleteHead(std::string& s) {
  size_t i = 0;
  while (i < s.size() && i < 3 && IsContinuation(static_cast<unsigned char>(s[i]))) ++i;
  s.erase(0, i);
}

}  // namespace

CutText CutHeadTail(const Tokenizer& tokenizer, std::string_view text, size_t max_tokens) {
  std::vector<uint32_t> ids = tokenizer.Encode(text);
  CutText out;
  out.tokens_before = ids.size();
  if (ids.size() <= max_tokens) {
    out.text = std::string(text);
    return out;
  }
  const size_t n = ids.size();
  out.cut = true;
  const size_t marker_tokens = tokenizer.Encode(fmt::format(fmt::runtime(kOmittedMarkerFormat), n)).size();
  size_t keep = max_tokens > marker_tokens ? max_tokens - marker_tokens : 0;
  // Seams can tokenize differently from the pieces: shrink until it fits.
  for (;;) {
    size_t head = (keep + 1) / 2, tail = keep / 2;
    std::string head_text = tokenizer.Decode(std::span<const uint32_t>(ids.data(), head));
    std::string tail_text = tokenizer.Decode(std::span<const uint32_t>(ids.data() + n - tail, tail));
    TrimIncompleteTail(head_text);
    TrimIncompleteHead(tail_text);
    out.tokens_omitted = n - head - tail;
    out.text = head_text + fmt::format(fmt::runtime(kOmittedMarkerFormat), out.tokens_omitted) + tail_text;
    size_t got = tokenizer.Encode(out.text).size();
    if (got <= max_tokens || keep == 0) return out;
    size_t excess = got - max_tokens;
    keep = keep > excess ? keep - excess : 0;
  }
}

}  // namespace paddock::v4
