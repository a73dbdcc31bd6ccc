// Byte-level BPE tokenizer loaded from DeepSeek's tokenizer.json: exact ids,
// pre-tokenizer regexes (PCRE2) and special tokens.
#pragma once

#include <cstdint>
#include <memory>
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
  virtual std::vector<uint32_t> Encode(std::string_view text) const = 0;
  virtual std::string Decode(std::span<const uint32_t> ids) const = 0;
  virtual size_t vocab_size() const = 0;
};

}  // namespace paddock::v4
