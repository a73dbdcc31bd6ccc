// Added (special) tokens are cut out of the text before pre-tokenization, as in
// Hugging Face's AddedVocabulary: leftmost-longest matches of the non-normalized
// tokens first, then of the normalized ones in what is left. A byte trie per set.
#include "policy/v4/tokenizer/internal.h"

namespace paddock::v4::tok {

void AddedTokenMatcher::Trie::Add(std::string_view s, uint32_t token_id) {
  if (id.empty()) id.push_back(-1);
  uint32_t node = 0;
  for (unsigned char c : s) {
    uint64_t key = (uint64_t(node) << 8) | c;
    auto it = next.find(key);
    if (it == next.end()) {
      uint32_t n = uint32_t(id.size());
      id.push_back(-1);
      it = next.emplace(key, n).first;
    }
    node = it->second;
  }
  auto c0 = static_cast<unsigned char>(s[0]);
  first_byte[c0] = true;
  if (s.size() == 1) {
    single_byte[c0] = true;
  } else {
    unsigned k = unsigned(c0) << 8 | static_cast<unsigned char>(s[1]);
    first_two[k >> 6] |= uint64_t(1) << (k & 63);
  }
  if (id[node] < 0) id[node] = token_id;  // first one listed wins on duplicates
}

size_t AddedTokenMatcher::Trie::Longest(std::string_view text, size_t pos, int64_t* out_id) const {
  uint32_t node = 0;
  size_t best = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = next.find((uint64_t(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == next.end()) break;
    node = it->second;
    if (id[node] >= 0) {
      best = i + 1 - pos;
      *out_id = id[node];
    }
  }
  return best;
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedTokenSpec>& tokens) {
  for (const auto& t : tokens) (t.normalized ? normalized_ : raw_).Add(t.content, t.id);
}

void AddedTokenMatcher::SplitWith(const Trie& trie, std::string_view text,
                                  std::vector<Piece>* out) const {
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!trie.MayStart(text, i)) continue;
    int64_t id = -1;
    size_t len = trie.Longest(text, i, &id);
    if (len == 0) continue;
    if (i > start) out->push_back({text.substr(start, i - start), -1});
    out->push_back({text.substr(i, len), id});
    i += len - 1;
    start = i + 1;
  }
  if (start < text.size()) out->push_back({text.substr(start), -1});
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<Piece>* out) const {
  if (normalized_.empty()) return SplitWith(raw_, text, out);
  std::vector<Piece> first;
  SplitWith(raw_, text, &first);
  for (const Piece& p : first) {
    if (p.id >= 0) out->push_back(p);
    else SplitWith(normalized_, p.text, out);
  }
}

}  // namespace paddock::v4::tok
