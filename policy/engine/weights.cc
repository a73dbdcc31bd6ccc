#include "policy/engine/weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "policy/engine/numerics.h"

namespace paddock::policy::engine {

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> TensorSpecs(const Config& c) {
  std::vector<TensorSpec> specs;
  const int64_t d = c.d_model;
  specs.push_back({"embed.weight", {c.vocab_size, d}});
  for (size_t i = 0; i < c.layers.size(); ++i) {
    std::string p = fmt::format("layers.{}.", i);
    LayerKind kind = c.layers[i];
    int ratio = c.RatioOf(kind);
    specs.push_back({p + "attn_norm.weight", {d}});
    specs.push_back({p + "attn.wq", {int64_t{c.n_heads} * c.head_dim, d}});
    specs.push_back({p + "attn.wkv", {c.head_dim, d}});
    if (kind != LayerKind::kWindow) {
      specs.push_back({p + "attn.compress.wgate", {c.head_dim, d}});
      specs.push_back({p + "attn.compress.pos_bias", {ratio, c.head_dim}});
    }
    if (kind == LayerKind::kCsa) {
      specs.push_back({p + "attn.indexer.wq", {int64_t{c.index_heads} * c.index_dim, d}});
      specs.push_back({p + "attn.indexer.wk", {c.index_dim, d}});
      specs.push_back({p + "attn.indexer.whead", {c.index_heads, d}});
      specs.push_back({p + "attn.indexer.compress.wgate", {c.index_dim, d}});
      specs.push_back({p + "attn.indexer.compress.pos_bias", {ratio, c.index_dim}});
    }
    specs.push_back({p + "attn.wo", {d, int64_t{c.n_heads} * c.head_dim}});
    specs.push_back({p + "ffn_norm.weight", {d}});
    specs.push_back({p + "moe.router", {c.n_experts, d}});
    if (c.shared_ff > 0) {
      specs.push_back({p + "moe.shared.w1", {c.shared_ff, d}});
      specs.push_back({p + "moe.shared.w3", {c.shared_ff, d}});
      specs.push_back({p + "moe.shared.w2", {d, c.shared_ff}});
    }
    for (int e = 0; e < c.n_experts; ++e) {
      std::string q = fmt::format("{}moe.experts.{}.", p, e);
      specs.push_back({q + "w1", {c.expert_ff, d}});
      specs.push_back({q + "w3", {c.expert_ff, d}});
      specs.push_back({q + "w2", {d, c.expert_ff}});
    }
  }
  specs.push_back({"norm.weight", {d}});
  return specs;
}

const float* Weights::Get(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : it->second.data();
}

namespace {

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t HashName(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Uniform in [-a, a).
void Fill(std::vector<float>& v, uint64_t state, float a) {
  for (float& x : v) x = a * (static_cast<float>(SplitMix(state) >> 40) * (2.0f / 16777216.0f) - 1.0f);
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string ShapeStr(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// 64-bit FNV-1a over 8-byte words (then the tail): a fingerprint of the file
// for its default version, not a cryptographic hash. Never 0.
uint64_t Digest(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h ? h : 1;
}

struct Mapping {
  void* addr = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (addr != MAP_FAILED) munmap(addr, size);
  }
};

}  // namespace

Result<Weights> SeededWeights(const Config& config, uint64_t seed) {
  if (auto st = config.Validate(); !st.ok()) return st;
  if (config.report_only)
    return Error(Code::kInvalidArgument,
                 "config '{}' is a shape for --report-kv only; too large to instantiate here",
                 config.name);
  Weights w;
  w.config = config;
  w.source = fmt::format("seed {}", seed);
  for (const TensorSpec& spec : TensorSpecs(config)) {
    std::vector<float> v(static_cast<size_t>(spec.numel()));
    uint64_t state = HashName(spec.name, seed);
    if (EndsWith(spec.name, "norm.weight")) {
      std::fill(v.begin(), v.end(), 1.0f);
    } else if (EndsWith(spec.name, "pos_bias")) {
      Fill(v, state, 0.5f);
    } else if (spec.name == "embed.weight") {
      Fill(v, state, 0.5f);
    } else {
      Fill(v, state, std::sqrt(3.0f / static_cast<float>(spec.shape[1])));
    }
    if (spec.name == "embed.weight") {
      w.embed.resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) w.embed[i] = FloatToBf16(v[i]);
    } else {
      w.tensors.emplace(spec.name, std::move(v));
    }
  }
  return w;
}

Result<Weights> LoadSafetensors(const std::string& path, const Config& config) {
  if (auto st = config.Validate(); !st.ok()) return st;
  if (config.report_only)
    return Error(Code::kInvalidArgument, "config '{}' is a shape for --report-kv only", config.name);
  auto fail = [&](Code code, std::string why) {
    return Status(code, fmt::format("weights file {}: {}", path, why));
  };
  // O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on files.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoError(fmt::format("opening weights file {}", path));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    Status s = ErrnoError(fmt::format("stat {}", path));
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(Code::kInvalidArgument, "not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > MaxSafetensorsBytes(config)) {
    ::close(fd);
    return fail(Code::kInvalidArgument,
                fmt::format("{} bytes is more than any weights file for config '{}' can hold (at most {})",
                            st.st_size, config.name, MaxSafetensorsBytes(config)));
  }
  Mapping map;
  map.size = static_cast<size_t>(st.st_size);
  if (map.size < 8) {
    ::close(fd);
    return fail(Code::kDataLoss, fmt::format("truncated: {} bytes, shorter than the 8-byte header length", map.size));
  }
  map.addr = mmap(nullptr, map.size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map.addr == MAP_FAILED) return ErrnoError(fmt::format("mmap {}", path));
  const auto* base = static_cast<const uint8_t*>(map.addr);
  uint64_t header_len;
  std::memcpy(&header_len, base, 8);  // little-endian, as is this host
  if (header_len > 100u << 20)
    return fail(Code::kInvalidArgument, fmt::format("header length {} is implausible (> 100 MiB): not a safetensors file?", header_len));
  if (header_len > map.size - 8)
    return fail(Code::kDataLoss, fmt::format("truncated: the header says {} bytes but only {} follow", header_len, map.size - 8));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8),
                                   reinterpret_cast<const char*>(base + 8 + header_len));
  } catch (const std::exception& e) {
    return fail(Code::kInvalidArgument, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) return fail(Code::kInvalidArgument, "header is not a JSON object");
  const uint8_t* data = base + 8 + header_len;
  const size_t data_size = map.size - 8 - header_len;

  if (auto meta = header.find("__metadata__"); meta != header.end() && meta->is_object()) {
    if (auto cfg = meta->find("paddock.config"); cfg != meta->end() && cfg->is_string()) {
      try {
        auto saved = nlohmann::json::parse(cfg->get<std::string>());
        if (saved.contains("name") && saved["name"].is_string() && saved["name"] != config.name)
          return fail(Code::kInvalidArgument,
                      fmt::format("saved for config '{}' but the engine is configured '{}' (use --config {})",
                                  saved["name"].get<std::string>(), config.name,
                                  saved["name"].get<std::string>()));
      } catch (const std::exception&) {
        // Metadata is advisory; the shape checks below are authoritative.
      }
    }
  }

  std::map<std::string, TensorSpec> expected;
  for (auto& spec : TensorSpecs(config)) expected.emplace(spec.name, spec);
  Weights w;
  w.config = config;
  w.source = path;
  std::set<std::string> seen;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    auto spec_it = expected.find(name);
    if (spec_it == expected.end())
      return fail(Code::kInvalidArgument, fmt::format("unexpected tensor '{}': not part of config '{}'", name, config.name));
    const TensorSpec& spec = spec_it->second;
    const auto& entry = it.value();
    if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
        !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("data_offsets") ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
      return fail(Code::kInvalidArgument, fmt::format("tensor '{}': header entry needs dtype, shape and data_offsets [begin, end]", name));
    std::string dtype = entry["dtype"].get<std::string>();
    size_t elem;
    if (dtype == "F32") elem = 4;
    else if (dtype == "BF16") elem = 2;
    else return fail(Code::kInvalidArgument, fmt::format("tensor '{}': dtype {} is not supported (F32 or BF16)", name, dtype));
    std::vector<int64_t> shape;
    for (const auto& dim : entry["shape"]) {
      if (!dim.is_number_integer() || dim.get<int64_t>() < 0)
        return fail(Code::kInvalidArgument, fmt::format("tensor '{}': shape has a non-integer or negative dimension", name));
      shape.push_back(dim.get<int64_t>());
    }
    if (shape != spec.shape)
      return fail(Code::kInvalidArgument, fmt::format("tensor '{}': shape {} but config '{}' expects {}", name,
                                                      ShapeStr(shape), config.name, ShapeStr(spec.shape)));
    const auto& offs = entry["data_offsets"];
    if (!offs[0].is_number_unsigned() || !offs[1].is_number_unsigned())
      return fail(Code::kInvalidArgument, fmt::format("tensor '{}': data_offsets must be non-negative integers", name));
    uint64_t b = offs[0].get<uint64_t>(), e = offs[1].get<uint64_t>();
    uint64_t want = static_cast<uint64_t>(spec.numel()) * elem;
    if (e < b || e - b != want)
      return fail(Code::kInvalidArgument, fmt::format("tensor '{}': data_offsets [{}, {}] hold {} bytes, {} {} needs {}",
                                                      name, b, e, e < b ? 0 : e - b, dtype, ShapeStr(shape), want));
    if (e > data_size)
      return fail(Code::kDataLoss, fmt::format("truncated: tensor '{}' ends at byte {} of the data section, which has {}",
                                               name, e, data_size));
    std::vector<float> v(static_cast<size_t>(spec.numel()));
    const uint8_t* p = data + b;
    if (elem == 4) {
      std::memcpy(v.data(), p, want);
    } else {
      for (size_t i = 0; i < v.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        v[i] = Bf16ToFloat(h);
      }
    }
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        return fail(Code::kInvalidArgument, fmt::format("tensor '{}': non-finite value {} at flat index {}", name, v[i], i));
    if (name == "embed.weight") {
      w.embed.resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) w.embed[i] = FloatToBf16(v[i]);
    } else {
      w.tensors.emplace(name, std::move(v));
    }
    seen.insert(name);
  }
  for (const auto& [name, spec] : expected)
    if (!seen.count(name))
      return fail(Code::kInvalidArgument, fmt::format("missing tensor '{}' {} needed by config '{}'", name,
                                                      ShapeStr(spec.shape), config.name));
  w.digest = Digest(base, map.size);
  return w;
}

uint64_t MaxSafetensorsBytes(const Config& config) {
  uint64_t bytes = 8 + (uint64_t{100} << 20) + (uint64_t{1} << 20);
  for (const auto& spec : TensorSpecs(config)) bytes += static_cast<uint64_t>(spec.numel()) * 4;
  return bytes;
}

std::string DefaultWeightVersion(const Weights& weights) {
  if (weights.digest == 0) {
    std::string v = weights.source;
    std::replace(v.begin(), v.end(), ' ', '-');
    return v;
  }
  std::string name = weights.source.substr(weights.source.find_last_of('/') + 1);
  return fmt::format("{}@{:08x}", name, static_cast<uint32_t>(weights.digest >> 32));
}

Status WriteSafetensorsFile(const std::string& path, const std::vector<RawTensor>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8) text.push_back(' ');  // data section 8-byte aligned
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(fmt::format("creating {}", tmp));
  auto write_all = [&](const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    while (n) {
      ssize_t k = ::write(fd, c, n);
      if (k < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      c += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  };
  uint64_t len = text.size();
  bool ok = write_all(&len, 8) && write_all(text.data(), text.size());
  for (const auto& t : tensors) ok = ok && write_all(t.bytes.data(), t.bytes.size());
  if (!ok) {
    Status s = ErrnoError(fmt::format("writing {}", tmp));
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    Status s = ErrnoError(fmt::format("syncing {}", tmp));
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = ErrnoError(fmt::format("renaming {} to {}", tmp, path));
    ::unlink(tmp.c_str());
    return s;
  }
  return Status::Ok();
}

Status SaveSafetensors(const Weights& weights, const std::string& path) {
  std::vector<RawTensor> raw;
  for (const TensorSpec& spec : TensorSpecs(weights.config)) {
    RawTensor t{spec.name, "F32", spec.shape, {}};
    if (spec.name == "embed.weight") {
      t.dtype = "BF16";
      t.bytes.resize(weights.embed.size() * 2);
      std::memcpy(t.bytes.data(), weights.embed.data(), t.bytes.size());
    } else {
      const float* p = weights.Get(spec.name);
      if (!p) return Error(Code::kInternal, "weights lack tensor '{}'", spec.name);
      t.bytes.resize(static_cast<size_t>(spec.numel()) * 4);
      std::memcpy(t.bytes.data(), p, t.bytes.size());
    }
    raw.push_back(std::move(t));
  }
  return WriteSafetensorsFile(path, raw, {{"paddock.config", weights.config.ToJson().dump()}, {"format", "pt"}});
}

}  // namespace paddock::policy::engine
