// Byte-level BPE tokenizer loaded from DeepSeek's tokenizer.json: exact ids,
// pre-tokenizer regexes (PCRE2) and special tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::v4 {

class Tokenizer {
 public:
  // Loads and validates a Hugging Face tokenizer.json.
  static Result<std::shared_ptr<const Tokenizer>> Load(const std::string& path);
  // $PADDOCK_TOKENIZER, else where scripts/install-deps.sh puts it:
  // /usr/local/share/paddock/deepseek-v3-tokenizer.json
  static std::string DefaultPath();

  virtual ~Tokenizer() = default;
  // Special tokens in the text map to their single ids; no BOS/EOS added.
  // Any bytes are accepted: invalid UTF-8 never matches a pre-tokenizer regex,
  // so it stays in the unmatched pieces and encodes byte-level. Thread-safe.
  virtual std::vector<uint32_t> Encode(std::string_view text) const = 0;
  // Decode skips ids it does not know; raw bytes come back as they were encoded,
  // so Decode(Encode(x)) == x for every byte string x, valid UTF-8 or not.
  virtual std::string Decode(std::span<const uint32_t> ids) const = 0;
  virtual size_t vocab_size() const = 0;  // highest id + 1 (model vocab and added tokens)
  // The id of an added/special token given by its exact text, e.g. "<｜User｜>".
  virtual std::optional<uint32_t> TokenId(std::string_view token) const = 0;
  // Whether the pre-tokenizer regexes run JIT-compiled (PCRE2 JIT).
  virtual bool jit() const = 0;
};

}  // namespace paddock::v4
