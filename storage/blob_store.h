// BlobStore: immutable, content-addressed (sha256) blobs under a root directory.
//
// Layout under ROOT:
//   blobs/sha256/<hex>              the blob; never modified once renamed in
//   staging/<txn>/                  temp files of in-flight writes (same filesystem)
//   blobrefs/sha256/<hex>/<holder>  one empty file per reference held on <hex>
//
// Contracts:
//  * A blob appears under its name only complete: it is written to a staging
//    file, fsynced, renamed into place, and the directory fsynced. A crash at any
//    point leaves either no blob or the whole blob; staging leftovers are removed
//    by Gc() once older than the grace period.
//  * Reads verify content against the name: a mismatch is DATA_LOSS naming the blob.
//  * References are files, one per (blob, holder), created with O_EXCL and removed
//    with unlink: each change is a single atomic namespace operation, so there is no
//    read-modify-write counter to tear in a crash, and it works on NFS (v3+ honours
//    O_EXCL; no flock, no hard links, nothing node-local). The count is the number
//    of holder files. A crash may leave an extra reference (a leak Gc's repair
//    removes), never a missing one.
//  * Gc() deletes blobs with no references whose mtime is older than the grace
//    period. Writers that reuse an existing blob touch it, so a concurrent import
//    on another node is protected for `grace`. Run gc with a grace longer than the
//    longest import (default 1 h), or when no import is in flight.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "storage/digest.h"

namespace paddock::storage {

struct BlobStoreStats {
  uint64_t bytes_staged = 0;     // bytes written to staging files
  uint64_t bytes_committed = 0;  // bytes of blobs that became new (not already present)
  uint64_t blobs_committed = 0;
  uint64_t blobs_deduplicated = 0;  // commits that found the blob already present
};

// A blob written to staging, digest known, not yet visible in the store.
struct StagedBlob {
  Digest digest;
  uint64_t size = 0;
  std::string path;  // staging file
};

class BlobStore;

// Streams bytes into a staging file while hashing them. Destroying an unfinished
// writer removes its file.
class BlobWriter {
 public:
  ~BlobWriter();
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;
  Status Write(const void* data, size_t n);
  Status Write(std::string_view s) { return Write(s.data(), s.size()); }
  uint64_t size() const { return size_; }
  // fsyncs and returns the staged blob; the file stays until committed or the
  // staging area is dropped.
  Result<StagedBlob> Finish();

 private:
  friend class BlobStore;
  friend class StagingArea;
  BlobWriter(BlobStore* store, std::string path, UniqueFd fd);
  void StartWriteback(bool force);
  Status WriteOut(const char* data, size_t n);
  BlobStore* store_;
  std::string path_;
  UniqueFd fd_;
  Sha256 hash_;
  uint64_t size_ = 0;
  uint64_t written_ = 0;         // bytes handed to the kernel
  uint64_t writeback_from_ = 0;  // writeback started for everything before this
  bool finished_ = false;
  bool leave_reserved_ = true;   // staging writes keep out of reserved room (Put's do not)
  std::string buf_;
};

// A private directory in staging for one transaction (an import). Removed with
// everything in it on destruction; committed blobs have been renamed out.
class StagingArea {
 public:
  ~StagingArea();
  StagingArea(const StagingArea&) = delete;
  StagingArea& operator=(const StagingArea&) = delete;
  const std::string& dir() const { return dir_; }
  Result<std::unique_ptr<BlobWriter>> NewWriter();

 private:
  friend class BlobStore;
  StagingArea(BlobStore* store, std::string dir) : store_(store), dir_(std::move(dir)) {}
  BlobStore* store_;
  std::string dir_;
};

// Room held for a commit in progress (BlobStore::Reserve); released on destruction.
class SpaceReservation {
 public:
  SpaceReservation() = default;
  SpaceReservation(SpaceReservation&& o) noexcept;
  SpaceReservation& operator=(SpaceReservation&& o) noexcept;
  ~SpaceReservation() { Release(); }
  void Release();

 private:
  friend class BlobStore;
  SpaceReservation(BlobStore* store, uint64_t bytes, uint64_t inodes)
      : store_(store), bytes_(bytes), inodes_(inodes) {}
  BlobStore* store_ = nullptr;
  uint64_t bytes_ = 0, inodes_ = 0;
};

struct GcOptions {
  std::chrono::seconds grace{3600};
  bool dry_run = false;
};

struct GcReport {
  uint64_t blobs_removed = 0;
  uint64_t bytes_freed = 0;
  uint64_t staging_removed = 0;
  std::vector<Digest> removed;
};

class BlobStore {
 public:
  // Creates the layout under root if missing.
  static Result<std::unique_ptr<BlobStore>> Open(const std::string& root);

  const std::string& root() const { return root_; }
  std::string BlobPath(const Digest& d) const;

  Result<std::unique_ptr<StagingArea>> NewStaging();
  // Makes a staged blob visible under its digest (rename + fsync dir). If the blob
  // is already present the staged file is dropped and the existing one touched.
  Status Commit(const StagedBlob& blob);
  // Stage + commit in one step, for small blobs (manifests, configs, indexes).
  Result<Digest> Put(std::string_view data);

  bool Has(const Digest& d) const;
  Result<uint64_t> Size(const Digest& d) const;
  // Whole blob, verified; DATA_LOSS on mismatch, NOT_FOUND when absent.
  Result<std::string> Read(const Digest& d, uint64_t max_bytes = 64ull << 20) const;
  // Streams the blob to `sink` in chunks, then verifies. A consumer must discard
  // what it received if this returns DATA_LOSS.
  Status Stream(const Digest& d, const std::function<Status(const void*, size_t)>& sink) const;
  Status Verify(const Digest& d) const;
  Result<std::vector<Digest>> List() const;

  // References. Holder names are any string (escaped into one path component).
  Status AddRef(const Digest& d, std::string_view holder);
  Status RemoveRef(const Digest& d, std::string_view holder);
  Result<std::vector<std::string>> Holders(const Digest& d) const;
  Result<size_t> RefCount(const Digest& d) const;

  // Deletes unreferenced blobs older than the grace period and stale staging dirs.
  Result<GcReport> Gc(const GcOptions& options = {});

  const BlobStoreStats& stats() const { return stats_; }
  void ResetStats() { stats_ = {}; }

  // Free space is checked and taken in one step: Reserve() compares the
  // filesystem's free bytes and inodes (statvfs) minus what other reservations of
  // this store hold, under one lock, and holds `bytes`/`inodes` until the
  // reservation is released. Staging writes (layers being imported) refuse with
  // RESOURCE_EXHAUSTED rather than eat into reserved room, so two concurrent
  // imports cannot both pass the check for their commit and then have one fill
  // the disk under the other's commit. `what` names the reservation in errors.
  // (Reservations are per process: a store shared by several daemons relies on the
  // commit order in image_store.h, which leaves nothing visible half-written.)
  Result<SpaceReservation> Reserve(uint64_t bytes, uint64_t inodes, std::string_view what);
  uint64_t reserved_bytes() const { return reserved_bytes_.load(); }

 private:
  friend class BlobWriter;
  friend class SpaceReservation;
  explicit BlobStore(std::string root) : root_(std::move(root)) {}
  std::string RefDir(const Digest& d) const;
  // Writes a staging buffer unless it would take reserved room (then
  // RESOURCE_EXHAUSTED). The check and the write are one step against Reserve():
  // a reservation granted between them would otherwise be eaten by the write.
  Status WriteUnreserved(int fd, const char* data, size_t n, const std::string& path);
  std::string root_;
  BlobStoreStats stats_;
  std::mutex space_mu_;
  std::shared_mutex staging_writes_mu_;  // shared: a staging write; unique: Reserve()
  std::atomic<uint64_t> reserved_bytes_{0};
  uint64_t reserved_inodes_ = 0;  // space_mu_
};

}  // namespace paddock::storage
