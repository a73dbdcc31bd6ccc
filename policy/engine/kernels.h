// The engine's inner loops: matrix products and dot products with AVX2+FMA
// chosen at run time when the CPU has them (the build keeps portable x86-64
// flags), a plain loop otherwise; and a fixed thread pool.
//
// Determinism contract: every output element Y[r][c] of MatMul is computed by
// the same sequence of floating-point operations whatever the number of rows,
// their order, the tiling or the thread that computes it. That is what makes
// batched decoding equal unbatched decoding bit for bit.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace paddock::policy::engine {

// Y[r][c] = sum_k X[r][k] * W[c][k] for r < rows, c < cols; W is [cols][in]
// row-major (the layout of a PyTorch Linear weight). ldy is Y's row stride.
void MatMul(const float* x, size_t rows, size_t in, const float* w, size_t cols, float* y,
            size_t ldy);
// The same with W in BF16 (the embedding / tied output head).
void MatMulBf16(const float* x, size_t rows, size_t in, const uint16_t* w, size_t cols,
                float* y, size_t ldy);
// The output head's product, for a short inner dimension: W in column blocks
// of 64, BF16 — block b (columns 64b .. 64b+63) is [in][64] at wt + 64 * b * in,
// zero-padded past `cols` — giving Y[r][c] for c in [c0, c1) (multiples of 64;
// columns >= cols are not written). Each output is one multiply-add chain over
// k = 0..in-1 in order, whatever the tiling or instruction set.
void MatMulTransposedBf16(const float* x, size_t rows, size_t in, const uint16_t* wt, size_t ldw,
                          size_t c0, size_t c1, size_t cols, float* y, size_t ldy);
// Index i of the first element where the running sum of p[0..i] exceeds
// target (n - 1 if none does).
size_t CumulativeSearch(const float* p, size_t n, double target);
// Lightning-indexer scores over 4-bit keys: block j's key is `stride` bytes at
// keys + j * stride (dim / 2 packed bytes, then its FP32 scale);
// scores[j] = scale_j * sum_h w[h] * relu(q[h] . key_j) for h < heads.
void IndexerScores(const uint8_t* keys, size_t stride, size_t blocks, const float* q,
                   const float* w, size_t heads, size_t dim, float* scores);
float Dot(const float* a, const float* b, size_t n);
// y += a * x
void Axpy(float a, const float* x, float* y, size_t n);
// out[i] = exp(x[i] * scale - shift) (one fused multiply-subtract); returns their sum.
double ExpScaled(const float* x, size_t n, float scale, float shift, float* out);
float MaxOf(const float* x, size_t n);
// out[i] = x[i] * scale; returns the largest out[i].
float ScaleMax(const float* x, size_t n, float scale, float* out);
// out[i] = exp(x[i] - shift); returns their sum.
double ExpShifted(const float* x, size_t n, float shift, float* out);
bool CpuHasAvx2Fma();

// A fixed pool; ParallelFor splits [0, n) into contiguous chunks, one per
// worker (the caller's thread included), and returns when all are done. One
// caller at a time (the engine's worker thread); not re-entrant.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads <= 0: hardware_concurrency
  ~ThreadPool();
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  void ParallelFor(size_t n, const std::function<void(size_t begin, size_t end)>& fn);

 private:
  void Loop(size_t index);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  uint64_t generation_ = 0;
  size_t pending_ = 0;
  bool stop_ = false;
};

}  // namespace paddock::policy::engine
