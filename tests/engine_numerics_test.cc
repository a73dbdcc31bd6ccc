// FP8 E4M3, BF16 and int4 conversions of the engine's caches, on edge values.
#include <cmath>
#include <cstring>
#include <vector>
#include <limits>

#include <gtest/gtest.h>

#include "policy/engine/kernels.h"
#include "policy/engine/numerics.h"

namespace paddock::policy::engine {
namespace {

TEST(EngineNumerics, E4M3_EncodesEdgeValues) {
  EXPECT_EQ(FloatToE4M3(0.0f), 0x00);
  EXPECT_EQ(FloatToE4M3(-0.0f), 0x80);
  EXPECT_EQ(FloatToE4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToE4M3(-2.0f), 0xC0);
  EXPECT_EQ(FloatToE4M3(448.0f), 0x7E);         // largest finite
  EXPECT_EQ(FloatToE4M3(449.0f), 0x7E);         // saturates
  EXPECT_EQ(FloatToE4M3(1e9f), 0x7E);
  EXPECT_EQ(FloatToE4M3(-1e9f), 0xFE);
  EXPECT_EQ(FloatToE4M3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(FloatToE4M3(std::nanf("")) & 0x7F, 0x7F);
  EXPECT_EQ(FloatToE4M3(std::ldexp(1.0f, -6)), 0x08);  // smallest normal
  EXPECT_EQ(FloatToE4M3(std::ldexp(1.0f, -9)), 0x01);  // smallest subnormal
  EXPECT_EQ(FloatToE4M3(std::ldexp(7.0f, -9)), 0x07);  // largest subnormal
  EXPECT_EQ(FloatToE4M3(std::ldexp(1.0f, -10)), 0x00);  // half the smallest: ties to even (0)
  EXPECT_EQ(FloatToE4M3(std::ldexp(3.0f, -10)), 0x02);  // 1.5 ulp: ties to even (2)
  EXPECT_EQ(FloatToE4M3(std::ldexp(15.5f, -10)), 0x08);  // 7.75 subnormal ulps rounds up to 2^-6
  EXPECT_EQ(FloatToE4M3(1.0625f), 0x38);  // halfway 1 and 1.125: even mantissa (1.0)
  EXPECT_EQ(FloatToE4M3(1.1875f), 0x3A);  // halfway 1.125 and 1.25: even mantissa (1.25)
  EXPECT_EQ(FloatToE4M3(1.07f), 0x39);    // above halfway
  EXPECT_EQ(FloatToE4M3(15.5f), 0x58);    // halfway 15 and 16 -> 16 (exponent carry)
}

TEST(EngineNumerics, E4M3_EveryCodeRoundTrips) {
  for (int code = 0; code < 256; ++code) {
    float v = E4M3ToFloat(static_cast<uint8_t>(code));
    if ((code & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << code;
      continue;
    }
    EXPECT_EQ(FloatToE4M3(v), code) << "code " << code << " value " << v;
  }
  EXPECT_EQ(E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
}

TEST(EngineNumerics, Bf16_RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);      // tie: even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);  // tie: even (up)
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  for (uint32_t b = 0; b < 0x10000; b += 7) {
    float v = Bf16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(v)) continue;
    EXPECT_EQ(FloatToBf16(v), b);
  }
}

TEST(EngineNumerics, Int4_PacksLowNibbleFirstAndClamps) {
  float x[4] = {7.0f, -7.0f, 3.4f, 0.0f};
  uint8_t packed[2];
  float scale = QuantizeInt4(x, 4, packed);
  EXPECT_FLOAT_EQ(scale, 1.0f);
  EXPECT_EQ(packed[0], 0x97);  // low 7, high -7 (0x9)
  EXPECT_EQ(packed[1], 0x03);
  EXPECT_EQ(Int4At(packed, 1), -7);
  float back[4];
  UnpackInt4(packed, 4, back);
  EXPECT_EQ(back[0], 7);
  EXPECT_EQ(back[1], -7);
  EXPECT_EQ(back[2], 3);
  EXPECT_EQ(back[3], 0);
  // Exactly representable vectors survive; every value within scale/2.
  float y[8] = {-8, -3, 0, 1, 2, 5, 7, -1};
  for (float& v : y) v *= 0.25f;
  uint8_t p8[4];
  float s = QuantizeInt4(y, 8, p8);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(Int4At(p8, i) * s, y[i], s / 2 + 1e-7) << i;
  // An all-zero vector: scale 0, codes 0.
  float z[2] = {0, 0};
  uint8_t pz[1] = {0xFF};
  EXPECT_EQ(QuantizeInt4(z, 2, pz), 0.0f);
  EXPECT_EQ(pz[0], 0);
}

TEST(EngineNumerics, Fp8Scale_IsSmallestPowerOfTwoCoveringMax) {
  float a[3] = {1000.0f, -3.0f, 0.5f};
  int8_t e = Fp8ScaleExponent(a, 3);
  EXPECT_EQ(e, 2);  // 448*2 < 1000 <= 448*4
  float b[1] = {448.0f};
  EXPECT_EQ(Fp8ScaleExponent(b, 1), 0);
  float c[1] = {0.001f};
  int8_t ec = Fp8ScaleExponent(c, 1);
  EXPECT_LE(0.001f, std::ldexp(448.0f, ec));
  EXPECT_GT(0.001f, std::ldexp(448.0f, ec - 1));
  uint8_t codes[3];
  float back[3];
  QuantizeFp8(a, 3, e, codes);
  DequantizeFp8(codes, 3, e, back);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(back[i], a[i], std::fabs(a[i]) / 16 + 1e-6) << i;
  float zero[2] = {0, 0};
  EXPECT_EQ(Fp8ScaleExponent(zero, 2), 0);
}

}  // namespace
}  // namespace paddock::policy::engine

namespace paddock::policy::engine {
namespace {

TEST(EngineNumerics, IndexerScoresMatchDequantizedKeys) {
  // 4-bit keys for 50 blocks, 3 heads x 32 dims: the kernel's scores equal
  // scale * sum_h w_h * relu(q_h . key) computed from the unpacked integers.
  const size_t dim = 32, heads = 3, blocks = 50, stride = dim / 2 + 4;
  std::vector<uint8_t> keys(blocks * stride);
  std::vector<float> q(heads * dim), w = {0.5f, -1.0f, 2.0f}, scores(blocks);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.7f * i);
  for (size_t j = 0; j < blocks; ++j) {
    std::vector<float> key(dim);
    for (size_t i = 0; i < dim; ++i) key[i] = std::cos(0.3f * (i + 7 * j));
    float scale = QuantizeInt4(key.data(), dim, &keys[j * stride]);
    std::memcpy(&keys[j * stride + dim / 2], &scale, 4);
  }
  IndexerScores(keys.data(), stride, blocks, q.data(), w.data(), heads, dim, scores.data());
  for (size_t j = 0; j < blocks; ++j) {
    std::vector<float> ints(dim);
    UnpackInt4(&keys[j * stride], dim, ints.data());
    float scale;
    std::memcpy(&scale, &keys[j * stride + dim / 2], 4);
    double want = 0;
    for (size_t h = 0; h < heads; ++h) {
      double dot = 0;
      for (size_t i = 0; i < dim; ++i) dot += double(q[h * dim + i]) * ints[i];
      want += w[h] * std::max(0.0, dot);
    }
    EXPECT_NEAR(scores[j], want * scale, 1e-4 * (1 + std::fabs(want * scale))) << j;
  }
}

}  // namespace
}  // namespace paddock::policy::engine

namespace paddock::policy::engine {
namespace {

TEST(EngineNumerics, OutputHeadIsOneFmaChainPerOutputWhateverTheRows) {
  // Every logit is fma(x[k], w[k][c], acc) for k in order from 0, whether the
  // row is alone or in a batch, on the AVX2, AVX-512 or portable path: that is
  // what makes batched decoding equal unbatched decoding bit for bit.
  const size_t in = 24, cols = 150, blocks = (cols + 63) / 64;
  std::vector<uint16_t> wt(blocks * 64 * in, 0);
  std::vector<float> wf(cols * in);
  for (size_t c = 0; c < cols; ++c)
    for (size_t k = 0; k < in; ++k) {
      uint16_t b = FloatToBf16(std::sin(0.37f * c + 1.3f * k));
      wt[(c / 64) * 64 * in + k * 64 + c % 64] = b;
      wf[c * in + k] = Bf16ToFloat(b);
    }
  for (size_t rows : {1u, 3u, 4u, 9u}) {
    std::vector<float> x(rows * in), y(rows * cols, -1.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.11f * i);
    MatMulTransposedBf16(x.data(), rows, in, wt.data(), 0, 0, blocks * 64, cols, y.data(), cols);
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) {
        float acc = 0;
        for (size_t k = 0; k < in; ++k) acc = CpuHasAvx2Fma() ? std::fma(x[r * in + k], wf[c * in + k], acc)
                                                               : acc + x[r * in + k] * wf[c * in + k];
        ASSERT_EQ(y[r * cols + c], acc) << "rows " << rows << " r " << r << " c " << c;
      }
  }
}

}  // namespace
}  // namespace paddock::policy::engine

namespace paddock::policy::engine {
namespace {

TEST(EngineNumerics, Fp8DequantizeEqualsTheTableForEveryCodeAndScale) {
  // The vector path must give the table's floats bit for bit (NaN as NaN).
  std::vector<uint8_t> codes(256 + 5);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(i * 37 + 11);
  for (int i = 0; i < 256; ++i) codes[i] = static_cast<uint8_t>(i);
  for (int e : {-20, -3, 0, 5}) {
    std::vector<float> out(codes.size());
    DequantizeFp8(codes.data(), codes.size(), static_cast<int8_t>(e), out.data());
    for (size_t i = 0; i < codes.size(); ++i) {
      float want = E4M3ToFloat(codes[i]) * std::ldexp(1.0f, e);
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(out[i])) << i;
      } else {
        EXPECT_EQ(std::memcmp(&out[i], &want, 4), 0) << "code " << int(codes[i]) << " e " << e;
      }
    }
  }
}

}  // namespace
}  // namespace paddock::policy::engine
