#include "policy/engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "policy/engine/numerics.h"

namespace paddock::policy::engine {

size_t EntryBytes(const Config& c) {
  return static_cast<size_t>(c.nope_dim()) + 2u * c.rope_dim + 1u;
}
size_t IndexKeyBytes(const Config& c) { return static_cast<size_t>(c.index_dim) / 2 + 4; }

size_t SequenceState::CacheBytes() const {
  size_t n = 0;
  for (const auto& l : layers) n += l.window.size() + l.blocks.size() + l.index_keys.size();
  return n;
}

size_t SequenceState::WorkingBytes() const {
  size_t n = 0;
  for (const auto& l : layers)
    n += sizeof(float) * (l.pool_max.size() + l.pool_den.size() + l.pool_num.size() +
                          l.ipool_max.size() + l.ipool_den.size() + l.ipool_num.size());
  return n;
}

struct Model::Layer {
  LayerKind kind;
  int ratio;
  const float *attn_norm, *wq, *wkv, *wgate = nullptr, *pos_bias = nullptr, *wo;
  const float *iwq = nullptr, *iwk = nullptr, *iwhead = nullptr, *iwgate = nullptr,
              *ipos_bias = nullptr;
  const float *ffn_norm, *router, *sw1 = nullptr, *sw3 = nullptr, *sw2 = nullptr;
  std::vector<const float*> ew1, ew3, ew2;
};

Model::~Model() = default;

Result<std::unique_ptr<Model>> Model::Create(Weights weights, int threads, bool exact_kv) {
  if (auto st = weights.config.Validate(); !st.ok()) return st;
  for (const auto& spec : TensorSpecs(weights.config)) {
    if (spec.name == "embed.weight") {
      if (weights.embed.size() != static_cast<size_t>(spec.numel()))
        return Error(Code::kInvalidArgument, "tensor 'embed.weight' has {} values, expected {}",
                     weights.embed.size(), spec.numel());
      continue;
    }
    auto it = weights.tensors.find(spec.name);
    if (it == weights.tensors.end())
      return Error(Code::kInvalidArgument, "missing tensor '{}'", spec.name);
    if (it->second.size() != static_cast<size_t>(spec.numel()))
      return Error(Code::kInvalidArgument, "tensor '{}' has {} values, expected {}", spec.name,
                   it->second.size(), spec.numel());
  }
  return std::unique_ptr<Model>(new Model(std::move(weights), threads, exact_kv));
}

Model::Model(Weights weights, int threads, bool exact_kv)
    : w_(std::move(weights)), pool_(threads), exact_kv_(exact_kv) {
  const Config& c = w_.config;
  entry_bytes_ = exact_kv ? sizeof(float) * c.head_dim : EntryBytes(c);
  index_key_bytes_ = exact_kv ? sizeof(float) * c.index_dim : IndexKeyBytes(c);
  head_ld_ = (static_cast<size_t>(c.vocab_size) + 63) / 64 * 64;
  head_t_.assign(head_ld_ * c.d_model, 0);
  for (size_t v = 0; v < static_cast<size_t>(c.vocab_size); ++v)
    for (size_t k = 0; k < static_cast<size_t>(c.d_model); ++k)
      head_t_[(v / 64) * 64 * c.d_model + k * 64 + v % 64] = w_.embed[v * c.d_model + k];
  for (int i = 0; i < c.rope_dim / 2; ++i)
    inv_freq_.push_back(std::pow(c.rope_theta, -2.0 * i / c.rope_dim));
  for (size_t i = 0; i < c.layers.size(); ++i) {
    std::string p = fmt::format("layers.{}.", i);
    Layer l;
    l.kind = c.layers[i];
    l.ratio = c.RatioOf(l.kind);
    l.attn_norm = w_.Get(p + "attn_norm.weight");
    l.wq = w_.Get(p + "attn.wq");
    l.wkv = w_.Get(p + "attn.wkv");
    l.wo = w_.Get(p + "attn.wo");
    if (l.kind != LayerKind::kWindow) {
      l.wgate = w_.Get(p + "attn.compress.wgate");
      l.pos_bias = w_.Get(p + "attn.compress.pos_bias");
    }
    if (l.kind == LayerKind::kCsa) {
      l.iwq = w_.Get(p + "attn.indexer.wq");
      l.iwk = w_.Get(p + "attn.indexer.wk");
      l.iwhead = w_.Get(p + "attn.indexer.whead");
      l.iwgate = w_.Get(p + "attn.indexer.compress.wgate");
      l.ipos_bias = w_.Get(p + "attn.indexer.compress.pos_bias");
    }
    l.ffn_norm = w_.Get(p + "ffn_norm.weight");
    l.router = w_.Get(p + "moe.router");
    if (c.shared_ff > 0) {
      l.sw1 = w_.Get(p + "moe.shared.w1");
      l.sw3 = w_.Get(p + "moe.shared.w3");
      l.sw2 = w_.Get(p + "moe.shared.w2");
    }
    for (int e = 0; e < c.n_experts; ++e) {
      std::string q = fmt::format("{}moe.experts.{}.", p, e);
      l.ew1.push_back(w_.Get(q + "w1"));
      l.ew3.push_back(w_.Get(q + "w3"));
      l.ew2.push_back(w_.Get(q + "w2"));
    }
    layers_.push_back(std::move(l));
  }
}

SequenceState Model::NewSequence() const {
  const Config& c = w_.config;
  SequenceState s;
  s.layers.resize(c.layers.size());
  for (size_t i = 0; i < c.layers.size(); ++i) {
    auto& l = s.layers[i];
    if (c.layers[i] != LayerKind::kWindow) {
      l.pool_max.assign(c.head_dim, 0);
      l.pool_den.assign(c.head_dim, 0);
      l.pool_num.assign(c.head_dim, 0);
    }
    if (c.layers[i] == LayerKind::kCsa) {
      l.ipool_max.assign(c.index_dim, 0);
      l.ipool_den.assign(c.index_dim, 0);
      l.ipool_num.assign(c.index_dim, 0);
    }
  }
  return s;
}

void Model::ParallelMatMul(const float* x, size_t rows, size_t in, const float* w, size_t cols,
                           float* y) {
  if (rows * cols * in < (1u << 20) || pool_.size() == 1) return MatMul(x, rows, in, w, cols, y, cols);
  size_t groups = (cols + 15) / 16;
  pool_.ParallelFor(groups, [&](size_t b, size_t e) {
    size_t c0 = b * 16, c1 = std::min(cols, e * 16);
    MatMul(x, rows, in, w + c0 * in, c1 - c0, y + c0, cols);
  });
}

void Model::RmsNorm(const float* x, size_t rows, const float* weight, float* y) const {
  const size_t d = w_.config.d_model;
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float ss = Dot(xr, xr, d);
    float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + w_.config.norm_eps);
    for (size_t k = 0; k < d; ++k) y[r * d + k] = xr[k] * inv * weight[k];
  }
}

// RoPE on the last rope_dim dims of a head_dim vector, pairs (2i, 2i+1).
void Model::Rotate(float* v, size_t pos, bool inverse) const {
  float* r = v + w_.config.nope_dim();
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    double angle = static_cast<double>(pos) * inv_freq_[i];
    float c = static_cast<float>(std::cos(angle));
    float s = static_cast<float>(inverse ? -std::sin(angle) : std::sin(angle));
    float a = r[2 * i], b = r[2 * i + 1];
    r[2 * i] = a * c - b * s;
    r[2 * i + 1] = a * s + b * c;
  }
}

// Entry layout: [nope FP8 codes][rope BF16 x rope_dim][scale exponent].
// With exact_kv: head_dim float32 values as they are.
void Model::EncodeEntry(const float* v, uint8_t* out) const {
  if (exact_kv_) {
    std::memcpy(out, v, sizeof(float) * w_.config.head_dim);
    return;
  }
  const size_t nope = w_.config.nope_dim(), rope = w_.config.rope_dim;
  int8_t e = Fp8ScaleExponent(v, nope);
  QuantizeFp8(v, nope, e, out);
  for (size_t i = 0; i < rope; ++i) {
    uint16_t b = FloatToBf16(v[nope + i]);
    std::memcpy(out + nope + 2 * i, &b, 2);
  }
  out[nope + 2 * rope] = static_cast<uint8_t>(e);
}

void Model::DecodeEntry(const uint8_t* in, float* out) const {
  if (exact_kv_) {
    std::memcpy(out, in, sizeof(float) * w_.config.head_dim);
    return;
  }
  DecodeStoredEntry(w_.config, in, out);
}

void DecodeStoredEntry(const Config& c, const uint8_t* in, float* out) {
  const size_t nope = c.nope_dim(), rope = c.rope_dim;
  DequantizeFp8(in, nope, static_cast<int8_t>(in[nope + 2 * rope]), out);
  for (size_t i = 0; i < rope; ++i) {
    uint16_t b;
    std::memcpy(&b, in + nope + 2 * i, 2);
    out[nope + i] = Bf16ToFloat(b);
  }
}

namespace {

// One step of the per-channel online softmax pooling.
void PoolAdd(int pending, const float* value, const float* gate, const float* bias, size_t n,
             float* mx, float* den, float* num) {
  for (size_t c = 0; c < n; ++c) {
    float z = gate[c] + bias[c];
    if (pending == 0) {
      mx[c] = z;
      den[c] = 1.0f;
      num[c] = value[c];
    } else if (z > mx[c]) {
      float s = std::exp(mx[c] - z);
      den[c] = den[c] * s + 1.0f;
      num[c] = num[c] * s + value[c];
      mx[c] = z;
    } else {
      float s = std::exp(z - mx[c]);
      den[c] += s;
      num[c] += s * value[c];
    }
  }
}

}  // namespace

void Model::AppendToCaches(const Layer& layer, LayerCache& cache, size_t pos, const float* kv,
                           const float* gate, const float* ikey, const float* igate) const {
  const Config& c = w_.config;
  const size_t hd = c.head_dim;
  float entry[1024];
  std::vector<float> big;
  float* e = entry;
  if (hd > 1024) {
    big.resize(hd);
    e = big.data();
  }
  // Sliding window: the token itself, RoPE at its position.
  std::memcpy(e, kv, hd * sizeof(float));
  Rotate(e, pos, false);
  const size_t W = static_cast<size_t>(c.window);
  if (W > 0) {
    size_t slot = pos % W;
    if (cache.window.size() < (slot + 1) * entry_bytes_) cache.window.resize((slot + 1) * entry_bytes_);
    EncodeEntry(e, cache.window.data() + slot * entry_bytes_);
  }
  if (layer.kind == LayerKind::kWindow) return;
  const size_t m = static_cast<size_t>(layer.ratio);
  const size_t in_block = pos % m;
  PoolAdd(cache.pending, kv, gate, layer.pos_bias + in_block * hd, hd, cache.pool_max.data(),
          cache.pool_den.data(), cache.pool_num.data());
  if (layer.kind == LayerKind::kCsa)
    PoolAdd(cache.pending, ikey, igate, layer.ipos_bias + in_block * c.index_dim, c.index_dim,
            cache.ipool_max.data(), cache.ipool_den.data(), cache.ipool_num.data());
  ++cache.pending;
  if (static_cast<size_t>(cache.pending) < m) return;
  // Block complete: pooled entry, RoPE at the block's first position.
  for (size_t k = 0; k < hd; ++k) e[k] = cache.pool_num[k] / cache.pool_den[k];
  Rotate(e, pos + 1 - m, false);
  size_t at = cache.blocks.size();
  cache.blocks.resize(at + entry_bytes_);
  EncodeEntry(e, cache.blocks.data() + at);
  if (layer.kind == LayerKind::kCsa) {
    float ik[1024];
    std::vector<float> ibig;
    float* k = ik;
    if (c.index_dim > 1024) {
      ibig.resize(c.index_dim);
      k = ibig.data();
    }
    for (int i = 0; i < c.index_dim; ++i) k[i] = cache.ipool_num[i] / cache.ipool_den[i];
    size_t iat = cache.index_keys.size();
    cache.index_keys.resize(iat + index_key_bytes_);
    if (exact_kv_) {
      std::memcpy(cache.index_keys.data() + iat, k, index_key_bytes_);
      cache.pending = 0;
      return;
    }
    float scale = QuantizeInt4(k, c.index_dim, cache.index_keys.data() + iat);
    std::memcpy(cache.index_keys.data() + iat + c.index_dim / 2, &scale, 4);
  }
  cache.pending = 0;
}

// Lightning indexer: score_j = scale_j * sum_h w_h * relu(q_h . int4_j);
// the top index_topk blocks (ties: lower block first), returned ascending.
void Model::SelectBlocks(const Layer& layer, const LayerCache& cache, const float* iq,
                         const float* iw, std::vector<uint32_t>& selected) const {
  (void)layer;
  const Config& c = w_.config;
  const size_t nb = cache.blocks.size() / entry_bytes_;
  const size_t topk = static_cast<size_t>(c.index_topk);
  selected.clear();
  if (nb <= topk) {
    for (size_t j = 0; j < nb; ++j) selected.push_back(static_cast<uint32_t>(j));
    return;
  }
  thread_local std::vector<float> scores;
  scores.resize(nb);
  if (exact_kv_) {
    // Float32 keys: score_j = sum_h w_h * relu(q_h . k_j).
    const size_t dim = c.index_dim;
    for (size_t j = 0; j < nb; ++j) {
      const float* k = reinterpret_cast<const float*>(cache.index_keys.data() + j * index_key_bytes_);
      float s = 0;
      for (int h = 0; h < c.index_heads; ++h) s += iw[h] * std::max(0.0f, Dot(iq + h * dim, k, dim));
      scores[j] = s;
    }
  } else {
    IndexerScores(cache.index_keys.data(), index_key_bytes_, nb, iq, iw, c.index_heads, c.index_dim, scores.data());
  }
  thread_local std::vector<uint32_t> idx;
  idx.resize(nb);
  for (size_t j = 0; j < nb; ++j) idx[j] = static_cast<uint32_t>(j);
  std::nth_element(idx.begin(), idx.begin() + topk, idx.end(), [&](uint32_t a, uint32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  selected.assign(idx.begin(), idx.begin() + topk);
  std::sort(selected.begin(), selected.end());
}

// One query row: joint softmax over the selected compressed entries and the
// window entries; value = the same stored entry (key = value); the RoPE part of
// each head's output is rotated back by the query position.
void Model::AttendRow(const Layer& layer, const LayerCache& cache, size_t pos, const float* q,
                      const float* iq, const float* iw, float* out) const {
  const Config& c = w_.config;
  const size_t hd = c.head_dim, H = c.n_heads;
  thread_local std::vector<float> keys, scores, probs;
  thread_local std::vector<uint32_t> selected;
  selected.clear();
  if (layer.kind == LayerKind::kCsa) {
    SelectBlocks(layer, cache, iq, iw, selected);
  } else if (layer.kind == LayerKind::kHca) {
    size_t nb = cache.blocks.size() / entry_bytes_;
    for (size_t j = 0; j < nb; ++j) selected.push_back(static_cast<uint32_t>(j));
  }
  const size_t W = static_cast<size_t>(c.window);
  const size_t first = W == 0 ? pos + 1 : (pos + 1 > W ? pos + 1 - W : 0);
  const size_t n = selected.size() + (pos + 1 - first);
  keys.resize(n * hd);
  size_t row = 0;
  for (uint32_t j : selected) DecodeEntry(cache.blocks.data() + size_t{j} * entry_bytes_, &keys[hd * row++]);
  for (size_t p = first; p <= pos; ++p)
    DecodeEntry(cache.window.data() + (p % W) * entry_bytes_, &keys[hd * row++]);
  scores.resize(n);
  probs.resize(n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (size_t h = 0; h < H; ++h) {
    const float* qh = q + h * hd;
    float mx = -INFINITY;
    for (size_t j = 0; j < n; ++j) {
      scores[j] = Dot(qh, &keys[j * hd], hd) * scale;
      mx = std::max(mx, scores[j]);
    }
    double sum = ExpShifted(scores.data(), n, mx, probs.data());
    float inv = static_cast<float>(1.0 / sum);
    float* o = out + h * hd;
    std::fill(o, o + hd, 0.0f);
    for (size_t j = 0; j < n; ++j) Axpy(probs[j] * inv, &keys[j * hd], o, hd);
    Rotate(o, pos, true);
  }
}

void Model::FeedForward(const Layer& layer, size_t rows, float* x) {
  const Config& c = w_.config;
  const size_t d = c.d_model, E = c.n_experts, K = c.experts_per_token;
  std::vector<float> xn(rows * d), router(rows * E), out(rows * d, 0.0f);
  RmsNorm(x, rows, layer.ffn_norm, xn.data());
  MatMul(xn.data(), rows, d, layer.router, E, router.data(), E);
  // Routing: softmax over experts, top-k (ties: lower index), weights renormalised.
  std::vector<uint32_t> choice(rows * K);
  std::vector<float> weight(rows * K);
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> per_expert(E);  // (row, slot)
  std::vector<uint32_t> order(E);
  for (size_t r = 0; r < rows; ++r) {
    float* lg = &router[r * E];
    for (size_t e = 0; e < E; ++e) order[e] = static_cast<uint32_t>(e);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](uint32_t a, uint32_t b) {
      return lg[a] > lg[b] || (lg[a] == lg[b] && a < b);
    });
    float mx = lg[order[0]], total = 0;
    for (size_t k = 0; k < K; ++k) total += weight[r * K + k] = std::exp(lg[order[k]] - mx);
    for (size_t k = 0; k < K; ++k) {
      weight[r * K + k] /= total;
      choice[r * K + k] = order[k];
      per_expert[order[k]].push_back({static_cast<uint32_t>(r), static_cast<uint32_t>(k)});
    }
  }
  std::vector<float> slot_out(rows * K * d);
  auto swiglu = [&](const float* xin, size_t n, const float* w1, const float* w3, const float* w2,
                    size_t ff, float* y) {
    std::vector<float> h1(n * ff), h3(n * ff);
    MatMul(xin, n, d, w1, ff, h1.data(), ff);
    MatMul(xin, n, d, w3, ff, h3.data(), ff);
    for (size_t i = 0; i < n * ff; ++i) h1[i] = h1[i] / (1.0f + std::exp(-h1[i])) * h3[i];
    MatMul(h1.data(), n, ff, w2, d, y, d);
  };
  auto run_expert = [&](size_t e) {
    const auto& assigned = per_expert[e];
    if (assigned.empty()) return;
    std::vector<float> xin(assigned.size() * d), y(assigned.size() * d);
    for (size_t i = 0; i < assigned.size(); ++i)
      std::memcpy(&xin[i * d], &xn[assigned[i].first * d], d * sizeof(float));
    swiglu(xin.data(), assigned.size(), layer.ew1[e], layer.ew3[e], layer.ew2[e], c.expert_ff, y.data());
    for (size_t i = 0; i < assigned.size(); ++i)
      std::memcpy(&slot_out[(assigned[i].first * K + assigned[i].second) * d], &y[i * d], d * sizeof(float));
  };
  // Experts in parallel, plus the shared expert as one more task.
  pool_.ParallelFor(E + 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      if (i < E) run_expert(i);
      else if (c.shared_ff > 0) swiglu(xn.data(), rows, layer.sw1, layer.sw3, layer.sw2, c.shared_ff, out.data());
    }
  });
  for (size_t r = 0; r < rows; ++r) {
    float* xr = x + r * d;
    for (size_t k = 0; k < d; ++k) xr[k] += out[r * d + k];
    for (size_t s = 0; s < K; ++s) Axpy(weight[r * K + s], &slot_out[(r * K + s) * d], xr, d);
  }
}

void Model::Forward(std::span<const Chunk> chunks, std::vector<float>& logits) {
  const Config& c = w_.config;
  const size_t d = c.d_model, hd = c.head_dim, H = c.n_heads;
  const size_t qdim = H * hd, id = c.index_dim, ih = c.index_heads;
  std::vector<size_t> start(chunks.size() + 1, 0);
  for (size_t i = 0; i < chunks.size(); ++i) start[i + 1] = start[i] + chunks[i].tokens.size();
  const size_t R = start.back();
  std::vector<float> x(R * d), xn(R * d), q(R * qdim), kv(R * hd), gate(R * hd), att(R * qdim),
      proj(R * d), iq, ik, ig, iw;
  for (size_t i = 0; i < chunks.size(); ++i)
    for (size_t t = 0; t < chunks[i].tokens.size(); ++t) {
      const uint16_t* e = w_.embed.data() + static_cast<size_t>(chunks[i].tokens[t]) * d;
      float* xr = &x[(start[i] + t) * d];
      for (size_t k = 0; k < d; ++k) xr[k] = Bf16ToFloat(e[k]);
    }
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& layer = layers_[li];
    RmsNorm(x.data(), R, layer.attn_norm, xn.data());
    ParallelMatMul(xn.data(), R, d, layer.wq, qdim, q.data());
    ParallelMatMul(xn.data(), R, d, layer.wkv, hd, kv.data());
    if (layer.kind != LayerKind::kWindow) ParallelMatMul(xn.data(), R, d, layer.wgate, hd, gate.data());
    if (layer.kind == LayerKind::kCsa) {
      iq.resize(R * ih * id);
      ik.resize(R * id);
      ig.resize(R * id);
      iw.resize(R * ih);
      ParallelMatMul(xn.data(), R, d, layer.iwq, ih * id, iq.data());
      ParallelMatMul(xn.data(), R, d, layer.iwk, id, ik.data());
      ParallelMatMul(xn.data(), R, d, layer.iwgate, id, ig.data());
      ParallelMatMul(xn.data(), R, d, layer.iwhead, ih, iw.data());
    }
    // Attention: sequences in parallel, each sequence's rows in order.
    pool_.ParallelFor(chunks.size(), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        LayerCache& cache = chunks[i].seq->layers[li];
        for (size_t t = 0; t < chunks[i].tokens.size(); ++t) {
          size_t r = start[i] + t, pos = chunks[i].seq->length + t;
          bool csa = layer.kind == LayerKind::kCsa;
          AppendToCaches(layer, cache, pos, &kv[r * hd], &gate[r * hd], csa ? &ik[r * id] : nullptr,
                         csa ? &ig[r * id] : nullptr);
          float* qr = &q[r * qdim];
          for (size_t h = 0; h < H; ++h) Rotate(qr + h * hd, pos, false);
          AttendRow(layer, cache, pos, qr, csa ? &iq[r * ih * id] : nullptr,
                    csa ? &iw[r * ih] : nullptr, &att[r * qdim]);
        }
      }
    });
    ParallelMatMul(att.data(), R, qdim, layer.wo, d, proj.data());
    for (size_t i = 0; i < R * d; ++i) x[i] += proj[i];
    FeedForward(layer, R, x.data());
  }
  for (const auto& ch : chunks) ch.seq->length += ch.tokens.size();
  // Output head for the rows that want logits.
  std::vector<size_t> rows;
  for (size_t i = 0; i < chunks.size(); ++i)
    if (chunks[i].want_logits && !chunks[i].tokens.empty()) rows.push_back(start[i + 1] - 1);
  if (rows.empty()) {
    logits.clear();
    return;
  }
  std::vector<float> last(rows.size() * d);
  const float* norm = w_.Get("norm.weight");
  for (size_t i = 0; i < rows.size(); ++i) RmsNorm(&x[rows[i] * d], 1, norm, &last[i * d]);
  const size_t V = c.vocab_size;
  logits.resize(rows.size() * V);
  size_t groups = head_ld_ / 64;
  pool_.ParallelFor(groups, [&](size_t b, size_t e) {
    MatMulTransposedBf16(last.data(), rows.size(), d, head_t_.data(), head_ld_, b * 64, e * 64, V,
                         logits.data(), V);
  });
}

void Model::FillSynthetic(SequenceState& seq, size_t n, uint64_t seed) {
  const Config& c = w_.config;
  const size_t d = c.d_model, hd = c.head_dim, id = c.index_dim;
  const size_t step = 4096;
  std::vector<float> h, xn, kv, gate, ik, ig;
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& layer = layers_[li];
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + li + 1;
    for (size_t done = 0; done < n; done += step) {
      size_t rows = std::min(step, n - done);
      h.resize(rows * d);
      for (float& v : h) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        v = static_cast<float>(static_cast<int64_t>(state >> 40) - (1 << 23)) / (1 << 23);
      }
      xn.resize(rows * d);
      RmsNorm(h.data(), rows, layer.attn_norm, xn.data());
      kv.resize(rows * hd);
      gate.resize(rows * hd);
      ParallelMatMul(xn.data(), rows, d, layer.wkv, hd, kv.data());
      if (layer.kind != LayerKind::kWindow) ParallelMatMul(xn.data(), rows, d, layer.wgate, hd, gate.data());
      bool csa = layer.kind == LayerKind::kCsa;
      if (csa) {
        ik.resize(rows * id);
        ig.resize(rows * id);
        ParallelMatMul(xn.data(), rows, d, layer.iwk, id, ik.data());
        ParallelMatMul(xn.data(), rows, d, layer.iwgate, id, ig.data());
      }
      for (size_t r = 0; r < rows; ++r)
        AppendToCaches(layer, seq.layers[li], seq.length + done + r, &kv[r * hd], &gate[r * hd],
                       csa ? &ik[r * id] : nullptr, csa ? &ig[r * id] : nullptr);
    }
  }
  seq.length += n;
}

}  // namespace paddock::policy::engine
