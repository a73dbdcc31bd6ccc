// V4 tokenizer: exact ids on every case of tests/data/v4/tokenizer_public.jsonl,
// round trips, invalid UTF-8, and the errors for a missing or corrupt file.
// Needs DeepSeek's tokenizer.json (scripts/install-deps.sh installs it; `make
// test` runs that first): without it these tests fail and say how to get it.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "policy/v4/tokenizer/internal.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace paddock::v4 {
namespace {

struct Case {
  std::string text;
  std::vector<uint32_t> ids;
};

std::vector<Case> LoadCases() {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/tokenizer_public.jsonl");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    cases.push_back({j["text"].get<std::string>(), j["ids"].get<std::vector<uint32_t>>()});
  }
  return cases;
}

// One tokenizer for the whole suite (loading takes a fraction of a second).
std::shared_ptr<const Tokenizer> Shared(Status* why) {
  static Result<std::shared_ptr<const Tokenizer>> r = Tokenizer::Load(Tokenizer::DefaultPath());
  if (!r.ok()) *why = r.status();
  return r.ok() ? r.value() : nullptr;
}

#define REQUIRE_TOKENIZER(var)                                                        \
  Status _why;                                                                        \
  auto var = Shared(&_why);                                                           \
  ASSERT_NE(var, nullptr) << "cannot load DeepSeek's tokenizer.json from "            \
                          << Tokenizer::DefaultPath() << ": " << _why.ToString()

std::string Show(const std::string& s) { return nlohmann::json(s).dump(-1, ' ', false,
    nlohmann::json::error_handler_t::replace); }

TEST(V4Tokenizer, LoadsDefaultFile) {
  REQUIRE_TOKENIZER(tok);
  // 128,000 BPE entries (ids 0-2 are also added tokens) + added tokens 128,000-128,814.
  EXPECT_EQ(tok->vocab_size(), 128815u);
  EXPECT_EQ(tok->TokenId("<｜begin▁of▁sentence｜>"), std::optional<uint32_t>(0));
  EXPECT_EQ(tok->TokenId("<｜User｜>"), std::optional<uint32_t>(128803));
  EXPECT_EQ(tok->TokenId("not a token"), std::nullopt);
}

TEST(V4Tokenizer, PublicVectorsExact) {
  REQUIRE_TOKENIZER(tok);
  auto cases = LoadCases();
  ASSERT_GE(cases.size(), 100u) << "tests/data/v4/tokenizer_public.jsonl missing or short";
  size_t pass = 0;
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& k = cases[c];
    auto got = tok->Encode(k.text);
    if (got == k.ids) {
      ++pass;
      continue;
    }
    size_t i = 0;
    while (i < got.size() && i < k.ids.size() && got[i] == k.ids[i]) ++i;
    ADD_FAILURE() << "case " << c << " text " << Show(k.text).substr(0, 400) << "\n  first difference at id index "
                  << i << ": got " << (i < got.size() ? std::to_string(got[i]) : "<end>") << " ("
                  << Show(i < got.size() ? tok->Decode(std::span(&got[i], 1)) : "") << "), want "
                  << (i < k.ids.size() ? std::to_string(k.ids[i]) : "<end>") << " ("
                  << Show(i < k.ids.size() ? tok->Decode(std::span(&k.ids[i], 1)) : "") << "); "
                  << got.size() << " ids vs " << k.ids.size();
  }
  std::printf("[tokenizer] %zu/%zu public vectors exact\n", pass, cases.size());
}

TEST(V4Tokenizer, RoundTripOnVectors) {
  REQUIRE_TOKENIZER(tok);
  for (const auto& k : LoadCases()) {
    EXPECT_EQ(tok->Decode(k.ids), k.text) << "decoding the expected ids of " << Show(k.text).substr(0, 200);
    EXPECT_EQ(tok->Decode(tok->Encode(k.text)), k.text) << Show(k.text).substr(0, 200);
  }
}

TEST(V4Tokenizer, EmptyAndSpecialOnly) {
  REQUIRE_TOKENIZER(tok);
  EXPECT_TRUE(tok->Encode("").empty());
  EXPECT_EQ(tok->Encode("<｜begin▁of▁sentence｜><｜end▁of▁sentence｜>"), (std::vector<uint32_t>{0, 1}));
  // A special token's text cut short is ordinary text.
  auto ids = tok->Encode("<｜begin▁of▁sentence");
  EXPECT_GT(ids.size(), 1u);
  EXPECT_EQ(tok->Decode(ids), "<｜begin▁of▁sentence");
}

TEST(V4Tokenizer, InvalidUtf8EncodesByteLevel) {
  REQUIRE_TOKENIZER(tok);
  // Lone continuation byte, truncated sequence, overlong, surrogate, 0xFF.
  for (std::string s : {std::string("\x80"), std::string("abc\xE4\xB8"), std::string("\xC0\xAF x"),
                        std::string("\xED\xA0\x80 end"), std::string("ok \xFF\xFE ok"),
                        std::string("中文\xE4\xB8 and 123\x9F 456")}) {
    auto ids = tok->Encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok->Decode(ids), s) << Show(s);
    for (uint32_t id : ids) EXPECT_LT(id, tok->vocab_size());
  }
  // A lone invalid byte is exactly its byte-level token (0xFF ↔ "ÿ").
  auto ff = tok->Encode("\xFF");
  ASSERT_EQ(ff.size(), 1u);
  EXPECT_EQ(tok->Decode(ff), "\xFF");
  // Valid text around invalid bytes tokenizes as it would on its own.
  auto a = tok->Encode("hello");
  auto b = tok->Encode("hello\xFF");
  ASSERT_EQ(b.size(), a.size() + 1);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin()));
}

TEST(V4Tokenizer, LongRunsAndNul) {
  REQUIRE_TOKENIZER(tok);
  for (std::string s : {std::string(100000, ' '), std::string(5000, 'a'), std::string(3000, '\n'),
                        std::string("x\0y", 3), std::string(20000, '.')}) {
    auto ids = tok->Encode(s);
    EXPECT_EQ(tok->Decode(ids), s) << s.size();
  }
  // The heap path (long words) agrees with the scan path (short words): a long
  // word made of a repeated short word.
  std::string word = "Supercalifragilistic";
  auto one = tok->Encode(word);
  std::string w8;
  for (int i = 0; i < 8; ++i) w8 += word;  // 160 letters: one pre-token, heap path
  EXPECT_EQ(tok->Decode(tok->Encode(w8)), w8);
}

TEST(V4Tokenizer, ThreadsAgree) {
  REQUIRE_TOKENIZER(tok);
  auto cases = LoadCases();
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep)
        for (const auto& k : cases)
          if (tok->Encode(k.text) != k.ids) ++bad[t];
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(bad[t], bad[0]);
}

TEST(V4Tokenizer, DefaultPathHonoursEnvironment) {
  const char* old = std::getenv("PADDOCK_TOKENIZER");
  std::string saved = old ? old : "";
  setenv("PADDOCK_TOKENIZER", "/tmp/some/tokenizer.json", 1);
  EXPECT_EQ(Tokenizer::DefaultPath(), "/tmp/some/tokenizer.json");
  unsetenv("PADDOCK_TOKENIZER");
  EXPECT_EQ(Tokenizer::DefaultPath(), "/usr/local/share/paddock/deepseek-v3-tokenizer.json");
  if (old) setenv("PADDOCK_TOKENIZER", saved.c_str(), 1);
}

// Hugging Face runs the Split regexes with Oniguruma, whose \s is Unicode White_Space
// (including U+0085 and U+3000); the translation spells that out for PCRE2.
TEST(V4Tokenizer, RegexTranslation) {
  auto t = tok::TranslateRegex("\\s+(?!\\S)|\\s+");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_NE(t->find("\\x{85}"), std::string::npos) << *t;
  EXPECT_NE(t->find("[^\\x{9}"), std::string::npos) << *t;
  auto in_class = tok::TranslateRegex("[\\s,]");
  ASSERT_TRUE(in_class.ok());
  EXPECT_EQ(in_class->front(), '[');
  EXPECT_EQ(in_class->find('['), in_class->rfind('['));  // no nested class
  // Unchanged: Unicode properties, escapes, literal ']' first in a class.
  EXPECT_EQ(tok::TranslateRegex("\\p{N}{1,3}").value(), "\\p{N}{1,3}");
  EXPECT_EQ(tok::TranslateRegex("[]a\\-]").value(), "[]a\\-]");
  EXPECT_FALSE(tok::TranslateRegex("[\\S]").ok());
  EXPECT_FALSE(tok::TranslateRegex("[a[b]]").ok());
  EXPECT_FALSE(tok::TranslateRegex("[abc").ok());
  // The pre-tokenizer splits on U+3000 (ideographic space) and U+0085 like on ' '.
  auto pre = tok::PreTokenizer::Create({{"\\s+(?!\\S)|\\s+|\\S+"}});
  ASSERT_TRUE(pre.ok()) << pre.status().ToString();
  std::vector<std::string_view> pieces;
  (*pre)->Split("a\u3000\u3000b\u0085c", &pieces);
  EXPECT_EQ(pieces, (std::vector<std::string_view>{"a", "\u3000", "\u3000", "b", "\u0085", "c"}));
}

std::string WriteTemp(const std::string& name, const std::string& content) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

TEST(V4Tokenizer, MissingFileIsNotFoundWithHint) {
  auto r = Tokenizer::Load("/nonexistent/paddock/tokenizer.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/paddock/tokenizer.json"), std::string::npos);
  EXPECT_NE(r.status().message().find("scripts/install-deps.sh"), std::string::npos);
}

TEST(V4Tokenizer, CorruptFilesAreInvalidArgumentWithHint) {
  std::string good;
  {
    std::ifstream in(Tokenizer::DefaultPath(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    good = ss.str();
  }
  struct Bad {
    std::string name, content, mentions;
  };
  std::vector<Bad> bads = {
      {"empty.json", "", "empty"},
      {"truncated.json", good.empty() ? std::string("{\"model\": {\"vocab\": {") : good.substr(0, good.size() / 2),
       "not valid JSON"},
      {"array.json", "[1,2,3]", "not a JSON object"},
      {"nomodel.json", "{\"version\": \"1.0\"}", "model"},
      {"wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})", "BPE"},
      {"nobytes.json",
       R"({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "byte"},
      {"badregex.json",
       R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "regex"},
  };
  for (const auto& b : bads) {
    std::string path = WriteTemp(b.name, b.content);
    auto r = Tokenizer::Load(path);
    ASSERT_FALSE(r.ok()) << b.name;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << b.name << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find(b.mentions), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find("scripts/install-deps.sh"), std::string::npos) << r.status().ToString();
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace paddock::v4
