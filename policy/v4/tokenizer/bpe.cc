// Byte-level BPE on raw bytes: every byte starts as its own symbol, then the
// adjacent pair with the lowest merge rank is merged (leftmost on ties) until no
// pair has a rank, exactly as Hugging Face's BPE model. Short words use a linear
// scan over a pair-rank array; long ones a priority queue over a linked list.
// Results are cached per thread (word bytes → ids).
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>

#include "policy/v4/tokenizer/internal.h"

namespace paddock::v4::tok {
namespace {

constexpr uint32_t kNoRank = UINT32_MAX;
constexpr size_t kSmallWord = 48;          // linear scan below, heap above
constexpr size_t kMaxCachedWord = 256;     // longer words are not cached
constexpr size_t kMaxCacheEntries = 1 << 20;

std::atomic<uint64_t> g_next_instance{1};

uint64_t HashBytes(std::string_view s) {
  // 8 bytes at a time, multiply-xorshift mixing; words are short.
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t v;
    std::memcpy(&v, s.data() + i, 8);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
  }
  if (i < s.size()) {
    uint64_t v = 0;
    for (size_t k = 0; i + k < s.size(); ++k) v |= uint64_t(static_cast<unsigned char>(s[i + k])) << (8 * k);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
  }
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 32);
}

// The word cache of one thread for one Bpe instance: an open-addressing table
// whose keys and ids live in two arenas (no allocation per word).
struct WordCache {
  struct Entry {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, ids_len;  // key_len 0: empty slot (cached words have >= 2 bytes)
  };
  uint64_t owner = 0;
  std::vector<Entry> table;
  size_t used = 0;
  std::string keys;
  std::vector<uint32_t> ids;

  void Reset(uint64_t who) {
    owner = who;
    table.assign(who != 0 ? (1 << 14) : 0, Entry{});
    used = 0;
    keys.clear();
    ids.clear();
  }
  size_t size() const { return used; }
  static bool Same(const char* a, std::string_view b) {
    if (b.size() > 16) return std::memcmp(a, b.data(), b.size()) == 0;
    for (size_t i = 0; i < b.size(); ++i)
      if (a[i] != b[i]) return false;
    return true;
  }
  // The slot of `word`: the entry holding it, or the empty slot where it goes.
  Entry& Slot(std::string_view word, uint64_t h) {
    size_t mask = table.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Entry& e = table[i];
      if (e.key_len == 0) return e;
      if (e.hash == h && e.key_len == word.size() && Same(keys.data() + e.key_off, word)) return e;
    }
  }
  void Grow() {
    std::vector<Entry> old(table.size() * 2, Entry{});
    old.swap(table);
    size_t mask = table.size() - 1;
    for (const Entry& e : old) {
      if (e.key_len == 0) continue;
      size_t i = e.hash & mask;
      while (table[i].key_len != 0) i = (i + 1) & mask;
      table[i] = e;
    }
  }
};

// A few caches per thread, one per Bpe instance, so that two tokenizers used in
// turn on one thread do not keep emptying each other's cache.
constexpr size_t kCachesPerThread = 4;

WordCache& Cache(uint64_t instance) {
  thread_local WordCache caches[kCachesPerThread];
  thread_local uint64_t tick = 0, last_use[kCachesPerThread] = {};
  size_t pick = 0;
  for (size_t i = 0; i < kCachesPerThread; ++i) {
    if (caches[i].owner == instance) {
      pick = i;
      goto found;
    }
    if (last_use[i] < last_use[pick]) pick = i;
  }
  caches[pick].Reset(instance);  // least recently used slot
found:
  last_use[pick] = ++tick;
  WordCache& c = caches[pick];
  if (c.size() >= kMaxCacheEntries) c.Reset(instance);
  return c;
}

}  // namespace

Result<std::unique_ptr<Bpe>> Bpe::Create(
    const std::vector<std::pair<std::string, uint32_t>>& byte_vocab,
    const std::vector<std::pair<std::string, std::string>>& byte_merges) {
  std::unique_ptr<Bpe> bpe(new Bpe());
  bpe->instance_ = g_next_instance.fetch_add(1);
  std::unordered_map<std::string_view, uint32_t> vocab;
  vocab.reserve(byte_vocab.size());
  for (const auto& [s, id] : byte_vocab) vocab.emplace(s, id);
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(std::string_view(std::string(1, char(b))));
    if (it == vocab.end())
      return Error(Code::kInvalidArgument,
                   "model.vocab has no token for byte 0x{:02X}: not a byte-level BPE vocabulary", b);
    bpe->byte_id_[b] = it->second;
  }
  size_t cap = 16;
  while (cap < byte_merges.size() * 2 + 16) cap <<= 1;  // load factor <= 1/2
  bpe->table_.assign(cap, Slot{kEmpty, {0, 0}});
  bpe->mask_ = cap - 1;
  bpe->filter_.assign((size_t(1) << kFilterBits) / 64, 0);
  bpe->shift_ = 64 - std::countr_zero(cap);
  std::string joined;
  for (size_t i = 0; i < byte_merges.size(); ++i) {
    const auto& [a, b] = byte_merges[i];
    auto ia = vocab.find(a), ib = vocab.find(b);
    joined = a + b;
    auto ij = vocab.find(joined);
    if (ia == vocab.end() || ib == vocab.end() || ij == vocab.end())
      return Error(Code::kInvalidArgument,
                   "model.merges[{}]: {} of the merge is not in model.vocab", i,
                   ia == vocab.end() ? "the left part" : ib == vocab.end() ? "the right part" : "the result");
    // Like Hugging Face (a map built from the list), a repeated pair keeps its last rank.
    bpe->Insert((uint64_t(ia->second) << 32) | ib->second, {uint32_t(i), ij->second});
  }
  bpe->byte_pair_.assign(65536, MergeInfo{kNoRank, 0});
  for (int a = 0; a < 256; ++a)
    for (int b = 0; b < 256; ++b)
      if (const MergeInfo* mi = bpe->Find(bpe->byte_id_[a], bpe->byte_id_[b])) bpe->byte_pair_[a << 8 | b] = *mi;
  return bpe;
}

void Bpe::Insert(uint64_t key, MergeInfo info) {
  uint64_t f = (key * 0xD6E8FEB86659FD93ull) >> (64 - kFilterBits);
  filter_[f >> 6] |= uint64_t(1) << (f & 63);
  size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);
  while (table_[i].key != kEmpty && table_[i].key != key) i = (i + 1) & mask_;
  table_[i] = {key, info};
}

void Bpe::Merge(std::string_view word, std::vector<uint32_t>* out) const {
  const size_t n = word.size();
  auto lookup = [this](uint32_t a, uint32_t b) { return Find(a, b); };
  if (n <= kSmallWord) {
    uint32_t ids[kSmallWord];
    uint32_t rank[kSmallWord];  // rank[i]: rank of the pair (ids[i], ids[i+1])
    uint32_t merged[kSmallWord];
    size_t m = n;
    for (size_t i = 0; i < n; ++i) ids[i] = byte_id_[static_cast<unsigned char>(word[i])];
    auto set_rank = [&](size_t i) {
      const MergeInfo* mi = lookup(ids[i], ids[i + 1]);
      rank[i] = mi ? mi->rank : kNoRank;
      merged[i] = mi ? mi->id : 0;
    };
    for (size_t i = 0; i + 1 < m; ++i) {
      const MergeInfo& mi = byte_pair_[static_cast<unsigned char>(word[i]) << 8 |
                                       static_cast<unsigned char>(word[i + 1])];
      rank[i] = mi.rank;
      merged[i] = mi.id;
    }
    while (m > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < m; ++i)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == kNoRank) break;
      ids[best] = merged[best];
      --m;  // drop symbol best+1
      for (size_t i = best + 1; i < m; ++i) ids[i] = ids[i + 1];
      for (size_t i = best + 1; i + 1 < m; ++i) {
        rank[i] = rank[i + 1];
        merged[i] = merged[i + 1];
      }
      if (best + 1 < m) set_rank(best);
      if (best > 0) set_rank(best - 1);
    }
    out->insert(out->end(), ids, ids + m);
    return;
  }

  // Long word: linked list of symbols plus a min-heap of (rank, position).
  struct Sym {
    uint32_t id;
    int32_t prev, next;
  };
  thread_local std::vector<Sym> sym;
  sym.resize(n);
  for (size_t i = 0; i < n; ++i)
    sym[i] = {byte_id_[static_cast<unsigned char>(word[i])], int32_t(i) - 1,
              i + 1 < n ? int32_t(i + 1) : -1};
  struct Cand {
    uint32_t rank;
    int32_t pos;
    uint32_t left, right, result;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  // A binary min-heap on a reused per-thread buffer (no allocation per word).
  thread_local std::vector<Cand> heap_buf;
  heap_buf.clear();
  struct Heap {
    std::vector<Cand>& v;
    bool empty() const { return v.empty(); }
    const Cand& top() const { return v.front(); }
    void push(const Cand& c) {
      v.push_back(c);
      std::push_heap(v.begin(), v.end(), std::greater<>());
    }
    void pop() {
      std::pop_heap(v.begin(), v.end(), std::greater<>());
      v.pop_back();
    }
  } heap{heap_buf};
  auto push = [&](int32_t i) {
    if (i < 0 || sym[i].next < 0) return;
    const MergeInfo* mi = lookup(sym[i].id, sym[sym[i].next].id);
    if (mi) heap.push({mi->rank, i, sym[i].id, sym[sym[i].next].id, mi->id});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(int32_t(i));
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Sym& l = sym[c.pos];
    if (l.id != c.left || l.next < 0 || sym[l.next].id != c.right) continue;  // stale
    Sym& r = sym[l.next];
    l.id = c.result;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.pos;
    r.id = UINT32_MAX;  // dead
    push(l.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out->push_back(sym[i].id);
}

void Bpe::EncodeWord(std::string_view word, std::vector<uint32_t>* out) const {
  if (word.size() == 1) {
    out->push_back(byte_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (word.size() > kMaxCachedWord) return Merge(word, out);
  WordCache& cache = Cache(instance_);
  uint64_t h = HashBytes(word);
  WordCache::Entry* e = &cache.Slot(word, h);
  if (e->key_len != 0) {
    const uint32_t* p = cache.ids.data() + e->ids_off;
    out->insert(out->end(), p, p + e->ids_len);
    return;
  }
  size_t before = out->size();
  Merge(word, out);
  if (2 * (cache.used + 1) > cache.table.size()) {
    cache.Grow();
    e = &cache.Slot(word, h);
  }
  *e = {h, uint32_t(cache.keys.size()), uint32_t(cache.ids.size()), uint16_t(word.size()),
        uint16_t(out->size() - before)};
  cache.keys.append(word);
  cache.ids.insert(cache.ids.end(), out->begin() + before, out->end());
  ++cache.used;
}

}  // namespace paddock::v4::tok
