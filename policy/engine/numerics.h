// Storage formats of the engine's caches, emulated bit-exactly on the CPU:
// FP8 E4M3 (the OCP "fn" variant: no infinities, 0x7F/0xFF are NaN, largest
// finite 448), BF16, and signed 4-bit integers packed two per byte.
// Every conversion rounds to nearest, ties to even.
#pragma once

#include <cstddef>
#include <cstdint>

namespace paddock::policy::engine {

// FP8 E4M3: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits.
// Finite values beyond ±448 saturate to ±448 (and so do ±inf: "satfinite",
// as FP8 GEMM libraries do); NaN stays NaN (0x7F with the sign).
uint8_t FloatToE4M3(float x);
float E4M3ToFloat(uint8_t code);  // exact; a table lookup

// BF16: the upper 16 bits of an IEEE float after rounding; NaN stays a quiet NaN.
uint16_t FloatToBf16(float x);
inline float Bf16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// A vector stored as FP8 with one power-of-two scale 2^exponent (the exponent
// kept in one signed byte, like a UE8M0 scale): the scale is the smallest power
// of two that brings max|x| to <= 448, so dividing by it is exact.
int8_t Fp8ScaleExponent(const float* x, size_t n);
void QuantizeFp8(const float* x, size_t n, int8_t scale_exponent, uint8_t* out);
void DequantizeFp8(const uint8_t* codes, size_t n, int8_t scale_exponent, float* out);

// Signed 4-bit integers in [-8, 7] with one FP32 scale max|x| / 7; element 2i is
// the low nibble of byte i, element 2i+1 the high nibble (two's complement).
// n must be even. Returns the scale (0 for an all-zero vector: every code 0).
float QuantizeInt4(const float* x, size_t n, uint8_t* packed);
void UnpackInt4(const uint8_t* packed, size_t n, float* out);  // integer values, unscaled
inline int Int4At(const uint8_t* packed, size_t i) {
  int nib = (packed[i / 2] >> ((i & 1) * 4)) & 0xF;
  return nib >= 8 ? nib - 16 : nib;
}

}  // namespace paddock::policy::engine
