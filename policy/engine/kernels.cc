#include "policy/engine/kernels.h"

#include <immintrin.h>

#include <cmath>

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
  for (auto& r : acc)
    for (auto& c : r) c = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= in; k += 8) {
    __m256 wv[4];
    for (int c = 0; c < 4; ++c) wv[c] = LoadW(w + c * in + k);
    for (int r = 0; r < 4; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * in + k);
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
  double sum = 0;
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k), sv));
    _mm256_storeu_ps(out + k, e);
    sum += Hsum(e);
  }
  for (; k < n; ++k) {
    out[k] = std::exp(x[k] - shift);
    sum += out[k];
  }
  return sum;
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
