#include "replay/commit_queue.h"

#include "replay/rocks_status.h"

namespace paddock::replay {

Result<std::optional<std::string>> CommitQueue::Staging::Get(rocksdb::ColumnFamilyHandle* cf,
                                                             const std::string& key) {
  // This writer's own ops first (latest wins), then the group's, then the DB.
  for (auto it = ops_.rbegin(); it != ops_.rend(); ++it) {
    if (it->cf != cf || it->kind == Op::kDeleteRange || it->key != key) continue;
    if (it->kind == Op::kDelete) return std::optional<std::string>();
    return std::optional<std::string>(it->value);
  }
  auto found = overlay_.find({cf->GetID(), key});
  if (found != overlay_.end()) return found->second;
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

void CommitQueue::Staging::Keep(rocksdb::WriteBatch& batch) {
  for (Op& op : ops_) {
    switch (op.kind) {
      case Op::kPut:
        batch.Put(op.cf, op.key, op.value);
        overlay_[{op.cf->GetID(), op.key}] = std::move(op.value);
        break;
      case Op::kDelete:
        batch.Delete(op.cf, op.key);
        overlay_[{op.cf->GetID(), op.key}] = std::nullopt;
        break;
      case Op::kDeleteRange:
        batch.DeleteRange(op.cf, op.key, op.value);
        break;
    }
  }
  ops_.clear();
}

Status CommitQueue::Commit(const Prepare& prepare) {
  Writer self{&prepare};
  std::unique_lock lock(mu_);
  std::vector<Writer*> group;
  if (group_commit_) {
    queue_.push_back(&self);
    cv_.wait(lock, [&] { return self.done || !leader_active_; });
    if (self.done) return std::move(self.status);
    // Leader: take every queued write, ours included.
    group.swap(queue_);
  } else {
    // One sync per write, one write at a time.
    cv_.wait(lock, [&] { return !leader_active_; });
    group.push_back(&self);
  }
  leader_active_ = true;
  lock.unlock();
  bool synced = RunGroup(group);
  lock.lock();
  stats_.writes += group.size();
  if (synced) stats_.syncs += 1;
  stats_.max_group = std::max<uint64_t>(stats_.max_group, group.size());
  for (Writer* w : group) w->done = true;
  leader_active_ = false;
  cv_.notify_all();
  return std::move(self.status);
}

bool CommitQueue::RunGroup(std::vector<Writer*>& group) {
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
  rocksdb::WriteOptions options;
  options.sync = true;
  Status written = FromRocks(db_->Write(options, &batch), "writing the trajectory log");
  if (written.ok()) return true;
  for (Writer* w : group)
    if (w->status.ok()) w->status = written;
  return true;
}

CommitStats CommitQueue::Stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace paddock::replay
