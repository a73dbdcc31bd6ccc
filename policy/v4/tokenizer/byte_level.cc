// The ByteLevel alphabet (GPT-2's bytes_to_unicode): printable Latin-1 bytes
// stand for themselves, the other 68 bytes for U+0100 onwards. Vocab and merge
// strings are written in it; the tokenizer maps them back to raw bytes once at
// load time and then works on bytes.
#include <array>

#include "policy/v4/tokenizer/internal.h"

namespace paddock::v4::tok {
namespace {

struct Tables {
  std::array<char32_t, 256> to_cp{};
  std::unordered_map<char32_t, uint8_t> to_byte;
  Tables() {
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? char32_t(b) : next++;
      to_byte[to_cp[b]] = uint8_t(b);
    }
  }
};

const Tables& T() {
  static const Tables t;
  return t;
}

// Decodes one UTF-8 code point at s[*i]; false on malformed input.
bool NextCodepoint(std::string_view s, size_t* i, char32_t* cp) {
  auto c = static_cast<unsigned char>(s[*i]);
  int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || *i + n > s.size()) return false;
  char32_t v = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) {
    auto cc = static_cast<unsigned char>(s[*i + k]);
    if ((cc & 0xC0) != 0x80) return false;
    v = (v << 6) | (cc & 0x3F);
  }
  *i += n;
  *cp = v;
  return true;
}

}  // namespace

char32_t ByteToCodepoint(uint8_t b) { return T().to_cp[b]; }

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

bool ByteLevelToBytes(std::string_view s, std::string* out) {
  out->clear();
  const auto& to_byte = T().to_byte;
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    if (!NextCodepoint(s, &i, &cp)) return false;
    auto it = to_byte.find(cp);
    if (it == to_byte.end()) return false;
    out->push_back(char(it->second));
  }
  return true;
}

}  // namespace paddock::v4::tok
