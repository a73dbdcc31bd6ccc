// The pre-tokenizer: tokenizer.json's Split rules (behavior Isolated), each
// applied to every piece the previous one produced, with PCRE2 in UTF + UCP
// mode, JIT-compiled when the platform has a JIT. Hugging Face runs these
// patterns with Oniguruma; TranslateRegex maps the few places where Oniguruma
// (and Rust's regex) mean something else in PCRE2 syntax.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "policy/v4/tokenizer/internal.h"

namespace paddock::v4::tok {
namespace {

// Oniguruma's \s with a Unicode encoding: the White_Space property. PCRE2's \s
// under UCP leaves out U+0085 (NEL) in some versions, so spell it out.
constexpr std::string_view kSpaceRanges =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
// Oniguruma's \w: Letter | Mark | Decimal_Number | Connector_Punctuation.
constexpr std::string_view kWordRanges = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

// Per-thread match data and JIT stack (PCRE2 objects are not shareable for matching).
struct ThreadState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadState() {
    md = pcre2_match_data_create(4, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (mctx && stack) pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~ThreadState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mctx);
    pcre2_jit_stack_free(stack);
  }
};

ThreadState& TS() {
  thread_local ThreadState ts;
  return ts;
}

}  // namespace

Result<std::string> TranslateRegex(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) return Error(Code::kInvalidArgument, "regex ends in a backslash");
      char e = p[++i];
      switch (e) {
        case 's':
          if (in_class) out.append(kSpaceRanges);
          else out.append("[").append(kSpaceRanges).append("]");
          break;
        case 'S':
          if (in_class) return Error(Code::kInvalidArgument, "\\S inside a character class is not supported");
          out.append("[^").append(kSpaceRanges).append("]");
          break;
        case 'w':
          if (in_class) out.append(kWordRanges);
          else out.append("[").append(kWordRanges).append("]");
          break;
        case 'W':
          if (in_class) return Error(Code::kInvalidArgument, "\\W inside a character class is not supported");
          out.append("[^").append(kWordRanges).append("]");
          break;
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == '[') {
        // Oniguruma and Rust allow nested classes and set operations; PCRE2 reads
        // '[' literally unless it starts a POSIX class. Refuse rather than guess.
        if (i + 1 < p.size() && p[i + 1] == ':') {
          out.push_back(c);
          continue;
        }
        return Error(Code::kInvalidArgument, "nested character classes are not supported");
      }
      if (c == ']') in_class = false;
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal in both syntaxes.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    out.push_back(c);
  }
  if (in_class) return Error(Code::kInvalidArgument, "unterminated character class");
  return out;
}

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Regex() { pcre2_code_free(code); }
  // Finds the next match in subject[start..]; false when there is none.
  bool Find(std::string_view subject, size_t start, size_t* ms, size_t* me) const {
    ThreadState& ts = TS();
    auto s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    int rc = jit ? pcre2_jit_match(code, s, subject.size(), start, 0, ts.md, ts.mctx)
                 : pcre2_match(code, s, subject.size(), start, 0, ts.md, ts.mctx);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH && jit) {
      // JIT stack exhausted on a pathological input: the interpreter has no such limit.
      rc = pcre2_match(code, s, subject.size(), start, 0, ts.md, nullptr);
    }
    if (rc < 0) return false;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ts.md);
    *ms = ov[0];
    *me = ov[1];
    return true;
  }
};

PreTokenizer::~PreTokenizer() = default;

Result<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(const std::vector<SplitSpec>& splits) {
  std::unique_ptr<PreTokenizer> pt(new PreTokenizer());
  uint32_t jit_available = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &jit_available);
  pt->jit_ = jit_available != 0;
  for (size_t i = 0; i < splits.size(); ++i) {
    auto translated = TranslateRegex(splits[i].pattern);
    if (!translated.ok())
      return translated.status().Prefix(fmt::format("pre_tokenizer Split {} regex {}", i, splits[i].pattern));
    int err = 0;
    PCRE2_SIZE off = 0;
    auto re = std::make_unique<Regex>();
    re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!re->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      return Error(Code::kInvalidArgument, "pre_tokenizer Split {} regex {}: PCRE2: {} at offset {}", i,
                   splits[i].pattern, reinterpret_cast<const char*>(msg), off);
    }
    re->jit = pt->jit_ && pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    if (!re->jit) pt->jit_ = false;
    pt->regexes_.push_back(std::move(re));
  }
  return pt;
}

void PreTokenizer::SplitLevel(size_t level, std::string_view text,
                              std::vector<std::string_view>* out) const {
  if (level == regexes_.size()) {
    out->push_back(text);
    return;
  }
  const Regex& re = *regexes_[level];
  size_t pos = 0, prev = 0;
  while (pos <= text.size()) {
    size_t ms, me;
    if (!re.Find(text, pos, &ms, &me)) break;
    if (me == ms) {  // an empty match splits nothing; step over one character
      pos = me + 1;
      while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (ms > prev) SplitLevel(level + 1, text.substr(prev, ms - prev), out);
    SplitLevel(level + 1, text.substr(ms, me - ms), out);
    prev = pos = me;
  }
  if (prev < text.size()) SplitLevel(level + 1, text.substr(prev), out);
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* out) const {
  if (!text.empty()) SplitLevel(0, text, out);
}

}  // namespace paddock::v4::tok
