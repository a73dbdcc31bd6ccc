#include "policy/engine/numerics.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "policy/engine/kernels.h"

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

// Eight codes at a time by bit manipulation; the same floats as the table
// (sign | exponent + 120 | mantissa << 20 for normals, mantissa * 2^-9 for
// subnormals, NaN for 0x7F/0xFF), then the same multiply by the scale.
__attribute__((target("avx2,fma"))) void DequantizeFp8Avx(const uint8_t* codes, size_t n,
                                                         float scale, float* out) {
  const __m256 sv = _mm256_set1_ps(scale), sub_unit = _mm256_set1_ps(1.0f / 512);
  const __m256i x7f = _mm256_set1_epi32(0x7F), xf = _mm256_set1_epi32(0xF), x7 = _mm256_set1_epi32(7),
                x80 = _mm256_set1_epi32(0x80), bias = _mm256_set1_epi32(120), zero = _mm256_setzero_si256();
  const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k)));
    __m256i ex = _mm256_and_si256(_mm256_srli_epi32(v, 3), xf);
    __m256i man = _mm256_and_si256(v, x7);
    __m256 normal = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_slli_epi32(_mm256_add_epi32(ex, bias), 23), _mm256_slli_epi32(man, 20)));
    __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(man), sub_unit);
    __m256 r = _mm256_blendv_ps(normal, sub, _mm256_castsi256_ps(_mm256_cmpeq_epi32(ex, zero)));
    r = _mm256_blendv_ps(r, nan, _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(v, x7f), x7f)));
    r = _mm256_or_ps(r, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(v, x80), 24)));
    _mm256_storeu_ps(out + k, _mm256_mul_ps(r, sv));
  }
  const auto& t = E4M3Table();
  for (; k < n; ++k) out[k] = t[codes[k]] * scale;
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
  if (CpuHasAvx2Fma()) return DequantizeFp8Avx(codes, n, scale, out);
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
