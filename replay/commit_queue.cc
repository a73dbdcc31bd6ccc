#include "replay/commit_queue.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "replay/rocks_status.h"

namespace paddock::replay {
namespace {

// A raw futex rather than std::atomic::wait: libstdc++ spins with
// sched_yield before sleeping, which on a loaded machine with hundreds of
// waiting writers costs more than it saves.
void FutexWait(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, 0u, nullptr, nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

}  // namespace

Result<std::optional<std::string>> CommitQueue::Staging::Get(rocksdb::ColumnFamilyHandle* cf,
                                                             const std::string& key) {
  // This writer's own ops first (latest wins), then the group's, then the DB.
  for (auto it = ops_.rbegin(); it != ops_.rend(); ++it) {
    if (it->cf != cf || it->kind == Op::kDeleteRange || it->key != key) continue;
    if (it->kind == Op::kDelete) return std::optional<std::string>();
    return std::optional<std::string>(it->value);
  }
  auto found = overlay_.find(OverlayKey(cf, key));
  if (found != overlay_.end()) {
    if (found->second == nullptr) return std::optional<std::string>();  // deleted in this group
    return std::optional<std::string>(*found->second);
  }
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf, key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "reading the trajectory log");
  return std::optional<std::string>(std::move(value));
}

void CommitQueue::Staging::Put(rocksdb::ColumnFamilyHandle* cf, const std::string& key,
                               std::string value) {
  ops_.push_back({Op::kPut, cf, key, std::move(value)});
}

void CommitQueue::Staging::Delete(rocksdb::ColumnFamilyHandle* cf, const std::string& key) {
  ops_.push_back({Op::kDelete, cf, key, {}});
}

void CommitQueue::Staging::DeleteRange(rocksdb::ColumnFamilyHandle* cf, const std::string& begin,
                                       const std::string& end) {
  ops_.push_back({Op::kDeleteRange, cf, begin, end});
}

bool CommitQueue::Staging::PutsInRange(rocksdb::ColumnFamilyHandle* cf, const std::string& begin,
                                       const std::string& end) const {
  for (const Op& op : kept_)
    if (op.cf == cf && op.key >= begin && op.key < end) return true;
  return false;
}

std::string CommitQueue::Staging::OverlayKey(rocksdb::ColumnFamilyHandle* cf, const std::string& key) {
  std::string out;
  out.reserve(4 + key.size());
  uint32_t id = cf->GetID();
  out.append(reinterpret_cast<const char*>(&id), sizeof id);
  out.append(key);
  return out;
}

void CommitQueue::Staging::Keep(rocksdb::WriteBatch& batch) {
  for (Op& op : ops_) {
    switch (op.kind) {
      case Op::kPut:
        batch.Put(op.cf, op.key, op.value);
        kept_.push_back(std::move(op));
        overlay_[OverlayKey(kept_.back().cf, kept_.back().key)] = &kept_.back().value;
        break;
      case Op::kDelete:
        batch.Delete(op.cf, op.key);
        overlay_[OverlayKey(op.cf, op.key)] = nullptr;
        break;
      case Op::kDeleteRange:
        batch.DeleteRange(op.cf, op.key, op.value);
        break;
    }
  }
  ops_.clear();
}

Status CommitQueue::Commit(const Prepare& prepare, bool sync) {
  Writer self{&prepare, sync || !deferred_writes_};
  {
    std::lock_guard lock(mu_);
    // Invariant: no leader active implies an empty queue, so a writer that
    // finds no leader is at the front and leads at once.
    queue_.push_back(&self);
    if (!leader_active_) {
      leader_active_ = true;
      self.state.store(Writer::kLead, std::memory_order_relaxed);
    }
  }
  // Followers sleep on their own word (a futex): woken once, when their group
  // is written or when the finishing leader hands them the lead.
  uint32_t state;
  while ((state = self.state.load(std::memory_order_acquire)) == Writer::kWaiting) FutexWait(self.state);
  if (state == Writer::kDone) {
    WakeDone(self.wake);
    return std::move(self.status);
  }
  if (Lead(&self) != nullptr) {
    std::lock_guard lock(mu_);
    WakeCommitterLocked();
  }
  return std::move(self.status);
}

void CommitQueue::CommitAsync(Prepare prepare, Done done, bool sync) {
  auto* w = new Writer{nullptr, sync || !deferred_writes_, std::move(done), std::move(prepare)};
  w->prepare = &w->owned_prepare;
  std::lock_guard lock(mu_);
  if (!committer_.joinable()) committer_ = std::thread([this] { CommitterLoop(); });
  queue_.push_back(w);
  if (!leader_active_) {
    leader_active_ = true;
    WakeCommitterLocked();
  }
}

void CommitQueue::WakeCommitterLocked() {
  committer_lead_ = true;
  committer_cv_.notify_one();
}

void CommitQueue::CommitterLoop() {
  pthread_setname_np(pthread_self(), "paddock-log");  // for top and perf
  std::unique_lock lock(mu_);
  for (;;) {
    committer_cv_.wait(lock, [this] { return committer_lead_ || stopping_; });
    if (!committer_lead_) return;  // stopping, nothing to lead
    committer_lead_ = false;
    lock.unlock();
    while (Lead(nullptr) != nullptr) {
    }
    lock.lock();
  }
}

void CommitQueue::Shutdown() {
  {
    std::lock_guard lock(mu_);
    if (!committer_.joinable()) return;
    stopping_ = true;
    committer_cv_.notify_one();
  }
  committer_.join();
}

CommitQueue::Writer* CommitQueue::Lead(Writer* self) {
  std::vector<Writer*> group;
  {
    std::lock_guard lock(mu_);
    if (group_commit_) {
      group.swap(queue_);  // every queued write, ours (at the front) included
    } else {
      group.push_back(queue_.front());  // one sync per write
      queue_.erase(queue_.begin());
    }
  }
  // The deferred writers first, in a batch without a sync; then the synced.
  auto split = std::stable_partition(group.begin(), group.end(), [](const Writer* w) { return !w->sync; });
  std::vector<Writer*> synced(split, group.end());
  group.erase(split, group.end());
  if (!group.empty()) Finish(group, /*sync=*/false, self);
  Writer* next = nullptr;
  if (!synced.empty() && self != nullptr && !self->sync) {
    // Ours is written: the first synced writer leads the rest (and whoever
    // queued meanwhile) while we return.
    std::lock_guard lock(mu_);
    queue_.insert(queue_.begin(), synced.begin(), synced.end());
    next = queue_.front();
  } else {
    if (!synced.empty()) Finish(synced, /*sync=*/true, self);
    std::lock_guard lock(mu_);
    if (queue_.empty()) {
      leader_active_ = false;
    } else {
      next = queue_.front();  // waits, in the queue, until we store kLead
    }
  }
  if (next == nullptr) return nullptr;
  if (next->done) return next;  // no thread of its own: the committer leads
  next->state.store(Writer::kLead, std::memory_order_release);
  FutexWake(next->state);
  return nullptr;
}

void CommitQueue::Finish(std::vector<Writer*>& group, bool sync, Writer* self) {
  bool wrote = RunGroup(group, sync);
  {
    std::lock_guard lock(mu_);
    stats_.writes += group.size();
    if (wrote && sync) stats_.syncs += 1;
    if (!sync) stats_.deferred += group.size();
    for (const Writer* w : group) stats_.async += w->done ? 1 : 0;
    stats_.max_group = std::max<uint64_t>(stats_.max_group, group.size());
  }
  // The followers wake one another down a binary tree: the leader wakes the
  // first two, each woken one the next two of its own, so the wake-ups (a
  // system call each) run on every core instead of one after the other in
  // the leader, which goes on to the next group. Asynchronous writers have
  // no thread to pass a wake-up on: the leader runs their completions.
  std::vector<Writer*> followers, async;
  followers.reserve(group.size());
  for (Writer* w : group) {
    if (w == self) continue;
    (w->done ? async : followers).push_back(w);
  }
  for (size_t i = 0; i < followers.size(); ++i)
    for (size_t c = 0; c < 2; ++c)
      followers[i]->wake[c] = 2 * i + 2 + c < followers.size() ? followers[2 * i + 2 + c] : nullptr;
  Writer* first[2] = {followers.size() > 0 ? followers[0] : nullptr, followers.size() > 1 ? followers[1] : nullptr};
  WakeDone(first);
  for (Writer* w : async) {
    std::unique_ptr<Writer> owned(w);
    owned->done(std::move(owned->status));
  }
}

void CommitQueue::WakeDone(Writer* const (&writers)[2]) {
  // Read both before waking either: a woken writer may return at once.
  Writer* a = writers[0];
  Writer* b = writers[1];
  for (Writer* w : {a, b}) {
    if (w == nullptr) continue;
    // A follower may return (and its Writer go) as soon as it sees kDone; the
    // notify after it only wakes a futex address, never touches the object's
    // contents, and waiters re-check their word, so a stale wake is harmless.
    w->state.store(Writer::kDone, std::memory_order_release);
    FutexWake(w->state);
  }
}

bool CommitQueue::RunGroup(std::vector<Writer*>& group, bool sync) {
  if (!failed_.ok()) {
    for (Writer* w : group) w->status = failed_;
    return false;
  }
  rocksdb::WriteBatch batch;
  Staging staging(db_);
  bool any = false;
  for (Writer* w : group) {
    w->status = (*w->prepare)(staging);
    if (w->status.ok()) {
      staging.Keep(batch);
      any = true;
    } else {
      staging.Drop();
    }
  }
  if (!any || batch.Count() == 0) return false;
  // Refuse before RocksDB runs out of space: a WAL write that fails for lack
  // of space leaves its writer unusable (and Debian's librocksdb asserts).
  if (Status space = CheckSpace(batch.GetDataSize()); !space.ok()) {
    for (Writer* w : group)
      if (w->status.ok()) w->status = space;
    return false;
  }
  rocksdb::WriteOptions options;
  options.sync = sync;
  Status written = FromRocks(db_->Write(options, &batch), "writing the trajectory log");
  if (written.ok()) return true;
  failed_ = Status(written.code(),
                   written.message() +
                       "; the log refuses writes from now on: free space or fix the disk, then "
                       "restart paddockd (nothing acknowledged is lost)");
  for (Writer* w : group)
    if (w->status.ok()) w->status = written;
  return true;
}

Status CommitQueue::CheckSpace(uint64_t batch_bytes) const {
  if (space_dir_.empty() || reserve_bytes_ == 0) return Status::Ok();
  struct statvfs st;
  if (statvfs(space_dir_.c_str(), &st) != 0) return Status::Ok();  // cannot tell: let RocksDB decide
  uint64_t total = static_cast<uint64_t>(st.f_blocks) * st.f_frsize;
  uint64_t free = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  // A small filesystem keeps a quarter of itself in reserve instead.
  uint64_t reserve = std::min<uint64_t>(reserve_bytes_, total / 4);
  if (free >= batch_bytes + reserve) return Status::Ok();
  return Error(Code::kResourceExhausted,
               "the trajectory log's disk ({}) has {} bytes free, below the {} bytes it keeps in "
               "reserve; free space there (nothing acknowledged is lost)",
               space_dir_, free, reserve);
}

CommitStats CommitQueue::Stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace paddock::replay
