// Internal: the RocksDB-backed TrajectoryLog shared by trajectory_log.cc
// (open, calls, episodes, steps), maintenance.cc and export_jsonl.cc.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <rocksdb/db.h>

#include "replay/commit_queue.h"
#include "replay/trajectory_log.h"

namespace paddock::replay {

inline constexpr const char* kMetaFamily = "meta";
inline constexpr const char* kEpisodesFamily = "episodes";
inline constexpr const char* kStepsFamily = "steps";
inline constexpr const char* kIntentsFamily = "intents";
inline constexpr const char* kResultsFamily = "results";
inline constexpr const char* kMetaKey = "log";

int64_t NowUnixMs();

// [episode, 0x00) .. [episode, 0x01): every key of one episode in a family.
inline std::string EpisodeBegin(const std::string& episode) { return episode + std::string(1, '\0'); }
inline std::string EpisodeEnd(const std::string& episode) { return episode + std::string(1, '\1'); }

class TrajectoryLogImpl final : public TrajectoryLog {
 public:
  TrajectoryLogImpl(LogOptions options, rocksdb::DB* db,
                    std::vector<rocksdb::ColumnFamilyHandle*> handles);
  ~TrajectoryLogImpl() override;

  Status PutIntent(const CallKey& key, const std::string& request_fingerprint,
                   const std::string& request_summary, bool idempotent,
                   const std::string& request = {},
                   Durability durability = Durability::kSynced) override;
  Status PutResult(const CallKey& key, const std::string& result,
                   Durability durability = Durability::kSynced) override;
  Status PutResultAndStep(const CallKey& key, const std::string& result,
                          const v1::StepRecordProto& step) override;
  Result<std::optional<CallRecord>> GetCall(const CallKey& key) override;
  Result<std::vector<std::pair<CallKey, CallRecord>>> ListCalls(const std::string& episode) override;
  Result<std::vector<InDoubtCall>> InDoubtCalls(const std::string& episode) override;

  Status PutEpisode(const v1::EpisodeRecordProto& episode) override;
  Result<std::optional<v1::EpisodeRecordProto>> GetEpisode(const std::string& id) override;
  Result<std::vector<v1::EpisodeRecordProto>> ListEpisodes(const ListEpisodesOptions& options) override;
  Status AppendStep(const v1::StepRecordProto& step) override;
  void AppendStepAsync(v1::StepRecordProto step, Done done) override;
  void PutResultAndStepAsync(const CallKey& key, std::string result, v1::StepRecordProto step,
                             Done done) override;
  Result<std::vector<v1::StepRecordProto>> ReadSteps(const std::string& episode, uint64_t from_step,
                                                     uint64_t limit) override;
  Result<std::string> ExportEpisodeJsonl(const std::string& episode) override;

  Result<VerifyReport> Verify() override;
  Result<uint32_t> Backup(const std::string& backup_dir) override;
  Status Compact() override;
  Result<uint64_t> DeleteEpisodesOlderThan(std::chrono::milliseconds age) override;
  CommitStats GetCommitStats() const override { return commits_.Stats(); }

  // Set up after Open: checks or writes the meta record.
  Status CheckMeta();

  rocksdb::DB* db() { return db_; }

 private:
  rocksdb::ColumnFamilyHandle* Family(const char* name) const;
  // The append-only checks of PutResult and AppendStep, staging the record
  // (moved from `encoded`) when they pass. `k` is the record's key.
  Status StageResult(CommitQueue::Staging& staging, const CallKey& key, const std::string& k,
                     const std::string& result, std::string& encoded);
  // `episode` and `step` name the step in messages; `k` is its key.
  Status StageStep(CommitQueue::Staging& staging, const std::string& episode, uint64_t step, const std::string& k,
                   std::string& encoded);
  // A logged intent as a CallRecord (`with_request`: also the request's own
  // bytes, which fast-forward does not need), then its result, if logged, read
  // from the results family under the same key `k`.
  Result<CallRecord> DecodeIntent(const CallKey& key, std::string_view value, bool with_request);
  Status ReadResult(const CallKey& key, const rocksdb::Slice& k, CallRecord& record);
  // Whether episode `id` has a call (intent or result) or a last step logged
  // at or after `cutoff` (unix ms): retention keeps it.
  Result<bool> ActiveSince(const std::string& id, int64_t cutoff);

  LogOptions options_;
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* meta_;
  rocksdb::ColumnFamilyHandle* episodes_;
  rocksdb::ColumnFamilyHandle* steps_;
  rocksdb::ColumnFamilyHandle* intents_;
  rocksdb::ColumnFamilyHandle* results_;
  mutable CommitQueue commits_;
};

}  // namespace paddock::replay
