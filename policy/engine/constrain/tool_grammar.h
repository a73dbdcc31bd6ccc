// Constrained decoding for tool use: a TokenConstraint (policy/engine/engine.h)
// that keeps a sampled completion a well-formed DeepSeek-V4 assistant message
// whose tool calls follow the tool schemas, so the strict decoder
// (policy/v4/decode) always parses it.
//
// The grammar (docs/paddock-policy.md, "Constraint grammar"):
//
//   [thinking]  REASONING "</think>"
//   CONTENT ( EOS
//           | "\n\n<｜DSML｜tool_calls" ">\n"
//               ( "<｜DSML｜invoke name=\"" TOOL "\">\n"
//                   ( "<｜DSML｜parameter name=\"" PARAM "\" string=\"" FLAG "\">"
//                       VALUE "</｜DSML｜parameter" ">\n" )*
//                 "</｜DSML｜invoke>\n" )+
//             "</｜DSML｜tool_calls>" EOS )
//
// REASONING, CONTENT and string VALUEs are free text (valid UTF-8, no control
// bytes but \t \n \r) that may not form any marker the decoder would stop at;
// each has a length cap in code points after which only its closing marker may
// follow. FLAG is "true" for string-typed parameters, else "false" and VALUE is
// JSON shaped by the parameter's schema (type, enum, const, properties with
// required, items, maxItems, maxLength). Each parameter appears at most once;
// an invoke closes only after all required parameters. EOS is the
// <｜end▁of▁sentence｜> token itself, never spelled out in bytes.
//
// The automaton runs over the bytes of each token (decoded once per vocabulary
// id). A step's allowed set is computed by walking a trie of all token byte
// strings with the automaton, pruning dead prefixes, and is cached per
// automaton state (counters clamped where they cannot change the answer), so
// repeated states (all of free text, repeated structure) cost one lookup.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/engine/engine.h"
#include "policy/v4/tokenizer/tokenizer.h"
#include "sandbox/base/status.h"

namespace paddock::policy::engine::constrain {

// The vocabulary as bytes: each id's decoded bytes, which ids are special
// (added) tokens, and a trie over the regular ones. Built once per tokenizer
// and shared by every grammar.
class TokenBytes {
 public:
  static std::shared_ptr<const TokenBytes> Build(const v4::Tokenizer& tokenizer);

  size_t vocab_size() const { return bytes_.size(); }
  const std::string& bytes(int32_t id) const { return bytes_[static_cast<size_t>(id)]; }
  bool special(int32_t id) const { return special_[static_cast<size_t>(id)] != 0; }
  int32_t eos_id() const { return eos_id_; }
  size_t max_token_bytes() const { return max_len_; }

  struct Node {
    uint32_t first_child = 0;   // 0: none (the root is node 0 and never a child)
    uint32_t next_sibling = 0;
    uint32_t tokens_begin = 0;  // ids whose bytes end here: ids_[tokens_begin, tokens_end)
    uint32_t tokens_end = 0;
    uint8_t byte = 0;
  };
  const std::vector<Node>& trie() const { return trie_; }
  const std::vector<int32_t>& trie_ids() const { return ids_; }
  // Regular ids whose bytes are complete UTF-8 with no control byte and none of
  // '<', '/', '\n' or U+F000..U+FFFF (the first bytes of every marker): in free
  // text with nothing pending, these are always allowed and change nothing but
  // the length. The others are checked one by one there.
  const std::vector<int32_t>& plain_ids() const { return plain_ids_; }
  const std::vector<int32_t>& other_ids() const { return other_ids_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<uint8_t> special_;
  int32_t eos_id_ = -1;
  size_t max_len_ = 0;
  std::vector<Node> trie_;
  std::vector<int32_t> ids_;
  std::vector<int32_t> plain_ids_, other_ids_;
};

struct GrammarOptions {
  bool thinking = true;            // the completion opens with reasoning, closed by </think>
  bool require_tool_call = false;  // tool_choice "required" / a named function: no plain-text end
  std::vector<std::string> only_tools;  // non-empty: only these tools may be called
  int max_tool_calls = 4;          // invokes per message
  uint32_t max_reasoning_chars = 512;  // code points before </think> is forced
  uint32_t max_content_chars = 512;
  uint32_t max_string_chars = 256;     // string parameter values (and JSON strings)
  uint32_t max_array_items = 8;
};

// Compiled tools + vocabulary; immutable except its thread-safe mask cache.
// Shared by every sequence that uses the same tools and options.
class ToolGrammar : public std::enable_shared_from_this<ToolGrammar> {
 public:
  // `tools`: OpenAI tool list ([{"type":"function","function":{name,parameters}}]
  // or bare function objects). Names containing '"' or control bytes, more
  // than 64 parameters, or a non-object parameters schema are INVALID_ARGUMENT.
  static Result<std::shared_ptr<ToolGrammar>> Build(const nlohmann::json& tools,
                                                    std::shared_ptr<const TokenBytes> vocab,
                                                    GrammarOptions options = {});

  // A constraint for one sequence. `max_new_tokens` (0: unbounded) lets the
  // constraint start closing every open block early enough that the message
  // still ends well-formed within the budget.
  std::unique_ptr<TokenConstraint> NewConstraint(int max_new_tokens = 0) const;

  const TokenBytes& vocab() const { return *vocab_; }
  const GrammarOptions& options() const { return options_; }

  // Cache statistics (for tests and the benchmark).
  size_t cached_masks() const;
  uint64_t mask_misses() const { return misses_; }
  uint64_t mask_hits() const { return hits_; }
  // Drops every cached mask (the benchmark times uncached steps with it).
  void ClearCache() const;

  struct Impl;  // the automaton (tool_grammar.cc)

 private:
  ToolGrammar() = default;

  std::shared_ptr<const TokenBytes> vocab_;
  GrammarOptions options_;
  std::shared_ptr<const Impl> impl_;

  struct Mask {
    std::vector<int32_t> ids;       // sparse form (few allowed)
    std::vector<uint8_t> bytes;     // dense form: one entry per id, copied as is
    bool dense = false;
  };
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, std::shared_ptr<const Mask>> cache_;
  mutable uint64_t hits_ = 0, misses_ = 0;
  mutable size_t cache_bytes_ = 0;  // bounded (kMaxCacheBytes in tool_grammar.cc); cleared when full

  friend class ToolConstraint;
};

}  // namespace paddock::policy::engine::constrain
