#include "storage/layer_ingest.h"

#include <archive.h>
#include <archive_entry.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "storage/entry_policy.h"
#include "storage/layer_codec.h"

namespace paddock::storage {

ByteSource SourceFromFd(int fd) {
  return [fd](void* buf, size_t n) -> Result<size_t> {
    for (;;) {
      ssize_t r = ::read(fd, buf, n);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ErrnoError("reading layer");
      return static_cast<size_t>(r);
    }
  };
}

ByteSource SourceFromString(std::string_view data) {
  auto pos = std::make_shared<size_t>(0);
  return [data, pos](void* buf, size_t n) -> Result<size_t> {
    size_t take = std::min(n, data.size() - *pos);
    std::memcpy(buf, data.data() + *pos, take);
    *pos += take;
    return take;
  };
}

namespace {

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveDeleter>;

// Two stages on two threads once the source's format is known: the source
// side (read, hash and keep the source, decompress, hash the tar, recompress
// it) runs ahead on a thread of its own, handing tar chunks through a few
// buffers to the tar side (entry checks, index, unpack) on the caller's
// thread. A registry pull's layer then unpacks while the next bytes are
// decompressed, so the pull ends soon after its last byte arrives (one thread
// doing both was the slower stage behind a 200 Mbit/s link; bench/README.md).
struct Pipeline {
  const ByteSource* source;
  std::string name;
  // Source side: its first error (its stage writes it; the tar side reads it
  // only once that stage has handed over its last chunk).
  Status source_err;
  Sha256 source_hash;
  uint64_t source_bytes = 0;
  std::string source_buf = std::string(1 << 20, '\0');
  BlobWriter* source_writer = nullptr;  // keeping the source as the blob
  archive* outer = nullptr;
  Sha256 tar_hash;
  uint64_t tar_bytes = 0;
  uint64_t tar_cap = 0;
  Compressor* compressor = nullptr;
  // Tar side: its first error.
  Status err;

  // The hand-over: chunks of the tar, in order; n == 0 ends it, n < 0 says
  // the source side failed (source_err).
  static constexpr size_t kChunk = 1 << 20, kBuffers = 4;
  struct Chunk {
    std::string* buf;
    la_ssize_t n;
  };
  std::vector<std::string> buffers = std::vector<std::string>(kBuffers, std::string(kChunk, '\0'));
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string*> free_bufs;
  std::deque<Chunk> full;
  bool stop = false;             // the tar side gave up
  std::string* held = nullptr;   // the chunk the tar reader holds
  bool ended = false;            // the tar side saw the end
  std::thread producer;

  static void SetError(archive* a, Status* slot, Status st) {
    if (slot->ok()) *slot = std::move(st);
    archive_set_error(a, EIO, "%s", slot->message().c_str());
  }

  static la_ssize_t ReadSource(archive* a, void* cd, const void** buf) {
    auto* p = static_cast<Pipeline*>(cd);
    auto r = (*p->source)(p->source_buf.data(), p->source_buf.size());
    if (!r.ok()) {
      SetError(a, &p->source_err, r.status().Prefix(p->name));
      return -1;
    }
    p->source_hash.Update(p->source_buf.data(), r.value());
    p->source_bytes += r.value();
    if (p->source_writer) {
      Status st = p->source_writer->Write(p->source_buf.data(), r.value());
      if (!st.ok()) {
        SetError(a, &p->source_err, st.Prefix(p->name + ": storing"));
        return -1;
      }
    }
    *buf = p->source_buf.data();
    return static_cast<la_ssize_t>(r.value());
  }

  // Source side: the next decompressed tar bytes into `b`, hashed and
  // recompressed; 0 at the end (the source then drained: the source digest
  // covers every byte of it); -1 with source_err.
  la_ssize_t Produce(std::string* b) {
    la_ssize_t n = archive_read_data(outer, b->data(), b->size());
    if (n < 0) {
      if (source_err.ok())
        source_err = Error(Code::kInvalidArgument, "{} is corrupt or truncated: {}", name,
                           archive_error_string(outer) ? archive_error_string(outer) : "read error");
      return -1;
    }
    if (n == 0) {
      for (;;) {
        const void* ignored;
        la_ssize_t r = ReadSource(outer, this, &ignored);
        if (r < 0) return -1;
        if (r == 0) return 0;
      }
    }
    tar_hash.Update(b->data(), static_cast<size_t>(n));
    tar_bytes += static_cast<uint64_t>(n);
    if (tar_bytes > tar_cap) {
      source_err = Error(Code::kInvalidArgument, "{} decompresses to more than {} bytes (size limit)", name, tar_cap);
      return -1;
    }
    if (compressor) {
      Status st = compressor->Write(b->data(), static_cast<size_t>(n));
      if (!st.ok()) {
        source_err = st.Prefix(name + ": storing");
        return -1;
      }
    }
    return n;
  }

  void StartProducer() {
    for (auto& b : buffers) free_bufs.push_back(&b);
    producer = std::thread([this] {
      for (;;) {
        std::string* b;
        {
          std::unique_lock l(mu);
          cv.wait(l, [&] { return stop || !free_bufs.empty(); });
          if (stop) return;
          b = free_bufs.front();
          free_bufs.pop_front();
        }
        la_ssize_t n = Produce(b);
        {
          std::lock_guard l(mu);
          full.push_back({b, n});
        }
        cv.notify_all();
        if (n <= 0) return;
      }
    });
  }
  // Stops the source side (the tar side is done or gave up) and waits for it.
  void StopProducer() {
    {
      std::lock_guard l(mu);
      stop = true;
    }
    cv.notify_all();
    if (producer.joinable()) producer.join();
  }

  // Tar side: the next chunk; the previous one goes back to the source side.
  la_ssize_t NextTarChunk(archive* a, const void** buf) {
    std::unique_lock l(mu);
    if (held) {
      free_bufs.push_back(held);
      held = nullptr;
      cv.notify_all();
    }
    if (ended) return 0;
    cv.wait(l, [&] { return !full.empty(); });
    Chunk c = full.front();
    full.pop_front();
    if (c.n <= 0) {
      ended = true;
      free_bufs.push_back(c.buf);
      if (c.n < 0) {
        l.unlock();
        StopProducer();  // it has ended; source_err is final
        SetError(a, &err, source_err.ok() ? Error(Code::kInternal, "{}: reading failed", name) : source_err);
        return -1;
      }
      return 0;
    }
    held = c.buf;
    *buf = held->data();
    return c.n;
  }
  static la_ssize_t ReadTar(archive* a, void* cd, const void** buf) {
    return static_cast<Pipeline*>(cd)->NextTarChunk(a, buf);
  }
};

std::string ArchiveError(archive* a) {
  const char* s = archive_error_string(a);
  return s ? s : "unknown error";
}

}  // namespace

Result<IngestedLayer> IngestLayer(const ByteSource& source, StagingArea* staging, const IngestOptions& options) {
  Pipeline p;
  p.source = &source;
  p.name = options.name.empty() ? "layer" : options.name;
  // Headers and padding add at most ~1.5 KiB per entry over the content bytes.
  p.tar_cap = options.limits.max_unpacked_bytes + options.limits.max_entries * 1536 + (1 << 20);

  IngestedLayer out;
  std::unique_ptr<BlobWriter> blob_writer;
  std::unique_ptr<Compressor> compressor;
  auto new_writer = [&]() -> Status {
    auto writer = staging->NewWriter();
    if (!writer.ok()) return writer.status().Prefix(p.name + ": storing");
    blob_writer = std::move(writer).value();
    return Status::Ok();
  };
  // The tar side's compressor, when the source is not kept as it came.
  auto compress_tar = [&]() -> Status {
    PADDOCK_RETURN_IF_ERROR(new_writer());
    BlobWriter* w = blob_writer.get();
    PADDOCK_ASSIGN_OR_RETURN(compressor, Compressor::Create(options.compression, options.level,
                                                            [w](const void* d, size_t n) { return w->Write(d, n); }));
    p.compressor = compressor.get();
    out.compression = options.compression;
    return Status::Ok();
  };
  if (options.store && options.keep_compressed_source) {
    // Whether the source is one gzip or zstd stream is known once libarchive
    // has looked at its first bytes (below); they are kept until then.
    PADDOCK_RETURN_IF_ERROR(new_writer());
    p.source_writer = blob_writer.get();
  } else if (options.store) {
    PADDOCK_RETURN_IF_ERROR(compress_tar());
  }

  ArchivePtr outer(archive_read_new());
  archive_read_support_filter_all(outer.get());
  archive_read_support_format_raw(outer.get());
  if (archive_read_open2(outer.get(), &p, nullptr, &Pipeline::ReadSource, nullptr, nullptr) != ARCHIVE_OK)
    return p.source_err.ok() ? Error(Code::kInvalidArgument, "cannot read {}: {}", p.name, ArchiveError(outer.get()))
                             : p.source_err;
  archive_entry* raw_entry = nullptr;
  int r = archive_read_next_header(outer.get(), &raw_entry);
  if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
    return p.source_err.ok() ? Error(Code::kInvalidArgument, "cannot read {}: {}", p.name, ArchiveError(outer.get()))
                             : p.source_err;
  p.outer = outer.get();
  if (p.source_writer) {
    // Filter 0 is the one nearest the tar; the last is the raw source ("none"),
    // so exactly one gzip or zstd layer over it is kept.
    const int filters = archive_filter_count(outer.get());
    const int code = filters == 2 ? archive_filter_code(outer.get(), 0) : -1;
    if (code == ARCHIVE_FILTER_GZIP || code == ARCHIVE_FILTER_ZSTD) {
      out.compression = code == ARCHIVE_FILTER_GZIP ? Compression::kGzip : Compression::kZstd;
    } else if (code == ARCHIVE_FILTER_LZ4 && options.keep_lz4_source) {
      out.compression = Compression::kLz4;
    } else {  // a plain tar, or a filter the store does not keep: compress the tar
      p.source_writer = nullptr;
      blob_writer.reset();  // unlinks what it had staged
      PADDOCK_RETURN_IF_ERROR(compress_tar());
    }
  }
  std::unique_ptr<LayerTreeWriter> tree;
  if (!options.unpack_into.empty()) {
    PADDOCK_ASSIGN_OR_RETURN(tree, LayerTreeWriter::Open(options.unpack_into, p.name, options.unpack_writeback));
  }

  // From here the source side runs on its own thread; every return below
  // stops it first (the guard), and its fields are read only after that.
  p.StartProducer();
  struct StopGuard {
    Pipeline& p;
    ~StopGuard() { p.StopProducer(); }
  } stop_guard{p};

  ArchivePtr tar(archive_read_new());
  archive_read_support_format_tar(tar.get());
  if (archive_read_open2(tar.get(), &p, nullptr, &Pipeline::ReadTar, nullptr, nullptr) != ARCHIVE_OK)
    return p.err.ok() ? Error(Code::kInvalidArgument, "{} is not a tar archive: {}", p.name, ArchiveError(tar.get()))
                      : p.err;

  EntryPolicy policy(options.limits);
  std::string last = "(start of archive)";
  for (;;) {
    archive_entry* e = nullptr;
    r = archive_read_next_header(tar.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      if (!p.err.ok()) return p.err;
      return Error(Code::kInvalidArgument, "{} is truncated or corrupt after entry '{}': {}", p.name, last,
                   ArchiveError(tar.get()));
    }
    LayerEntry le;
    le.offset = static_cast<uint64_t>(archive_read_header_position(tar.get()));
    PADDOCK_RETURN_IF_ERROR(policy.Check(e, &le).Prefix(p.name));
    last = archive_entry_pathname(e) ? archive_entry_pathname(e) : le.path;
    if (tree) {
      // Written as it arrives; the caller keeps the tree only once the digests
      // this pass reports have been checked.
      Status st = tree->Add(tar.get(), e, le);
      if (!st.ok()) return p.err.ok() ? st : p.err;
    } else if (archive_read_data_skip(tar.get()) != ARCHIVE_OK) {
      if (!p.err.ok()) return p.err;
      return Error(Code::kInvalidArgument, "{}: entry '{}' is truncated: {}", p.name, last, ArchiveError(tar.get()));
    }
    out.entries.push_back(std::move(le));
  }
  if (tree) {
    PADDOCK_ASSIGN_OR_RETURN(out.unpacked, tree->Finish());
  }
  // The diff_id covers every byte of the tar, including what follows the
  // end-of-archive marker, so the decompressed stream is drained (and the
  // source side drains the source after it).
  for (;;) {
    const void* buf;
    la_ssize_t n = p.NextTarChunk(tar.get(), &buf);
    if (n < 0) return p.err;
    if (n == 0) break;
  }
  p.StopProducer();
  if (!p.err.ok()) return p.err;
  if (!p.source_err.ok()) return p.source_err;

  out.source_digest = p.source_hash.Finish();
  out.source_size = p.source_bytes;
  out.diff_id = p.tar_hash.Finish();
  out.uncompressed_size = p.tar_bytes;
  if (out.unpacked) out.unpacked->tar_bytes = p.tar_bytes;
  if (options.store) {
    const std::string storing = p.name + ": storing";
    if (compressor) PADDOCK_RETURN_IF_ERROR(compressor->Finish().Prefix(storing));
    auto blob = blob_writer->Finish();
    if (!blob.ok()) return blob.status().Prefix(storing);
    out.blob = *blob;
    auto index_writer = staging->NewWriter();
    if (!index_writer.ok()) return index_writer.status().Prefix(storing + " its index");
    PADDOCK_RETURN_IF_ERROR((*index_writer)->Write(EncodeIndex(out.diff_id, out.entries)).Prefix(storing + " its index"));
    auto index = (*index_writer)->Finish();
    if (!index.ok()) return index.status().Prefix(storing + " its index");
    out.index = *index;
  }
  return out;
}

}  // namespace paddock::storage
