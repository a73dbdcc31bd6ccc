#include "storage/layer_decompress.h"

#include <fcntl.h>
#include <lz4frame.h>
#include <unistd.h>

#include <algorithm>
#include <zlib.h>
#include <zstd.h>

namespace paddock::storage {

Result<std::unique_ptr<DecompressPipe>> DecompressPipe::Start(const std::string& blob_path, Compression compression,
                                                              uint64_t max_out_bytes) {
  UniqueFd fd(::open(blob_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(fmt::format("opening layer blob {}", blob_path));
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  std::unique_ptr<DecompressPipe> p(new DecompressPipe(std::move(fd), compression, max_out_bytes));
  p->thread_ = std::thread([raw = p.get()] { raw->Run(); });
  p->hasher_ = std::thread([raw = p.get()] { raw->Hash(); });
  return p;
}

DecompressPipe::DecompressPipe(UniqueFd fd, Compression c, uint64_t max_out)
    : fd_(std::move(fd)), compression_(c), max_out_(max_out), buffers_(kChunks) {
  for (auto& b : buffers_) {
    b.resize(kChunk);
    free_.push_back(&b);
  }
}

DecompressPipe::~DecompressPipe() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (hasher_.joinable()) hasher_.join();
}

std::string* DecompressPipe::TakeFree() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return stop_ || !free_.empty(); });
  if (stop_) return nullptr;
  std::string* b = free_.front();
  free_.pop_front();
  return b;
}

void DecompressPipe::PushFull(std::string* buf, size_t n) {
  {
    std::lock_guard<std::mutex> l(mu_);
    ring_.push_back({buf, n, 2});
  }
  cv_.notify_all();
}

void DecompressPipe::ReleaseLocked(uint64_t seq) {
  --ring_[seq - ring_base_].refs;
  while (!ring_.empty() && ring_.front().refs == 0) {
    free_.push_back(ring_.front().buf);
    ring_.pop_front();
    ++ring_base_;
  }
}

void DecompressPipe::Hash() {
  Sha256 hash;
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || done_ || next_hash_ < ring_base_ + ring_.size(); });
    if (stop_) return;
    if (next_hash_ < ring_base_ + ring_.size()) {
      const Slot& slot = ring_[next_hash_ - ring_base_];
      const char* data = slot.buf->data();
      size_t n = slot.n;
      l.unlock();
      hash.Update(data, n);
      l.lock();
      ReleaseLocked(next_hash_++);
      cv_.notify_all();
      continue;
    }
    // done_ and every chunk hashed.
    digest_ = hash.Finish();
    hashed_ = true;
    cv_.notify_all();
    return;
  }
}

void DecompressPipe::Run() {
  Status st = Produce();
  {
    std::lock_guard<std::mutex> l(mu_);
    status_ = st;
    done_ = true;
  }
  cv_.notify_all();
}

namespace {

// One streaming decoder over either library. Decode() consumes from `in` and
// writes to `out`, advancing both; Finished() says the last frame ended cleanly.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual Status Decode(const char** in, size_t* in_n, char** out, size_t* out_n) = 0;
  virtual bool Finished() const = 0;
};

class ZstdDecoder : public Decoder {
 public:
  ZstdDecoder() : d_(ZSTD_createDStream()) {}
  ~ZstdDecoder() override { ZSTD_freeDStream(d_); }
  Status Decode(const char** in, size_t* in_n, char** out, size_t* out_n) override {
    ZSTD_inBuffer ib{*in, *in_n, 0};
    ZSTD_outBuffer ob{*out, *out_n, 0};
    size_t r = ZSTD_decompressStream(d_, &ob, &ib);
    if (ZSTD_isError(r)) return Error(Code::kDataLoss, "zstd: {}", ZSTD_getErrorName(r));
    last_ = r;
    *in += ib.pos;
    *in_n -= ib.pos;
    *out += ob.pos;
    *out_n -= ob.pos;
    return Status::Ok();
  }
  bool Finished() const override { return last_ == 0; }

 private:
  ZSTD_DStream* d_;
  size_t last_ = 1;
};

class Lz4Decoder : public Decoder {
 public:
  Lz4Decoder() { LZ4F_createDecompressionContext(&d_, LZ4F_VERSION); }
  ~Lz4Decoder() override { LZ4F_freeDecompressionContext(d_); }
  Status Decode(const char** in, size_t* in_n, char** out, size_t* out_n) override {
    size_t src = *in_n, dst = *out_n;
    size_t r = LZ4F_decompress(d_, *out, &dst, *in, &src, nullptr);
    if (LZ4F_isError(r)) return Error(Code::kDataLoss, "lz4: {}", LZ4F_getErrorName(r));
    last_ = r;
    *in += src;
    *in_n -= src;
    *out += dst;
    *out_n -= dst;
    return Status::Ok();
  }
  bool Finished() const override { return last_ == 0; }

 private:
  LZ4F_dctx* d_ = nullptr;
  size_t last_ = 1;
};

// A gzip blob kept as a registry sent it. Members are decoded one after another
// (concatenated gzip is valid); bytes after the last member that do not start
// another one are ignored, as libarchive's gzip reader (the ingest's) does, so
// both read the same tar, which the diff_id check confirms anyway.
class GzipDecoder : public Decoder {
 public:
  GzipDecoder() { ok_ = inflateInit2(&z_, 15 + 16) == Z_OK; }
  ~GzipDecoder() override { inflateEnd(&z_); }
  Status Decode(const char** in, size_t* in_n, char** out, size_t* out_n) override {
    if (!ok_) return Error(Code::kInternal, "gzip: cannot initialize zlib");
    if (trailing_) {  // past the last member: swallow the rest
      *in += *in_n;
      *in_n = 0;
      return Status::Ok();
    }
    if (member_done_) {
      // Another member only if the next two bytes are its magic (1f 8b), which
      // may arrive split across two reads.
      if (*in_n == 0) return Status::Ok();
      auto byte = [&](size_t i) { return static_cast<unsigned char>((*in)[i]); };
      if (!half_magic_ && *in_n == 1 && byte(0) == 0x1f) {
        half_magic_ = true;
        ++*in;
        --*in_n;
        return Status::Ok();
      }
      bool magic = half_magic_ ? byte(0) == 0x8b : (*in_n >= 2 && byte(0) == 0x1f && byte(1) == 0x8b);
      if (!magic) {
        trailing_ = true;
        return Decode(in, in_n, out, out_n);
      }
      inflateReset(&z_);
      member_done_ = false;
      if (half_magic_) {  // hand zlib the first magic byte we already took
        static const Bytef kFirst = 0x1f;
        z_.next_in = const_cast<Bytef*>(&kFirst);
        z_.avail_in = 1;
        z_.next_out = reinterpret_cast<Bytef*>(*out);
        z_.avail_out = 0;
        if (inflate(&z_, Z_NO_FLUSH) == Z_DATA_ERROR) return Error(Code::kDataLoss, "gzip: corrupt member header");
        half_magic_ = false;
      }
    }
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(*in));
    z_.avail_in = static_cast<uInt>(std::min<size_t>(*in_n, 1u << 30));
    z_.next_out = reinterpret_cast<Bytef*>(*out);
    z_.avail_out = static_cast<uInt>(std::min<size_t>(*out_n, 1u << 30));
    const size_t in_before = z_.avail_in, out_before = z_.avail_out;
    int r = inflate(&z_, Z_NO_FLUSH);
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
      return Error(Code::kDataLoss, "gzip: {}", z_.msg ? z_.msg : "corrupt stream");
    if (r == Z_STREAM_END) member_done_ = true;
    size_t used = in_before - z_.avail_in, made = out_before - z_.avail_out;
    *in += used;
    *in_n -= used;
    *out += made;
    *out_n -= made;
    return Status::Ok();
  }
  bool Finished() const override { return member_done_ || trailing_; }

 private:
  z_stream z_{};
  bool ok_ = false;
  bool member_done_ = false;
  bool half_magic_ = false;  // took a 0x1f after a member; 0x8b would start the next
  bool trailing_ = false;
};

}  // namespace

Status DecompressPipe::Produce() {
  std::unique_ptr<Decoder> dec;
  if (compression_ == Compression::kZstd)
    dec = std::make_unique<ZstdDecoder>();
  else if (compression_ == Compression::kGzip)
    dec = std::make_unique<GzipDecoder>();
  else
    dec = std::make_unique<Lz4Decoder>();
  std::string in(1 << 20, '\0');
  const char* ip = in.data();
  size_t in_n = 0;
  bool eof = false;
  std::string* buf = TakeFree();
  if (!buf) return Error(Code::kCancelled, "decompression stopped");
  char* op = buf->data();
  size_t out_n = buf->size();
  auto flush = [&]() -> Status {
    size_t n = buf->size() - out_n;
    if (n == 0) return Status::Ok();
    bytes_out_ += n;
    if (bytes_out_ > max_out_)
      return Error(Code::kDataLoss, "blob decompresses to more than the layer's {} bytes", max_out_);
    PushFull(buf, n);
    buf = TakeFree();
    if (!buf) return Error(Code::kCancelled, "decompression stopped");
    op = buf->data();
    out_n = buf->size();
    return Status::Ok();
  };
  for (;;) {
    if (in_n == 0 && !eof) {
      ssize_t r = ::read(fd_.get(), in.data(), in.size());
      if (r < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("reading layer blob");
      }
      if (r == 0) eof = true;
      ip = in.data();
      in_n = static_cast<size_t>(r);
    }
    if (in_n == 0 && eof) break;
    while (in_n > 0) {
      PADDOCK_RETURN_IF_ERROR(dec->Decode(&ip, &in_n, &op, &out_n));
      if (out_n == 0) PADDOCK_RETURN_IF_ERROR(flush());
    }
  }
  // Drain what the decoder still holds (lz4/zstd may buffer output).
  for (int spins = 0; !dec->Finished() && spins < 1024; ++spins) {
    size_t before = out_n;
    const char* none = ip;
    size_t zero = 0;
    PADDOCK_RETURN_IF_ERROR(dec->Decode(&none, &zero, &op, &out_n));
    if (out_n == 0) PADDOCK_RETURN_IF_ERROR(flush());
    else if (out_n == before) break;
  }
  if (!dec->Finished()) return Error(Code::kDataLoss, "blob is truncated (compressed frame does not end)");
  if (buf->size() != out_n) {
    size_t n = buf->size() - out_n;
    bytes_out_ += n;
    if (bytes_out_ > max_out_)
      return Error(Code::kDataLoss, "blob decompresses to more than the layer's {} bytes", max_out_);
    PushFull(buf, n);
  } else {
    std::lock_guard<std::mutex> l(mu_);
    free_.push_back(buf);
  }
  return Status::Ok();
}

Result<std::string_view> DecompressPipe::Next() {
  std::unique_lock<std::mutex> l(mu_);
  if (held_) {
    ReleaseLocked(next_read_ - 1);
    held_ = false;
    cv_.notify_all();
  }
  auto ready = [&] { return next_read_ < ring_base_ + ring_.size(); };
  cv_.wait(l, [&] { return ready() || done_; });
  if (ready()) {
    const Slot& slot = ring_[next_read_ - ring_base_];
    ++next_read_;
    held_ = true;
    return std::string_view(slot.buf->data(), slot.n);
  }
  if (!status_.ok()) return status_;
  cv_.wait(l, [&] { return hashed_; });  // digest() is final
  return std::string_view();
}

}  // namespace paddock::storage
