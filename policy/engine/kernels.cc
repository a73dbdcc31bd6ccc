#include "policy/engine/kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace paddock::policy::engine {
namespace {

// ---- Portable path ---------------------------------------------------------
// Eight partial sums like the vector path, so both paths share a structure.

float DotScalar(const float* a, const float* b, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[k + l] * b[k + l];
  float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

inline float Bf(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

float DotBf16Scalar(const float* x, const uint16_t* w, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] += Bf(w[k + l]) * x[k + l];
  float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (; k < n; ++k) s += Bf(w[k]) * x[k];
  return s;
}

// ---- AVX2 + FMA path ---------------------------------------------------------

#define PADDOCK_AVX2 __attribute__((target("avx2,fma")))

PADDOCK_AVX2 inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

PADDOCK_AVX2 inline __m256 LoadBf16(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
PADDOCK_AVX2 inline __m256 LoadW(const float* p) { return _mm256_loadu_ps(p); }
PADDOCK_AVX2 inline __m256 LoadW(const uint16_t* p) { return LoadBf16(p); }
inline float ScalarW(const float* p) { return *p; }
inline float ScalarW(const uint16_t* p) { return Bf(*p); }

// One accumulator per (row, col): acc = fma(w[k:k+8], x[k:k+8], acc) for each
// full 8-block in order, then Hsum, then the scalar tail. Every kernel below
// follows exactly this per-element recipe.
template <typename W>
PADDOCK_AVX2 float DotAvx(const float* x, const W* w, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= n; k += 8) acc = _mm256_fmadd_ps(LoadW(w + k), _mm256_loadu_ps(x + k), acc);
  float s = Hsum(acc);
  for (; k < n; ++k) s += ScalarW(w + k) * x[k];
  return s;
}

// 4 rows x 4 cols micro-kernel.
template <typename W>
PADDOCK_AVX2 void Tile4x4(const float* x, size_t in, const W* w, float* y, size_t ldy) {
  __m256 acc[4][4];
#pragma GCC unroll 4
  for (auto& r : acc)
#pragma GCC unroll 4
    for (auto& c : r) c = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= in; k += 8) {
    __m256 wv[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) wv[c] = LoadW(w + c * in + k);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * in + k);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_fmadd_ps(wv[c], xv, acc[r][c]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) {
      float s = Hsum(acc[r][c]);
      for (size_t kk = k; kk < in; ++kk) s += ScalarW(w + c * in + kk) * x[r * in + kk];
      y[r * ldy + c] = s;
    }
}

// 1 row x 4 cols.
template <typename W>
PADDOCK_AVX2 void Tile1x4(const float* x, size_t in, const W* w, float* y) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  size_t k = 0;
  for (; k + 8 <= in; k += 8) {
    __m256 xv = _mm256_loadu_ps(x + k);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) acc[c] = _mm256_fmadd_ps(LoadW(w + c * in + k), xv, acc[c]);
  }
  for (int c = 0; c < 4; ++c) {
    float s = Hsum(acc[c]);
    for (size_t kk = k; kk < in; ++kk) s += ScalarW(w + c * in + kk) * x[kk];
    y[c] = s;
  }
}

template <typename W>
PADDOCK_AVX2 void MatMulAvx(const float* x, size_t rows, size_t in, const W* w, size_t cols,
                            float* y, size_t ldy) {
  // Column blocks small enough to stay in L1/L2 while every row streams past.
  const size_t block = 64;
  for (size_t c0 = 0; c0 < cols; c0 += block) {
    size_t c1 = std::min(cols, c0 + block);
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      size_t c = c0;
      for (; c + 4 <= c1; c += 4) Tile4x4(x + r * in, in, w + c * in, y + r * ldy + c, ldy);
      for (; c < c1; ++c)
        for (size_t rr = r; rr < r + 4; ++rr) y[rr * ldy + c] = DotAvx(x + rr * in, w + c * in, in);
    }
    for (; r < rows; ++r) {
      size_t c = c0;
      for (; c + 4 <= c1; c += 4) Tile1x4(x + r * in, in, w + c * in, y + r * ldy + c);
      for (; c < c1; ++c) y[r * ldy + c] = DotAvx(x + r * in, w + c * in, in);
    }
  }
}

PADDOCK_AVX2 void AxpyAvx(float a, const float* x, float* y, size_t n) {
  __m256 av = _mm256_set1_ps(a);
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k)));
  for (; k < n; ++k) y[k] += a * x[k];
}

// exp on 8 lanes: range reduction x = n ln2 + r, |r| <= ln2/2, degree-6
// polynomial for e^r (relative error ~2e-7, like expf's float accuracy class).
PADDOCK_AVX2 __m256 Exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

PADDOCK_AVX2 double ExpShiftedAvx(const float* x, size_t n, float shift, float* out) {
  __m256 sv = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k), sv));
    _mm256_storeu_ps(out + k, e);
    acc = _mm256_add_ps(acc, e);
  }
  double sum = Hsum(acc);
  for (; k < n; ++k) {
    out[k] = std::exp(x[k] - shift);
    sum += out[k];
  }
  return sum;
}

// Stores 8 outputs starting at column c, dropping those at or past `cols`.
PADDOCK_AVX2 inline void StoreCols(float* y, size_t ldy, size_t cols, size_t r, size_t c, __m256 v) {
  if (c + 8 <= cols) {
    _mm256_storeu_ps(y + r * ldy + c, v);
  } else {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (size_t l = 0; l < 8 && c + l < cols; ++l) y[r * ldy + c + l] = tmp[l];
  }
}

PADDOCK_AVX2 void MatMulTransposedBf16Avx(const float* x, size_t rows, size_t in,
                                          const uint16_t* wt, size_t ldw, size_t c0, size_t c1,
                                          size_t cols, float* y, size_t ldy) {
  constexpr size_t kBlock = 64;
  thread_local std::vector<float> tile;
  tile.resize(in * kBlock);
  for (size_t cb = c0; cb < c1; cb += kBlock) {
    const size_t width = kBlock;
    float* tw = tile.data();
    for (size_t k = 0; k < in; ++k)
      for (size_t j = 0; j < width; j += 8)
        _mm256_storeu_ps(tw + k * kBlock + j, LoadBf16(wt + cb * in + k * kBlock + j));
    const float* tp = tile.data();
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      const float* x0 = x + r * in;
      const float* x1 = x0 + in;
      const float* x2 = x1 + in;
      const float* x3 = x2 + in;
      for (size_t c = 0; c < width && cb + c < cols; c += 16) {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
               a30 = a00, a31 = a00;
        const float* t = tp + c;
        for (size_t k = 0; k < in; ++k, t += kBlock) {
          __m256 w0 = _mm256_loadu_ps(t), w1 = _mm256_loadu_ps(t + 8);
          __m256 b = _mm256_broadcast_ss(x0 + k);
          a00 = _mm256_fmadd_ps(b, w0, a00);
          a01 = _mm256_fmadd_ps(b, w1, a01);
          b = _mm256_broadcast_ss(x1 + k);
          a10 = _mm256_fmadd_ps(b, w0, a10);
          a11 = _mm256_fmadd_ps(b, w1, a11);
          b = _mm256_broadcast_ss(x2 + k);
          a20 = _mm256_fmadd_ps(b, w0, a20);
          a21 = _mm256_fmadd_ps(b, w1, a21);
          b = _mm256_broadcast_ss(x3 + k);
          a30 = _mm256_fmadd_ps(b, w0, a30);
          a31 = _mm256_fmadd_ps(b, w1, a31);
        }
        StoreCols(y, ldy, cols, r, cb + c, a00);
        StoreCols(y, ldy, cols, r, cb + c + 8, a01);
        StoreCols(y, ldy, cols, r + 1, cb + c, a10);
        StoreCols(y, ldy, cols, r + 1, cb + c + 8, a11);
        StoreCols(y, ldy, cols, r + 2, cb + c, a20);
        StoreCols(y, ldy, cols, r + 2, cb + c + 8, a21);
        StoreCols(y, ldy, cols, r + 3, cb + c, a30);
        StoreCols(y, ldy, cols, r + 3, cb + c + 8, a31);
      }
    }
    for (; r < rows; ++r) {
      const float* x0 = x + r * in;
      for (size_t c = 0; c < width && cb + c < cols; c += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const float* t = tp + c;
        for (size_t k = 0; k < in; ++k, t += kBlock) {
          __m256 b = _mm256_broadcast_ss(x0 + k);
          a0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(t), a0);
          a1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(t + 8), a1);
          a2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(t + 16), a2);
          a3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(t + 24), a3);
        }
        StoreCols(y, ldy, cols, r, cb + c, a0);
        StoreCols(y, ldy, cols, r, cb + c + 8, a1);
        StoreCols(y, ldy, cols, r, cb + c + 16, a2);
        StoreCols(y, ldy, cols, r, cb + c + 24, a3);
      }
    }
  }
}

PADDOCK_AVX2 size_t CumulativeSearchAvx(const float* p, size_t n, double target) {
  constexpr size_t kChunk = 1024;
  double acc = 0;
  size_t base = 0;
  for (; base + kChunk <= n; base += kChunk) {
    __m256 s = _mm256_setzero_ps();
    for (size_t k = 0; k < kChunk; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(p + base + k));
    double chunk = Hsum(s);
    if (acc + chunk > target) break;
    acc += chunk;
  }
  for (size_t i = base; i < n; ++i) {
    acc += p[i];
    if (acc > target) return i;
  }
  return n - 1;
}

PADDOCK_AVX2 double ExpScaledAvx(const float* x, size_t n, float scale, float shift, float* out) {
  __m256 sv = _mm256_set1_ps(shift), sc = _mm256_set1_ps(scale);
  __m256 acc = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 e = Exp8(_mm256_fmsub_ps(_mm256_loadu_ps(x + k), sc, sv));
    _mm256_storeu_ps(out + k, e);
    acc = _mm256_add_ps(acc, e);
  }
  double sum = Hsum(acc);
  for (; k < n; ++k) {
    out[k] = std::exp(x[k] * scale - shift);
    sum += out[k];
  }
  return sum;
}

PADDOCK_AVX2 float MaxOfAvx(const float* x, size_t n) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  size_t k = 0;
  for (; k + 8 <= n; k += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + k));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mx);
  float m = lanes[0];
  for (int l = 1; l < 8; ++l) m = std::max(m, lanes[l]);
  for (; k < n; ++k) m = std::max(m, x[k]);
  return m;
}

PADDOCK_AVX2 float ScaleMaxAvx(const float* x, size_t n, float scale, float* out) {
  __m256 sv = _mm256_set1_ps(scale), mx = _mm256_set1_ps(-INFINITY);
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), sv);
    _mm256_storeu_ps(out + k, v);
    mx = _mm256_max_ps(mx, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mx);
  float m = lanes[0];
  for (int l = 1; l < 8; ++l) m = std::max(m, lanes[l]);
  for (; k < n; ++k) {
    out[k] = x[k] * scale;
    m = std::max(m, out[k]);
  }
  return m;
}

PADDOCK_AVX2 void IndexerScoresAvx(const uint8_t* keys, size_t stride, size_t blocks,
                                   const float* q, const float* w, size_t heads, size_t dim,
                                   float* scores) {
  thread_local std::vector<float> kf;
  kf.resize(dim);
  float* k = kf.data();
  const __m128i low = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  for (size_t j = 0; j < blocks; ++j) {
    const uint8_t* p = keys + j * stride;
    for (size_t i = 0; i < dim / 2; i += 8) {
      __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i));
      __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
      __m128i v = _mm_unpacklo_epi8(lo, hi);              // element order 2i, 2i+1, ...
      v = _mm_sub_epi8(_mm_xor_si128(v, eight), eight);   // 4-bit two's complement -> int8
      _mm256_storeu_ps(k + 2 * i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)));
      _mm256_storeu_ps(k + 2 * i + 8, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))));
    }
    // Heads four at a time: four dot products reduced together into one
    // 128-bit vector, ReLU, weighted, summed.
    __m128 total = _mm_setzero_ps();
    size_t h = 0;
    for (; h + 4 <= heads; h += 4) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      const float* q0 = q + h * dim;
      for (size_t i = 0; i < dim; i += 8) {
        __m256 kv = _mm256_loadu_ps(k + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i), kv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + dim + i), kv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 2 * dim + i), kv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 3 * dim + i), kv, a3);
      }
      __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      __m128 dots = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
      dots = _mm_max_ps(dots, _mm_setzero_ps());
      total = _mm_fmadd_ps(dots, _mm_loadu_ps(w + h), total);
    }
    total = _mm_add_ps(total, _mm_movehl_ps(total, total));
    float s = _mm_cvtss_f32(_mm_add_ss(total, _mm_movehdup_ps(total)));
    for (; h < heads; ++h) s += w[h] * std::max(0.0f, DotAvx(q + h * dim, k, dim));
    float scale;
    __builtin_memcpy(&scale, p + dim / 2, 4);
    scores[j] = s * scale;
  }
}

// ---- AVX-512 output head ------------------------------------------------------
// The same per-output recipe as the AVX2 kernel (one FMA chain over k in
// order, from zero), 16 lanes at a time: results are bit-identical.

#define PADDOCK_AVX512 __attribute__((target("avx512f,avx2,fma")))

PADDOCK_AVX512 inline void StoreCols16(float* y, size_t ldy, size_t cols, size_t r, size_t c, __m512 v) {
  if (c + 16 <= cols) {
    _mm512_storeu_ps(y + r * ldy + c, v);
  } else if (c < cols) {
    __mmask16 m = static_cast<__mmask16>((1u << (cols - c)) - 1);
    _mm512_mask_storeu_ps(y + r * ldy + c, m, v);
  }
}

PADDOCK_AVX512 void MatMulTransposedBf16Avx512(const float* x, size_t rows, size_t in,
                                               const uint16_t* wt, size_t ldw, size_t c0, size_t c1,
                                               size_t cols, float* y, size_t ldy) {
  constexpr size_t kBlock = 64;
  thread_local std::vector<float> tile;
  tile.resize(in * kBlock);
  for (size_t cb = c0; cb < c1; cb += kBlock) {
    float* tw = tile.data();
    for (size_t k = 0; k < in; ++k)
      for (size_t j = 0; j < kBlock; j += 16) {
        __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + cb * in + k * kBlock + j));
        _mm512_storeu_ps(tw + k * kBlock + j, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
      }
    const float* tp = tile.data();
    size_t r = 0;
#define PADDOCK_ROW_FMA(R)                              \
  {                                                     \
    __m512 b = _mm512_set1_ps(x##R[k]);                 \
    a##R##0 = _mm512_fmadd_ps(b, w0, a##R##0);          \
    a##R##1 = _mm512_fmadd_ps(b, w1, a##R##1);          \
    a##R##2 = _mm512_fmadd_ps(b, w2, a##R##2);          \
    a##R##3 = _mm512_fmadd_ps(b, w3, a##R##3);          \
  }
#define PADDOCK_ROW_STORE(R)                                      \
  StoreCols16(y, ldy, cols, r + R, cb, a##R##0);                  \
  StoreCols16(y, ldy, cols, r + R, cb + 16, a##R##1);             \
  StoreCols16(y, ldy, cols, r + R, cb + 32, a##R##2);             \
  StoreCols16(y, ldy, cols, r + R, cb + 48, a##R##3);
    for (; r + 4 <= rows; r += 4) {
      const float* x0 = x + r * in;
      const float* x1 = x0 + in;
      const float* x2 = x1 + in;
      const float* x3 = x2 + in;
      __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00,
             a12 = a00, a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00,
             a31 = a00, a32 = a00, a33 = a00;
      const float* t = tp;
      for (size_t k = 0; k < in; ++k, t += kBlock) {
        __m512 w0 = _mm512_loadu_ps(t), w1 = _mm512_loadu_ps(t + 16), w2 = _mm512_loadu_ps(t + 32),
               w3 = _mm512_loadu_ps(t + 48);
        PADDOCK_ROW_FMA(0)
        PADDOCK_ROW_FMA(1)
        PADDOCK_ROW_FMA(2)
        PADDOCK_ROW_FMA(3)
      }
      PADDOCK_ROW_STORE(0)
      PADDOCK_ROW_STORE(1)
      PADDOCK_ROW_STORE(2)
      PADDOCK_ROW_STORE(3)
    }
    for (; r < rows; ++r) {
      const float* x0 = x + r * in;
      __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
      const float* t = tp;
      for (size_t k = 0; k < in; ++k, t += kBlock) {
        __m512 w0 = _mm512_loadu_ps(t), w1 = _mm512_loadu_ps(t + 16), w2 = _mm512_loadu_ps(t + 32),
               w3 = _mm512_loadu_ps(t + 48);
        PADDOCK_ROW_FMA(0)
      }
      const size_t rr = r;
      r = rr;  // PADDOCK_ROW_STORE(0) stores row r + 0
      PADDOCK_ROW_STORE(0)
    }
#undef PADDOCK_ROW_FMA
#undef PADDOCK_ROW_STORE
  }
}

PADDOCK_AVX512 __m512 Exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f);
  x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

PADDOCK_AVX512 double ExpScaledAvx512(const float* x, size_t n, float scale, float shift, float* out) {
  __m512 sv = _mm512_set1_ps(shift), sc = _mm512_set1_ps(scale);
  __m512 acc = _mm512_setzero_ps();
  size_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512 e = Exp16(_mm512_fmsub_ps(_mm512_loadu_ps(x + k), sc, sv));
    _mm512_storeu_ps(out + k, e);
    acc = _mm512_add_ps(acc, e);
  }
  double sum = _mm512_reduce_add_ps(acc);
  for (; k < n; ++k) {
    out[k] = std::exp(x[k] * scale - shift);
    sum += out[k];
  }
  return sum;
}

PADDOCK_AVX512 float MaxOfAvx512(const float* x, size_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  size_t k = 0;
  for (; k + 16 <= n; k += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(x + k));
  float m = _mm512_reduce_max_ps(mx);
  for (; k < n; ++k) m = std::max(m, x[k]);
  return m;
}

bool DetectAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
}

bool UseAvx512() {
  static const bool use = DetectAvx512() && std::getenv("PADDOCK_ENGINE_NO_AVX512") == nullptr;
  return use;
}

bool DetectAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace

bool CpuHasAvx2Fma() {
  static const bool has = DetectAvx2();
  return has;
}

void MatMul(const float* x, size_t rows, size_t in, const float* w, size_t cols, float* y,
            size_t ldy) {
  if (CpuHasAvx2Fma()) return MatMulAvx(x, rows, in, w, cols, y, ldy);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) y[r * ldy + c] = DotScalar(x + r * in, w + c * in, in);
}

void MatMulBf16(const float* x, size_t rows, size_t in, const uint16_t* w, size_t cols,
                float* y, size_t ldy) {
  if (CpuHasAvx2Fma()) return MatMulAvx(x, rows, in, w, cols, y, ldy);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) y[r * ldy + c] = DotBf16Scalar(x + r * in, w + c * in, in);
}

void MatMulTransposedBf16(const float* x, size_t rows, size_t in, const uint16_t* wt, size_t ldw,
                          size_t c0, size_t c1, size_t cols, float* y, size_t ldy) {
  (void)ldw;
  if (UseAvx512()) return MatMulTransposedBf16Avx512(x, rows, in, wt, ldw, c0, c1, cols, y, ldy);
  if (CpuHasAvx2Fma()) return MatMulTransposedBf16Avx(x, rows, in, wt, ldw, c0, c1, cols, y, ldy);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = c0; c < std::min(c1, cols); ++c) {
      float acc = 0;
      for (size_t k = 0; k < in; ++k) acc += x[r * in + k] * Bf(wt[(c / 64) * 64 * in + k * 64 + c % 64]);
      y[r * ldy + c] = acc;
    }
}

float ScaleMax(const float* x, size_t n, float scale, float* out) {
  if (CpuHasAvx2Fma()) return ScaleMaxAvx(x, n, scale, out);
  float m = -INFINITY;
  for (size_t k = 0; k < n; ++k) {
    out[k] = x[k] * scale;
    m = std::max(m, out[k]);
  }
  return m;
}

double ExpScaled(const float* x, size_t n, float scale, float shift, float* out) {
  if (UseAvx512()) return ExpScaledAvx512(x, n, scale, shift, out);
  if (CpuHasAvx2Fma()) return ExpScaledAvx(x, n, scale, shift, out);
  double sum = 0;
  for (size_t k = 0; k < n; ++k) {
    out[k] = std::exp(x[k] * scale - shift);
    sum += out[k];
  }
  return sum;
}

float MaxOf(const float* x, size_t n) {
  if (UseAvx512()) return MaxOfAvx512(x, n);
  if (CpuHasAvx2Fma()) return MaxOfAvx(x, n);
  float m = -INFINITY;
  for (size_t k = 0; k < n; ++k) m = std::max(m, x[k]);
  return m;
}

size_t CumulativeSearch(const float* p, size_t n, double target) {
  if (CpuHasAvx2Fma()) return CumulativeSearchAvx(p, n, target);
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += p[i];
    if (acc > target) return i;
  }
  return n - 1;
}

void IndexerScores(const uint8_t* keys, size_t stride, size_t blocks, const float* q,
                   const float* w, size_t heads, size_t dim, float* scores) {
  if (CpuHasAvx2Fma() && dim % 16 == 0) return IndexerScoresAvx(keys, stride, blocks, q, w, heads, dim, scores);
  std::vector<float> k(dim);
  for (size_t j = 0; j < blocks; ++j) {
    const uint8_t* p = keys + j * stride;
    for (size_t i = 0; i < dim; ++i) {
      int nib = (p[i / 2] >> ((i & 1) * 4)) & 0xF;
      k[i] = static_cast<float>(nib >= 8 ? nib - 16 : nib);
    }
    float s = 0;
    for (size_t h = 0; h < heads; ++h) s += w[h] * std::max(0.0f, Dot(q + h * dim, k.data(), dim));
    float scale;
    __builtin_memcpy(&scale, p + dim / 2, 4);
    scores[j] = s * scale;
  }
}

float Dot(const float* a, const float* b, size_t n) {
  if (CpuHasAvx2Fma()) return DotAvx(a, b, n);
  return DotScalar(a, b, n);
}

void Axpy(float a, const float* x, float* y, size_t n) {
  if (CpuHasAvx2Fma()) return AxpyAvx(a, x, y, n);
  for (size_t k = 0; k < n; ++k) y[k] += a * x[k];
}

double ExpShifted(const float* x, size_t n, float shift, float* out) {
  if (CpuHasAvx2Fma()) return ExpShiftedAvx(x, n, shift, out);
  double sum = 0;
  for (size_t k = 0; k < n; ++k) {
    out[k] = std::exp(x[k] - shift);
    sum += out[k];
  }
  return sum;
}

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { Loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(size_t n, const std::function<void(size_t, size_t)>& fn) {
  size_t parts = std::min(n, static_cast<size_t>(size()));
  if (parts <= 1) {
    if (n) fn(0, n);
    return;
  }
  {
    std::lock_guard lock(mu_);
    fn_ = &fn;
    n_ = n;
    pending_ = workers_.size();
    ++generation_;
  }
  cv_.notify_all();
  size_t total = size();
  fn(0, n / total);  // chunk 0 on the caller's thread
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  fn_ = nullptr;
}

void ThreadPool::Loop(size_t index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(size_t, size_t)>* fn;
    size_t n;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      n = n_;
    }
    size_t total = workers_.size() + 1;
    size_t begin = n * index / total, end = n * (index + 1) / total;
    if (begin < end) (*fn)(begin, end);
    {
      std::lock_guard lock(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
}

}  // namespace paddock::policy::engine
