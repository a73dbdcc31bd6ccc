// Internals of the V4 tokenizer, one concern per .cc file:
//   spec.cc          tokenizer.json → TokenizerSpec (loading and validation)
//   byte_level.cc    GPT-2 byte ↔ unicode alphabet of the ByteLevel pre-tokenizer
//   added_tokens.cc  special/added tokens, matched before pre-tokenization
//   pre_tokenizer.cc the regex Splits, with PCRE2 (JIT when available)
//   bpe.cc           byte-level BPE with merge ranks and a per-thread word cache
//   tokenizer.cc     the public Tokenizer: Load, Encode, Decode
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::v4::tok {

// ---- spec.cc ---------------------------------------------------------------

struct AddedTokenSpec {
  uint32_t id = 0;
  std::string content;
  bool special = false;
  bool normalized = false;
};

struct SplitSpec {
  std::string pattern;  // the regex as written in tokenizer.json (Oniguruma syntax)
};

// What Paddock needs from a Hugging Face tokenizer.json, validated.
struct TokenizerSpec {
  std::vector<AddedTokenSpec> added_tokens;
  std::vector<SplitSpec> splits;  // applied in order, each with behavior Isolated
  // model.vocab, keys in the ByteLevel alphabet.
  std::vector<std::pair<std::string, uint32_t>> vocab;
  // model.merges as pairs of vocab keys, in rank order.
  std::vector<std::pair<std::string, std::string>> merges;
};

// `path` is used in messages only.
Result<TokenizerSpec> ParseSpec(std::string_view json_text, const std::string& path);

// The hint every "can't load the tokenizer" error ends with.
std::string InstallHint();

// ---- byte_level.cc ---------------------------------------------------------

// Byte → code point of the ByteLevel alphabet (GPT-2's bytes_to_unicode).
char32_t ByteToCodepoint(uint8_t b);
// A string in the ByteLevel alphabet → the raw bytes it stands for.
// False when it contains a character outside the alphabet.
bool ByteLevelToBytes(std::string_view s, std::string* out);
// UTF-8 encode one code point.
void AppendUtf8(char32_t cp, std::string* out);

// ---- added_tokens.cc -------------------------------------------------------

// Splits text on added tokens the way Hugging Face's AddedVocabulary does: first
// the non-normalized tokens (leftmost-longest), then the normalized ones in the
// gaps (the normalizer is the identity, which spec.cc checks).
class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedTokenSpec>& tokens);
  struct Piece {
    std::string_view text;
    int64_t id;  // -1: ordinary text, to pre-tokenize
  };
  void Split(std::string_view text, std::vector<Piece>* out) const;

 private:
  struct Trie {
    // Node 0 is the root. Children in a flat hash: (node << 8 | byte) → node.
    std::unordered_map<uint64_t, uint32_t> next;
    std::vector<int64_t> id;  // per node: token id ending here, or -1
    bool first_byte[256] = {};
    bool single_byte[256] = {};       // one-byte tokens
    uint64_t first_two[1024] = {};    // bitset over (byte0 << 8 | byte1) of every token
    // Cheap test before walking the trie: can a token start at text[i]?
    bool MayStart(std::string_view text, size_t i) const {
      auto c = static_cast<unsigned char>(text[i]);
      if (single_byte[c]) return true;
      if (!first_byte[c] || i + 1 >= text.size()) return false;
      unsigned k = unsigned(c) << 8 | static_cast<unsigned char>(text[i + 1]);
      return first_two[k >> 6] >> (k & 63) & 1;
    }
    bool empty() const { return id.size() <= 1; }
    void Add(std::string_view s, uint32_t token_id);
    // Longest token starting at text[pos]; returns its length (0: none).
    size_t Longest(std::string_view text, size_t pos, int64_t* id) const;
  };
  void SplitWith(const Trie& trie, std::string_view text, std::vector<Piece>* out) const;
  Trie raw_, normalized_;
};

// ---- pre_tokenizer.cc ------------------------------------------------------

// Translates an Oniguruma / Rust-regex pattern to PCRE2 syntax with the same
// meaning (\s and \S are Unicode White_Space as in Oniguruma).
Result<std::string> TranslateRegex(std::string_view pattern);

class PreTokenizer {
 public:
  static Result<std::unique_ptr<PreTokenizer>> Create(const std::vector<SplitSpec>& splits);
  ~PreTokenizer();
  // Appends the pieces of `text` (views into it), in order. Invalid UTF-8 never
  // matches a pattern, so such bytes stay in the unmatched pieces.
  void Split(std::string_view text, std::vector<std::string_view>* out) const;
  bool jit() const { return jit_; }

 private:
  PreTokenizer() = default;
  struct Regex;
  void SplitLevel(size_t level, std::string_view text, std::vector<std::string_view>* out) const;
  std::vector<std::unique_ptr<Regex>> regexes_;
  bool jit_ = false;
};

// ---- bpe.cc ----------------------------------------------------------------

class Bpe {
 public:
  // vocab keys and merges in raw bytes (already mapped back from ByteLevel).
  static Result<std::unique_ptr<Bpe>> Create(
      const std::vector<std::pair<std::string, uint32_t>>& byte_vocab,
      const std::vector<std::pair<std::string, std::string>>& byte_merges);
  // Appends the ids of one pre-tokenized word (raw bytes).
  void EncodeWord(std::string_view word, std::vector<uint32_t>* out) const;

 private:
  Bpe() = default;
  void Merge(std::string_view word, std::vector<uint32_t>* out) const;
  struct MergeInfo {
    uint32_t rank;
    uint32_t id;
  };
  // Open-addressing table (left id << 32 | right id) → merge, power-of-two sized:
  // looked up for every adjacent pair, so it must be cheaper than unordered_map.
  struct Slot {
    uint64_t key;  // kEmpty when free
    MergeInfo info;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  const MergeInfo* Find(uint32_t left, uint32_t right) const {
    uint64_t key = (uint64_t(left) << 32) | right;
    // Most pairs looked up have no merge: a 128 KiB bit filter (in L2) says so
    // without touching the multi-MiB table.
    uint64_t f = (key * 0xD6E8FEB86659FD93ull) >> (64 - kFilterBits);
    if (!(filter_[f >> 6] >> (f & 63) & 1)) return nullptr;
    size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);
    for (;;) {
      const Slot& s = table_[i];
      if (s.key == key) return &s.info;
      if (s.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  void Insert(uint64_t key, MergeInfo info);
  static constexpr int kFilterBits = 20;
  uint32_t byte_id_[256] = {};
  // Merges of two single bytes, dense: the first round of every word.
  std::vector<MergeInfo> byte_pair_;  // [a << 8 | b]; rank UINT32_MAX when none
  std::vector<uint64_t> filter_;
  std::vector<Slot> table_;
  size_t mask_ = 0;
  int shift_ = 64;
  uint64_t instance_ = 0;                            // keys the per-thread cache
};

}  // namespace paddock::v4::tok
