// Internal: group commit. Every write of the log goes through one
// CommitQueue. A writer enqueues a `Prepare` function and waits; the first
// waiting writer becomes the leader, takes every queued write, runs their
// Prepare functions one after the other (each sees the log plus the writes
// staged before it in the same group, so read-check-write is atomic), puts
// what they staged into one WriteBatch, and writes it with sync = true. Every
// writer of the group returns only after that sync; the next leader is chosen
// from the writers that queued meanwhile.
//
// A writer may ask not to wait for the sync (`sync = false`, the log's
// Durability::kDeferred). The leader writes the deferred writers of its group
// first, in a batch of their own without a sync, and wakes them; then the
// synced ones in one synced batch. Writers queued at the same time are
// concurrent, so running the deferred ones first is a valid order; a writer's
// own writes keep their order because it waits for each. The WAL is one
// sequential file: the synced batch makes the deferred one durable too. A
// deferred leader hands the synced writers of its group to the first of them
// as the next leader instead of waiting for their sync.
//
// A writer may also not wait at all (CommitAsync): it queues its Prepare with
// a completion and returns. It joins groups like any writer, but it has no
// thread to lead one, so when it finds no leader (or is next to lead) the
// queue's own committer thread leads instead. Its completion runs on the
// thread that wrote its group, right after the write. With many writes in
// flight from a few threads this saves what group commit cannot: the sleep
// and wake-up of one thread per write.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <deque>
#include <unordered_map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "replay/trajectory_log.h"

namespace paddock::replay {

class CommitQueue {
 public:
  // The view a Prepare function reads and stages writes through.
  class Staging {
   public:
    // The value at key: the group's staged writes first, then the database.
    Result<std::optional<std::string>> Get(rocksdb::ColumnFamilyHandle* cf, const std::string& key);
    void Put(rocksdb::ColumnFamilyHandle* cf, const std::string& key, std::string value);
    void Delete(rocksdb::ColumnFamilyHandle* cf, const std::string& key);
    // Not visible to Get() within the group.
    void DeleteRange(rocksdb::ColumnFamilyHandle* cf, const std::string& begin, const std::string& end);
    // Whether a write kept earlier in this group puts a key in [begin, end) of cf.
    bool PutsInRange(rocksdb::ColumnFamilyHandle* cf, const std::string& begin, const std::string& end) const;

   private:
    friend class CommitQueue;
    struct Op {
      enum Kind { kPut, kDelete, kDeleteRange } kind;
      rocksdb::ColumnFamilyHandle* cf;
      std::string key;
      std::string value;  // the value, or the end of a range
    };
    explicit Staging(rocksdb::DB* db) : db_(db) {}
    void Keep(rocksdb::WriteBatch& batch);  // moves this writer's ops into the batch and overlay
    void Drop() { ops_.clear(); }
    static std::string OverlayKey(rocksdb::ColumnFamilyHandle* cf, const std::string& key);

    rocksdb::DB* db_;
    std::vector<Op> ops_;              // the current writer's, until Keep or Drop
    std::deque<Op> kept_;              // the group's kept puts (stable addresses)
    // Column family id + key -> the group's latest value (nullptr: deleted).
    std::unordered_map<std::string, const std::string*> overlay_;
  };
  using Prepare = std::function<Status(Staging&)>;
  // Runs once with the write's outcome. Short and non-blocking: it runs on a
  // thread that is writing the log, so it must not wait, above all not for a
  // synchronous Commit (that would wait on itself); CommitAsync is fine.
  using Done = std::function<void(Status)>;

  // `space_dir`: the filesystem whose free space is checked before each
  // write; `reserve_bytes`: what must stay free after it (0: no check).
  // `deferred_writes`: false syncs every write, whatever it asked.
  CommitQueue(rocksdb::DB* db, bool group_commit, std::string space_dir = {},
              uint64_t reserve_bytes = 0, bool deferred_writes = true)
      : db_(db), group_commit_(group_commit), deferred_writes_(deferred_writes),
        space_dir_(std::move(space_dir)), reserve_bytes_(reserve_bytes) {}
  ~CommitQueue() { Shutdown(); }

  // Runs prepare in a group and returns once its writes are durable (or
  // failed); with sync = false, once they are written (not yet synced).
  Status Commit(const Prepare& prepare, bool sync = true);
  // Queues prepare and returns at once; `done` gets what Commit would return.
  void CommitAsync(Prepare prepare, Done done, bool sync = true);
  // Writes what is queued, then stops the committer thread. The database must
  // stay open until this returns; no Commit or CommitAsync may follow.
  void Shutdown();
  CommitStats Stats() const;

 private:
  struct Writer {
    enum : uint32_t { kWaiting = 0, kDone = 1, kLead = 2 };
    const Prepare* prepare;
    bool sync;
    Done done;                          // set: an asynchronous writer (heap, owned by the queue)
    Prepare owned_prepare;              // what `prepare` points at for an asynchronous writer
    Status status;                      // set by the leader before kDone
    // Set by the leader before kDone: the group's writers this one wakes
    // when it is woken (a binary tree, so the leader wakes only two).
    Writer* wake[2] = {nullptr, nullptr};
    std::atomic<uint32_t> state{kWaiting};
  };
  // Writes one group as its leader: `self` is the leading writer, or null for
  // the committer thread. Returns the next leader when it is an asynchronous
  // writer (the committer leads for it), else null.
  Writer* Lead(Writer* self);
  // Asks the committer thread to lead (under mu_).
  void WakeCommitterLocked();
  void CommitterLoop();
  // Prepares and writes one batch; true when it wrote (and, with sync, synced).
  bool RunGroup(std::vector<Writer*>& group, bool sync);
  // Runs a group, counts it and wakes its writers other than `self` (an
  // asynchronous one gets its completion run instead, and is freed).
  void Finish(std::vector<Writer*>& group, bool sync, Writer* self);
  // Marks `writers` (null entries skipped) done and wakes them.
  static void WakeDone(Writer* const (&writers)[2]);

  Status CheckSpace(uint64_t batch_bytes) const;

  rocksdb::DB* db_;
  const bool group_commit_;
  const bool deferred_writes_;
  const std::string space_dir_;
  const uint64_t reserve_bytes_;
  // Set by the first failed write (a full disk, an I/O error): RocksDB must
  // not be written to again through this handle (its WAL writer may abort on
  // a write after an error), so every later commit fails with this status
  // until the log is reopened. Touched only by the current leader.
  Status failed_;
  mutable std::mutex mu_;
  std::vector<Writer*> queue_;
  bool leader_active_ = false;
  // The committer thread, started by the first CommitAsync; it leads when
  // `committer_lead_` is set and exits once `stopping_` is and it has no lead.
  std::thread committer_;
  std::condition_variable committer_cv_;
  bool committer_lead_ = false;
  bool stopping_ = false;
  CommitStats stats_;
};

}  // namespace paddock::replay
