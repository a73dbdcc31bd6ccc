// The model: embedding, layers of (RMSNorm, hybrid attention, RMSNorm, MoE),
// final RMSNorm, output head tied to the embedding. Forward() feeds any number
// of sequences at once, each with any number of new tokens (prefill chunks and
// single decode tokens mixed), updating each sequence's compressed caches.
// docs/embedded-engine.md gives the equations.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "policy/engine/config.h"
#include "policy/engine/kernels.h"
#include "policy/engine/weights.h"

namespace paddock::policy::engine {

// One layer's KV state for one sequence. Only `window`, `blocks` and
// `index_keys` are cache (they grow with the context); the pooling
// accumulators are fixed-size working state for the block being filled.
struct LayerCache {
  // Sliding window: min(length, window) entries; token p lives in slot p % window.
  std::vector<uint8_t> window;
  // Compressed entries, one per completed block of `ratio` tokens.
  std::vector<uint8_t> blocks;
  // CSA only: one 4-bit indexer key (index_dim / 2 bytes + FP32 scale) per block.
  std::vector<uint8_t> index_keys;
  // Online softmax-gated pooling of the current block, per channel:
  // running max of the gate logits, sum of exp(gate - max), sum of exp(...) * value.
  std::vector<float> pool_max, pool_den, pool_num;
  std::vector<float> ipool_max, ipool_den, ipool_num;
  int pending = 0;  // tokens pooled into the current block so far
};

struct SequenceState {
  size_t length = 0;  // tokens fed so far
  std::vector<LayerCache> layers;
  // Bytes of KV cache held (windows + compressed entries + indexer keys): what
  // the KV report's formula predicts.
  size_t CacheBytes() const;
  // Fixed working state (pooling accumulators), independent of the length.
  size_t WorkingBytes() const;
};

// Sizes of one stored entry.
size_t EntryBytes(const Config& c);       // (head_dim - rope_dim) FP8 + rope_dim BF16 + 1 scale byte
size_t IndexKeyBytes(const Config& c);    // index_dim / 2 + 4
// Reads one stored entry (window or compressed) back into head_dim floats.
void DecodeStoredEntry(const Config& c, const uint8_t* entry, float* out);

class Model {
 public:
  // threads <= 0: std::thread::hardware_concurrency(). exact_kv: keep window and
  // compressed entries and indexer keys as float32 instead of emulating their
  // FP8/BF16/int4 storage (the same equations without the rounding; what a
  // float32 trainer computes: examples/train/twin.py).
  static Result<std::unique_ptr<Model>> Create(Weights weights, int threads, bool exact_kv = false);
  ~Model();

  const Config& config() const { return w_.config; }
  const Weights& weights() const { return w_; }
  int threads() const { return pool_.size(); }
  bool exact_kv() const { return exact_kv_; }
  SequenceState NewSequence() const;

  struct Chunk {
    SequenceState* seq;
    std::span<const int32_t> tokens;  // new tokens, fed in order after seq->length
    bool want_logits;                 // logits of the chunk's last token
  };
  // Feeds every chunk (each to a distinct sequence). `logits` receives one row
  // of vocab_size floats per chunk with want_logits, in chunk order. Token ids
  // must be in [0, vocab_size) (the engine checks before calling).
  void Forward(std::span<const Chunk> chunks, std::vector<float>& logits);

  // Appends n tokens' cache entries computed from pseudo-random hidden states
  // (seeded), skipping attention and the feed-forward: the caches have the
  // sizes and formats of a real n-token context at a fraction of the cost.
  // For the bench and the KV measurement; not for generation.
  void FillSynthetic(SequenceState& seq, size_t n, uint64_t seed);

 private:
  struct Layer;
  Model(Weights weights, int threads, bool exact_kv);
  void ParallelMatMul(const float* x, size_t rows, size_t in, const float* w, size_t cols,
                      float* y);
  void RmsNorm(const float* x, size_t rows, const float* weight, float* y) const;
  void Rotate(float* v, size_t pos, bool inverse) const;
  void EncodeEntry(const float* v, uint8_t* out) const;
  void DecodeEntry(const uint8_t* in, float* out) const;
  void AppendToCaches(const Layer& layer, LayerCache& cache, size_t pos, const float* kv,
                      const float* gate, const float* ikey, const float* igate) const;
  void SelectBlocks(const Layer& layer, const LayerCache& cache, const float* iq,
                    const float* iw, std::vector<uint32_t>& selected) const;
  void AttendRow(const Layer& layer, const LayerCache& cache, size_t pos, const float* q,
                 const float* iq, const float* iw, float* out) const;
  void FeedForward(const Layer& layer, size_t rows, float* x);

  Weights w_;
  ThreadPool pool_;
  std::vector<Layer> layers_;
  std::vector<double> inv_freq_;
  std::vector<uint16_t> head_t_;  // embedding in column blocks of 64 ([d_model][64] each), for the output head
  size_t head_ld_ = 0;
  size_t entry_bytes_, index_key_bytes_;
  bool exact_kv_ = false;  // entries and indexer keys stored as float32
};

}  // namespace paddock::policy::engine
