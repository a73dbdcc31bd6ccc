// Maintenance of the trajectory log: verify, backup/restore (RocksDB
// BackupEngine), compaction and retention by age. The library side of
// `paddock log verify|backup|restore|compact`.
#include <sys/stat.h>

#include <filesystem>
#include <regex>
#include <set>

#include <rocksdb/utilities/backup_engine.h>
#include <spdlog/spdlog.h>

#include "replay/log_impl.h"
#include "replay/rocks_status.h"

namespace paddock::replay {
namespace {

constexpr size_t kMaxProblems = 100;

void AddProblem(VerifyReport& report, std::string line) {
  if (report.problems.size() < kMaxProblems) report.problems.push_back(std::move(line));
}

// The files RocksDB names in a corruption message ("... in /db/000012.sst offset ...").
std::vector<std::string> FilesNamedIn(const std::string& message) {
  static const std::regex kFile(R"(([^\s:]*[0-9]+\.(sst|blob|log)))");
  std::set<std::string> files;
  for (auto it = std::sregex_iterator(message.begin(), message.end(), kFile);
       it != std::sregex_iterator(); ++it)
    files.insert((*it)[1].str());
  return {files.begin(), files.end()};
}

void NoteCorruption(VerifyReport& report, const rocksdb::Status& s) {
  report.checksums_ok = false;
  if (report.checksum_error.empty()) report.checksum_error = s.ToString();
  for (std::string& file : FilesNamedIn(s.ToString()))
    if (std::find(report.corrupt_files.begin(), report.corrupt_files.end(), file) ==
        report.corrupt_files.end())
      report.corrupt_files.push_back(std::move(file));
}

// Decodes every record of one family, counting them and noting those at fault.
template <typename Proto>
uint64_t ScanFamily(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, const char* what,
                    VerifyReport& report) {
  uint64_t count = 0;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ++count;
    Proto record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      ++report.undecodable_records;
      AddProblem(report, fmt::format("{} record at key {} does not decode", what, it->key().ToString(true)));
    } else if (record.format_version() > kLogFormatVersion) {
      report.format_ok = false;
      AddProblem(report, fmt::format("{} record at key {} has format version {} (this build: {})", what,
                                     it->key().ToString(true), record.format_version(), kLogFormatVersion));
    }
  }
  if (!it->status().ok()) {
    if (it->status().IsCorruption()) NoteCorruption(report, it->status());
    AddProblem(report, fmt::format("reading {} records: {}", what, it->status().ToString()));
  }
  return count;
}

}  // namespace

std::string VerifyReport::ToString() const {
  std::string out;
  out += fmt::format("checksums: {}\n", checksums_ok ? "ok" : "FAILED: " + checksum_error);
  for (const std::string& file : corrupt_files) out += fmt::format("  corrupt file: {}\n", file);
  out += fmt::format("format version: {}{}\n", format_version,
                     format_ok ? "" : " (" + (format_error.empty() ? "records newer than this build" : format_error) + ")");
  out += fmt::format("records: {} episodes, {} steps, {} intents, {} results\n", episodes, steps, intents,
                     results);
  if (undecodable_records) out += fmt::format("undecodable records: {}\n", undecodable_records);
  if (results_without_intent) out += fmt::format("results without an intent: {}\n", results_without_intent);
  out += fmt::format("in-doubt calls (intent, no result): {}\n", in_doubt.size());
  for (const InDoubtCall& call : in_doubt)
    out += fmt::format("  {} {}{}\n", call.key.ToString(), call.request_summary,
                       call.idempotent ? " [idempotent]" : "");
  for (const std::string& problem : problems) out += fmt::format("problem: {}\n", problem);
  out += ok() ? "verdict: ok\n" : "verdict: DAMAGED\n";
  return out;
}

Result<VerifyReport> TrajectoryLogImpl::Verify() {
  VerifyReport report;
  rocksdb::Status checked = db_->VerifyChecksum();
  if (!checked.ok()) {
    if (!checked.IsCorruption()) return FromRocks(checked, "verifying checksums");
    NoteCorruption(report, checked);
  }

  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta_, kMetaKey, &value);
  v1::LogMetaProto meta;
  if (s.IsNotFound()) {
    report.format_ok = false;
    report.format_error = "no meta record";
  } else if (!s.ok()) {
    if (s.IsCorruption()) NoteCorruption(report, s);
    report.format_ok = false;
    report.format_error = "meta record unreadable: " + s.ToString();
  } else if (!meta.ParseFromString(value)) {
    report.format_ok = false;
    report.format_error = "meta record does not decode";
    ++report.undecodable_records;
  } else {
    report.format_version = meta.format_version();
    if (meta.format_version() == 0 || meta.format_version() > kLogFormatVersion) {
      report.format_ok = false;
      report.format_error = fmt::format("version {} is not one this build reads (1..{})",
                                        meta.format_version(), kLogFormatVersion);
    }
  }

  report.episodes = ScanFamily<v1::EpisodeRecordProto>(db_, episodes_, "episode", report);
  report.steps = ScanFamily<v1::StepRecordProto>(db_, steps_, "step", report);
  report.results = ScanFamily<v1::CallResultProto>(db_, results_, "result", report);
  report.intents = ScanFamily<v1::CallRecordProto>(db_, intents_, "intent", report);

  // Orphans: walk intents and results side by side (same keys, same order).
  std::unique_ptr<rocksdb::Iterator> intent(db_->NewIterator(rocksdb::ReadOptions(), intents_));
  std::unique_ptr<rocksdb::Iterator> result(db_->NewIterator(rocksdb::ReadOptions(), results_));
  intent->SeekToFirst();
  result->SeekToFirst();
  while (intent->Valid()) {
    int order = result->Valid() ? intent->key().compare(result->key()) : -1;
    if (order > 0) {  // a result with no intent
      ++report.results_without_intent;
      auto key = CallKey::Decode(result->key().ToStringView());
      AddProblem(report, fmt::format("result without an intent: {}",
                                     key.ok() ? key->ToString() : result->key().ToString(true)));
      result->Next();
      continue;
    }
    if (order < 0) {
      auto key = CallKey::Decode(intent->key().ToStringView());
      v1::CallRecordProto record;
      record.ParseFromArray(intent->value().data(), static_cast<int>(intent->value().size()));
      if (key.ok()) {
        report.in_doubt.push_back(
            {std::move(key.value()), record.request_summary(), record.idempotent(), record.intent_unix_ms()});
      } else {
        AddProblem(report, fmt::format("intent key {} is not a call key", intent->key().ToString(true)));
      }
    } else {
      result->Next();
    }
    intent->Next();
  }
  for (; result->Valid(); result->Next()) {
    ++report.results_without_intent;
    auto key = CallKey::Decode(result->key().ToStringView());
    AddProblem(report, fmt::format("result without an intent: {}",
                                   key.ok() ? key->ToString() : result->key().ToString(true)));
  }
  for (rocksdb::Iterator* it : {intent.get(), result.get()}) {
    if (!it->status().ok()) {
      if (it->status().IsCorruption()) NoteCorruption(report, it->status());
      AddProblem(report, fmt::format("matching intents and results: {}", it->status().ToString()));
    }
  }
  return report;
}

Result<VerifyReport> TrajectoryLog::VerifyAt(const std::string& dir) {
  LogOptions options;
  options.dir = dir;
  options.create_if_missing = false;
  options.allow_corruption = true;
  PADDOCK_ASSIGN_OR_RETURN(std::unique_ptr<TrajectoryLog> log, Open(options));
  return log->Verify();
}

Result<uint32_t> TrajectoryLogImpl::Backup(const std::string& backup_dir) {
  // Trajectories are for the daemon's user only, in a backup as in the log.
  std::error_code ec;
  std::filesystem::create_directories(backup_dir, ec);
  if (ec) return ErrnoError(fmt::format("creating backup directory {}", backup_dir), ec.value());
  if (::chmod(backup_dir.c_str(), 0700) != 0) return ErrnoError(fmt::format("making {} private", backup_dir));
  rocksdb::BackupEngine* raw = nullptr;
  rocksdb::IOStatus s =
      rocksdb::BackupEngine::Open(rocksdb::Env::Default(), rocksdb::BackupEngineOptions(backup_dir), &raw);
  if (!s.ok()) return FromRocks(s, fmt::format("opening backup directory {}", backup_dir));
  std::unique_ptr<rocksdb::BackupEngine> engine(raw);
  rocksdb::CreateBackupOptions create;
  create.flush_before_backup = true;
  rocksdb::BackupID id = 0;
  s = engine->CreateNewBackup(create, db_, &id);
  if (!s.ok()) return FromRocks(s, fmt::format("backing up {} into {}", options_.dir, backup_dir));
  s = engine->VerifyBackup(id, /*verify_with_checksum=*/true);
  if (!s.ok()) return FromRocks(s, fmt::format("verifying backup {} in {}", id, backup_dir));
  return static_cast<uint32_t>(id);
}

Status TrajectoryLog::Restore(const std::string& backup_dir, const std::string& db_dir) {
  rocksdb::BackupEngineReadOnly* raw = nullptr;
  rocksdb::IOStatus s = rocksdb::BackupEngineReadOnly::Open(
      rocksdb::Env::Default(), rocksdb::BackupEngineOptions(backup_dir), &raw);
  if (!s.ok()) return FromRocks(s, fmt::format("opening backup directory {}", backup_dir));
  std::unique_ptr<rocksdb::BackupEngineReadOnly> engine(raw);
  std::vector<rocksdb::BackupInfo> backups;
  engine->GetBackupInfo(&backups);
  if (backups.empty())
    return Error(Code::kNotFound, "no backups in {}; `paddock log backup DIR` makes one", backup_dir);
  s = engine->RestoreDBFromLatestBackup(rocksdb::RestoreOptions(), db_dir, db_dir);
  if (!s.ok()) return FromRocks(s, fmt::format("restoring {} from {}", db_dir, backup_dir));
  return Status::Ok();
}

Status TrajectoryLogImpl::Compact() {
  rocksdb::CompactRangeOptions options;
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  for (rocksdb::ColumnFamilyHandle* cf : handles_) {
    rocksdb::Status s = db_->CompactRange(options, cf, nullptr, nullptr);
    if (!s.ok()) return FromRocks(s, fmt::format("compacting column family {}", cf->GetName()));
  }
  return Status::Ok();
}

Result<bool> TrajectoryLogImpl::ActiveSince(const std::string& id, int64_t cutoff) {
  const std::string begin = EpisodeBegin(id), end = EpisodeEnd(id);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read;
  read.iterate_upper_bound = &upper;
  // Calls: an intent's time, and its result's (a long call finishes later).
  for (rocksdb::ColumnFamilyHandle* cf : {intents_, results_}) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, cf));
    for (it->Seek(begin); it->Valid(); it->Next()) {
      int64_t at = 0;
      if (cf == intents_) {
        v1::CallRecordProto intent;
        if (intent.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
          at = intent.intent_unix_ms();
      } else {
        v1::CallResultProto result;
        if (result.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
          at = result.result_unix_ms();
      }
      if (at >= cutoff) return true;
    }
    if (!it->status().ok()) return FromRocks(it->status(), fmt::format("reading the calls of episode {}", id));
  }
  // Steps: the last one is the newest; it started at started_unix_ms and
  // was logged total_us later.
  rocksdb::Slice lower(begin);
  rocksdb::ReadOptions read_steps;
  read_steps.iterate_lower_bound = &lower;
  read_steps.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_steps, steps_));
  it->SeekForPrev(end);
  if (it->Valid()) {
    v1::StepRecordProto step;
    if (step.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) &&
        step.timings().started_unix_ms() + step.timings().total_us() / 1000 >= cutoff)
      return true;
  }
  if (!it->status().ok()) return FromRocks(it->status(), fmt::format("reading the steps of episode {}", id));
  return false;
}

Result<uint64_t> TrajectoryLogImpl::DeleteEpisodesOlderThan(std::chrono::milliseconds age) {
  const int64_t cutoff = NowUnixMs() - age.count();
  // Candidates: episodes whose record is older than the cutoff.
  std::vector<std::string> old;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), episodes_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    v1::EpisodeRecordProto record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      spdlog::warn("retention: episode record at {} does not decode; kept", it->key().ToString(true));
      continue;
    }
    if (record.updated_unix_ms() < cutoff) old.push_back(it->key().ToString());
  }
  if (!it->status().ok()) return FromRocks(it->status(), "listing episodes for retention");
  // Each candidate's other records are checked inside the commit, so a call
  // or step logged since the listing (even earlier in the same group) keeps
  // its episode. A few episodes per commit bound how long other writers wait.
  constexpr size_t kPerCommit = 32;
  uint64_t deleted = 0;
  for (size_t from = 0; from < old.size(); from += kPerCommit) {
    size_t to = std::min(old.size(), from + kPerCommit);
    uint64_t now_deleted = 0;
    PADDOCK_RETURN_IF_ERROR(commits_.Commit([&](CommitQueue::Staging& staging) -> Status {
      now_deleted = 0;
      for (size_t i = from; i < to; ++i) {
        const std::string& id = old[i];
        PADDOCK_ASSIGN_OR_RETURN(std::optional<std::string> value, staging.Get(episodes_, id));
        v1::EpisodeRecordProto record;
        if (!value || !record.ParseFromString(*value) || record.updated_unix_ms() >= cutoff) continue;
        const std::string begin = EpisodeBegin(id), end = EpisodeEnd(id);
        if (staging.PutsInRange(steps_, begin, end) || staging.PutsInRange(intents_, begin, end) ||
            staging.PutsInRange(results_, begin, end))
          continue;
        PADDOCK_ASSIGN_OR_RETURN(bool active, ActiveSince(id, cutoff));
        if (active) continue;
        staging.Delete(episodes_, id);
        for (rocksdb::ColumnFamilyHandle* cf : {steps_, intents_, results_}) staging.DeleteRange(cf, begin, end);
        ++now_deleted;
      }
      return Status::Ok();
    }));
    deleted += now_deleted;
  }
  return deleted;
}

}  // namespace paddock::replay
