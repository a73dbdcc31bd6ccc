// The public Tokenizer: loads tokenizer.json, then Encode = added tokens cut out
// → regex pre-tokenizer → byte-level BPE per piece; Decode = bytes of each id.
#include "policy/v4/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "policy/v4/tokenizer/internal.h"

namespace paddock::v4 {
namespace {

using tok::AddedTokenMatcher;
using tok::Bpe;
using tok::PreTokenizer;

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(std::unique_ptr<AddedTokenMatcher> added, std::unique_ptr<PreTokenizer> pre,
               std::unique_ptr<Bpe> bpe, std::vector<std::string> id_bytes,
               std::unordered_map<std::string, uint32_t> special)
      : added_(std::move(added)),
        pre_(std::move(pre)),
        bpe_(std::move(bpe)),
        id_bytes_(std::move(id_bytes)),
        special_(std::move(special)) {}

  std::vector<uint32_t> Encode(std::string_view text) const override {
    std::vector<uint32_t> ids;
    ids.reserve(text.size() / 3 + 8);
    thread_local std::vector<AddedTokenMatcher::Piece> parts;
    thread_local std::vector<std::string_view> words;
    parts.clear();
    added_->Split(text, &parts);
    for (const auto& part : parts) {
      if (part.id >= 0) {
        ids.push_back(uint32_t(part.id));
        continue;
      }
      words.clear();
      pre_->Split(part.text, &words);
      for (std::string_view w : words) bpe_->EncodeWord(w, &ids);
    }
    return ids;
  }

  std::string Decode(std::span<const uint32_t> ids) const override {
    std::string out;
    out.reserve(ids.size() * 4);
    for (uint32_t id : ids)
      if (id < id_bytes_.size()) out.append(id_bytes_[id]);  // unknown ids decode to nothing
    return out;
  }

  size_t vocab_size() const override { return id_bytes_.size(); }

  std::optional<uint32_t> TokenId(std::string_view token) const override {
    auto it = special_.find(std::string(token));
    if (it != special_.end()) return it->second;
    return std::nullopt;
  }

  bool jit() const override { return pre_->jit(); }

 private:
  std::unique_ptr<AddedTokenMatcher> added_;
  std::unique_ptr<PreTokenizer> pre_;
  std::unique_ptr<Bpe> bpe_;
  std::vector<std::string> id_bytes_;  // id → raw bytes ("" for unused ids)
  std::unordered_map<std::string, uint32_t> special_;
};

Result<std::string> ReadFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT)
      return Error(Code::kNotFound, "tokenizer file {} not found; {}", path, tok::InstallHint());
    return ErrnoError(fmt::format("tokenizer file {}", path), err).Prefix("loading tokenizer");
  }
  if (!S_ISREG(st.st_mode))
    return Error(Code::kInvalidArgument, "tokenizer file {} is not a regular file; {}", path,
                 tok::InstallHint());
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError(fmt::format("opening tokenizer file {}", path));
  std::string data;
  data.resize(size_t(st.st_size));
  in.read(data.data(), std::streamsize(data.size()));
  if (size_t(in.gcount()) != data.size())
    return Error(Code::kDataLoss, "tokenizer file {}: short read", path);
  return data;
}

}  // namespace

std::string Tokenizer::DefaultPath() {
  const char* env = std::getenv("PADDOCK_TOKENIZER");
  if (env && *env) return env;
  return "/usr/local/share/paddock/deepseek-v3-tokenizer.json";
}

Result<std::shared_ptr<const Tokenizer>> Tokenizer::Load(const std::string& path) {
  PADDOCK_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  if (text.empty())
    return Error(Code::kInvalidArgument, "tokenizer file {} is empty; {}", path, tok::InstallHint());
  PADDOCK_ASSIGN_OR_RETURN(tok::TokenizerSpec spec, tok::ParseSpec(text, path));
  text.clear();
  text.shrink_to_fit();
  auto bad = [&](const Status& s) {
    return Status(s.code(), fmt::format("tokenizer file {}: {}; {}", path, s.message(), tok::InstallHint()));
  };

  // Vocab and merges from the ByteLevel alphabet to raw bytes.
  std::vector<std::pair<std::string, uint32_t>> byte_vocab;
  byte_vocab.reserve(spec.vocab.size());
  uint32_t max_id = 0;
  std::string bytes;
  // Keys outside the ByteLevel alphabet (DeepSeek's vocab lists its special tokens,
  // e.g. "<｜begin▁of▁sentence｜>") can never come out of BPE; they decode as written.
  std::vector<std::pair<std::string, uint32_t>> verbatim;
  for (const auto& [s, id] : spec.vocab) {
    if (tok::ByteLevelToBytes(s, &bytes)) byte_vocab.emplace_back(bytes, id);
    else verbatim.emplace_back(s, id);
    max_id = std::max(max_id, id);
  }
  std::vector<std::pair<std::string, std::string>> byte_merges;
  byte_merges.reserve(spec.merges.size());
  std::string a, b;
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    if (!tok::ByteLevelToBytes(spec.merges[i].first, &a) || !tok::ByteLevelToBytes(spec.merges[i].second, &b))
      return bad(Error(Code::kInvalidArgument, "model.merges[{}] is not in the ByteLevel alphabet", i));
    byte_merges.emplace_back(a, b);
  }
  spec.merges.clear();
  spec.merges.shrink_to_fit();
  auto bpe = Bpe::Create(byte_vocab, byte_merges);
  if (!bpe.ok()) return bad(bpe.status());
  byte_merges.clear();

  auto pre = PreTokenizer::Create(spec.splits);
  if (!pre.ok()) return bad(pre.status());

  for (const auto& t : spec.added_tokens) max_id = std::max(max_id, t.id);
  std::vector<std::string> id_bytes(size_t(max_id) + 1);
  for (auto& [s, id] : byte_vocab) id_bytes[id] = std::move(s);
  for (auto& [s, id] : verbatim) id_bytes[id] = std::move(s);
  std::unordered_map<std::string, uint32_t> special;
  for (const auto& t : spec.added_tokens) {
    id_bytes[t.id] = t.content;
    special.emplace(t.content, t.id);
  }
  auto added = std::make_unique<AddedTokenMatcher>(spec.added_tokens);
  return std::shared_ptr<const Tokenizer>(std::make_shared<BpeTokenizer>(
      std::move(added), std::move(pre).value(), std::move(bpe).value(), std::move(id_bytes),
      std::move(special)));
}

}  // namespace paddock::v4
