#include "policy/engine/numerics.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

namespace paddock::policy::engine {
namespace {

std::array<float, 256> BuildE4M3Table() {
  std::array<float, 256> t{};
  for (int code = 0; code < 256; ++code) {
    int sign = code >> 7, exp = (code >> 3) & 0xF, man = code & 7;
    float v;
    if (exp == 0xF && man == 7) {
      v = std::nanf("");
    } else if (exp == 0) {
      v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
    } else {
      v = std::ldexp(static_cast<float>(8 + man), exp - 7 - 3);
    }
    t[code] = sign ? -v : v;
  }
  return t;
}

const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> table = BuildE4M3Table();
  return table;
}

// Pairs of int4 values for every byte, unscaled.
std::array<std::array<float, 2>, 256> BuildInt4Table() {
  std::array<std::array<float, 2>, 256> t{};
  for (int b = 0; b < 256; ++b) {
    int lo = b & 0xF, hi = b >> 4;
    t[b][0] = static_cast<float>(lo >= 8 ? lo - 16 : lo);
    t[b][1] = static_cast<float>(hi >= 8 ? hi - 16 : hi);
  }
  return t;
}

}  // namespace

uint8_t FloatToE4M3(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  uint8_t sign = static_cast<uint8_t>((bits >> 31) << 7);
  if (std::isnan(x)) return sign | 0x7F;
  float a = std::fabs(x);
  if (a >= 448.0f) return sign | 0x7E;  // satfinite (inf included)
  if (a < std::ldexp(1.0f, -6)) {
    // Subnormal range: multiples of 2^-9. a * 512 is exact; rint rounds to even
    // (the default rounding mode). 8 rounds up into the smallest normal, 0x08.
    float q = std::nearbyint(a * 512.0f);
    return sign | static_cast<uint8_t>(q);
  }
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): a in [2^(e-1), 2^e)
  int k = e - 1;      // a in [2^k, 2^(k+1))
  float q = std::nearbyint(std::ldexp(a, 3 - k));  // in [8, 16]
  if (q == 16.0f) {
    q = 8.0f;
    ++k;
  }
  int code = ((k + 7) << 3) | (static_cast<int>(q) - 8);
  if (code > 0x7E) code = 0x7E;  // rounded past 448: saturate
  return sign | static_cast<uint8_t>(code);
}

float E4M3ToFloat(uint8_t code) { return E4M3Table()[code]; }

uint16_t FloatToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return static_cast<uint16_t>((bits >> 16) | 0x0040);
  uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

int8_t Fp8ScaleExponent(const float* x, size_t n) {
  float amax = 0;
  for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  if (!(amax > 0) || !std::isfinite(amax)) return 0;
  int e = static_cast<int>(std::ceil(std::log2(amax / 448.0f)));
  // Guard the log2 rounding at exact powers of two.
  while (std::ldexp(448.0f, e) < amax) ++e;
  while (e > -126 && std::ldexp(448.0f, e - 1) >= amax) --e;
  return static_cast<int8_t>(std::clamp(e, -127, 127));
}

void QuantizeFp8(const float* x, size_t n, int8_t scale_exponent, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = FloatToE4M3(std::ldexp(x[i], -scale_exponent));
}

void DequantizeFp8(const uint8_t* codes, size_t n, int8_t scale_exponent, float* out) {
  const auto& t = E4M3Table();
  float scale = std::ldexp(1.0f, scale_exponent);
  for (size_t i = 0; i < n; ++i) out[i] = t[codes[i]] * scale;
}

float QuantizeInt4(const float* x, size_t n, uint8_t* packed) {
  float amax = 0;
  for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  std::memset(packed, 0, n / 2);
  if (!(amax > 0) || !std::isfinite(amax)) return 0.0f;
  float scale = amax / 7.0f;
  for (size_t i = 0; i < n; ++i) {
    float q = std::clamp(std::nearbyint(x[i] / scale), -8.0f, 7.0f);
    uint8_t nib = static_cast<uint8_t>(static_cast<int>(q) & 0xF);
    packed[i / 2] |= static_cast<uint8_t>(nib << ((i & 1) * 4));
  }
  return scale;
}

void UnpackInt4(const uint8_t* packed, size_t n, float* out) {
  static const auto table = BuildInt4Table();
  for (size_t i = 0; i < n / 2; ++i) {
    out[2 * i] = table[packed[i]][0];
    out[2 * i + 1] = table[packed[i]][1];
  }
}

}  // namespace paddock::policy::engine
