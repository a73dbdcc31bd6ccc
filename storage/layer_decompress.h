// Decompresses a stored layer blob (zstd or lz4 frames, or a gzip blob kept as a
// registry sent it) on its own thread with libzstd / liblz4 / zlib directly, into
// a small ring of large buffers that the caller consumes (the materializer feeds
// them to libarchive's tar reader). libarchive's own zstd read filter runs in the extracting thread with small buffers and was
// measured at 0.28x of `zstd -d | tar -x` (docs/image-store.md); this overlaps
// decompression with extraction the way the shell pipeline does.
//
// The output is hashed on a third thread, reading the same buffers as the caller
// (sha256 of a tar costs about as much CPU as decompressing it; on the
// decompressing thread it made that thread the slower stage): after the last
// chunk, digest() is the sha256 of the whole tar, which the caller checks against
// the diff_id. A buffer is reused once both the caller and the hasher are done. The
// output is capped at `max_out_bytes` (a corrupt or hostile blob cannot inflate
// without bound): exceeding it, a truncated frame or a corrupt one is DATA_LOSS.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "storage/digest.h"
#include "storage/layer.h"

namespace paddock::storage {

class DecompressPipe {
 public:
  // 1 MiB chunks: the writer starts after the first MiB, and the hasher is at most
  // a few MiB behind when the writer ends (4 MiB ones cost both ends more).
  static constexpr size_t kChunk = 1 << 20;
  static constexpr size_t kChunks = 12;

  static Result<std::unique_ptr<DecompressPipe>> Start(const std::string& blob_path, Compression compression,
                                                       uint64_t max_out_bytes);
  ~DecompressPipe();  // stops and joins the thread
  DecompressPipe(const DecompressPipe&) = delete;
  DecompressPipe& operator=(const DecompressPipe&) = delete;

  // The next chunk of the tar; an empty view at the end. The view stays valid until
  // the next call. An error is sticky.
  Result<std::string_view> Next();
  // After Next() returned the end (which waits for the hasher): sha256 and length
  // of everything produced.
  const Digest& digest() const { return digest_; }
  uint64_t bytes_out() const { return bytes_out_; }

 private:
  DecompressPipe(UniqueFd fd, Compression c, uint64_t max_out);
  void Run();
  Status Produce();
  void Hash();
  // Producer side: a free buffer to fill (nullptr when stopping), and handing it over.
  std::string* TakeFree();
  void PushFull(std::string* buf, size_t n);
  // One reader (caller or hasher) is done with the chunk at `seq`; mu_ held.
  void ReleaseLocked(uint64_t seq);

  // A produced chunk, read by the caller and the hasher; free again at refs == 0.
  struct Slot {
    std::string* buf;
    size_t n;
    int refs;
  };

  UniqueFd fd_;
  Compression compression_;
  uint64_t max_out_;
  std::vector<std::string> buffers_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string*> free_;
  std::deque<Slot> ring_;       // produced chunks not yet released by both readers
  uint64_t ring_base_ = 0;      // sequence number of ring_.front()
  uint64_t next_read_ = 0;      // the caller's next chunk
  uint64_t next_hash_ = 0;      // the hasher's next chunk
  bool held_ = false;           // the caller holds chunk next_read_ - 1
  bool done_ = false;           // producer finished (status_ says how)
  bool hashed_ = false;         // hasher finished (digest_ set when status_ is ok)
  bool stop_ = false;           // consumer gone
  Status status_;
  Digest digest_;
  uint64_t bytes_out_ = 0;
  std::thread thread_;
  std::thread hasher_;
};

}  // namespace paddock::storage
