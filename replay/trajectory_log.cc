// TrajectoryLog on RocksDB: opening (with the checksum and format checks),
// the write-ahead call records, episode and step records.
#include <sys/stat.h>

#include <cstring>
#include <filesystem>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <rocksdb/cache.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <spdlog/spdlog.h>

#include "replay/log_impl.h"
#include "replay/rocks_status.h"

namespace paddock::replay {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

std::string ShortHash(const std::string& fingerprint) { return fingerprint.substr(0, 12); }

// Appends the deterministic serialization of `message` to `out`, sized once.
template <typename Proto>
void SerializeTo(const Proto& message, std::string& out) {
  const size_t size = message.ByteSizeLong();
  const size_t at = out.size();
  out.resize(at + size);
  google::protobuf::io::ArrayOutputStream stream(out.data() + at, static_cast<int>(size));
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeWithCachedSizes(&coded);
}

template <typename Proto>
std::string Serialize(const Proto& message) {
  std::string out;
  SerializeTo(message, out);
  return out;
}

// A call's result record, serialized.
std::string EncodeResult(const std::string& result) {
  v1::CallResultProto record;
  record.set_format_version(kLogFormatVersion);
  record.set_result(result);
  record.set_result_unix_ms(NowUnixMs());
  return Serialize(record);
}

// A step record with this build's format version, serialized.
std::string EncodeStep(const v1::StepRecordProto& step) {
  if (step.format_version() == kLogFormatVersion) return Serialize(step);
  if (step.format_version() == 0) {
    // Unset, so absent from the serialization. Field 1 comes first in a
    // serialization, so writing it ahead of the rest gives the bytes of a
    // copy with it set, without copying a step (its tokens and logprobs).
    static_assert(kLogFormatVersion < 128, "one varint byte");
    std::string out{char(v1::StepRecordProto::kFormatVersionFieldNumber << 3), char(kLogFormatVersion)};
    SerializeTo(step, out);
    return out;
  }
  v1::StepRecordProto copy = step;
  copy.set_format_version(kLogFormatVersion);
  return Serialize(copy);
}

// The episode part of a steps/intents/results key: the id and its 0x00.
// Keys without one (episodes, meta) are outside its domain.
class EpisodePrefix final : public rocksdb::SliceTransform {
 public:
  const char* Name() const override { return "paddock.EpisodePrefix"; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    const void* nul = std::memchr(key.data(), 0, key.size());
    return rocksdb::Slice(key.data(), static_cast<const char*>(nul) - key.data() + 1);
  }
  bool InDomain(const rocksdb::Slice& key) const override {
    return std::memchr(key.data(), 0, key.size()) != nullptr;
  }
};

}  // namespace

Result<std::unique_ptr<TrajectoryLog>> TrajectoryLog::Open(const LogOptions& options) {
  if (options.dir.empty()) return Error(Code::kInvalidArgument, "trajectory log directory is empty");
  if (options.create_if_missing) {
    std::error_code ec;
    std::filesystem::create_directories(options.dir, ec);
    if (ec) return ErrnoError(fmt::format("creating trajectory log directory {}", options.dir), ec.value());
    // Trajectories (prompts, tool output) are for the daemon's user only.
    if (::chmod(options.dir.c_str(), 0700) != 0)
      return ErrnoError(fmt::format("making trajectory log directory {} private", options.dir));
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.max_background_jobs = 2;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.keep_log_file_num = 4;
  // A write appends to RocksDB's WAL buffer; a synced write flushes it and
  // syncs. So a Durability::kDeferred record costs no system call, and is
  // lost with the process until a synced write carries it (which is all that
  // kDeferred promises).
  db_options.manual_wal_flush = true;

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(64 << 20);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  // Point lookups (fast-forward GetCall) find their key in a block by hash.
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.write_buffer_size = options.write_buffer_size;
  // A bloom filter over the memtable: the append-only checks of the commit
  // path look up keys that are mostly absent.
  cf_options.memtable_prefix_bloom_size_ratio = 0.05;
  cf_options.memtable_whole_key_filtering = true;
  cf_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // One episode's steps and calls are appended in key order: the memtable
  // keeps, per episode, where its last insert went and starts the next one
  // there instead of searching the whole skip list (the commit leader's
  // largest cost per write, bench/README.md "log_bench").
  cf_options.memtable_insert_with_hint_prefix_extractor = std::make_shared<EpisodePrefix>();

  std::vector<std::string> names;
  if (!rocksdb::DB::ListColumnFamilies(db_options, options.dir, &names).ok()) names.clear();
  for (const char* wanted : {rocksdb::kDefaultColumnFamilyName.c_str(), kMetaFamily, kEpisodesFamily,
                             kStepsFamily, kIntentsFamily, kResultsFamily}) {
    if (std::find(names.begin(), names.end(), wanted) == names.end()) names.push_back(wanted);
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& name : names) families.emplace_back(name, cf_options);

  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.dir, families, &handles, &db);
  if (!s.ok()) {
    if (!options.create_if_missing && s.IsInvalidArgument())
      return Error(Code::kNotFound, "no trajectory log at {}: {}", options.dir, s.ToString());
    return FromRocks(s, fmt::format("opening trajectory log at {}", options.dir));
  }
  auto log = std::make_unique<TrajectoryLogImpl>(options, db, std::move(handles));
  if (options.verify_checksums_on_open) {
    rocksdb::Status verified = db->VerifyChecksum();
    if (!verified.ok()) {
      if (!options.allow_corruption) {
        return Error(Code::kDataLoss,
                     "trajectory log at {} fails its checksum check: {}; `paddock log verify` "
                     "reports what is damaged, `paddock log restore` restores a backup, or open it "
                     "allowing corruption",
                     options.dir, verified.ToString());
      }
      spdlog::warn("trajectory log at {} fails its checksum check (opened anyway): {}", options.dir,
                   verified.ToString());
    }
  }
  PADDOCK_RETURN_IF_ERROR(log->CheckMeta());
  return std::unique_ptr<TrajectoryLog>(std::move(log));
}

TrajectoryLogImpl::TrajectoryLogImpl(LogOptions options, rocksdb::DB* db,
                                     std::vector<rocksdb::ColumnFamilyHandle*> handles)
    : options_(std::move(options)),
      db_(db),
      handles_(std::move(handles)),
      meta_(Family(kMetaFamily)),
      episodes_(Family(kEpisodesFamily)),
      steps_(Family(kStepsFamily)),
      intents_(Family(kIntentsFamily)),
      results_(Family(kResultsFamily)),
      commits_(db, options_.group_commit, options_.dir, options_.reserve_bytes, options_.deferred_writes) {}

TrajectoryLogImpl::~TrajectoryLogImpl() {
  commits_.Shutdown();  // asynchronous writes still queued are written first
  // Deferred records still in the WAL buffer: a clean close keeps them.
  rocksdb::Status flushed = db_->FlushWAL(/*sync=*/true);
  if (!flushed.ok()) spdlog::warn("flushing the WAL of trajectory log at {}: {}", options_.dir, flushed.ToString());
  for (rocksdb::ColumnFamilyHandle* handle : handles_) db_->DestroyColumnFamilyHandle(handle);
  rocksdb::Status s = db_->Close();
  if (!s.ok()) spdlog::warn("closing trajectory log at {}: {}", options_.dir, s.ToString());
  delete db_;
}

rocksdb::ColumnFamilyHandle* TrajectoryLogImpl::Family(const char* name) const {
  for (rocksdb::ColumnFamilyHandle* handle : handles_)
    if (handle->GetName() == name) return handle;
  return nullptr;  // unreachable: Open() opens every family
}

Status TrajectoryLogImpl::CheckMeta() {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta_, kMetaKey, &value);
  if (s.IsNotFound()) {
    v1::LogMetaProto meta;
    meta.set_format_version(kLogFormatVersion);
    meta.set_created_by(options_.created_by);
    meta.set_created_unix_ms(NowUnixMs());
    std::string encoded = Serialize(meta);
    return commits_.Commit([&](CommitQueue::Staging& staging) {
      staging.Put(meta_, kMetaKey, encoded);
      return Status::Ok();
    }).Prefix(fmt::format("creating trajectory log at {}", options_.dir));
  }
  if (!s.ok()) return FromRocks(s, fmt::format("reading the meta record of {}", options_.dir));
  v1::LogMetaProto meta;
  if (!meta.ParseFromString(value)) {
    if (options_.allow_corruption) return Status::Ok();
    return Error(Code::kDataLoss, "trajectory log at {}: the meta record does not decode", options_.dir);
  }
  if (meta.format_version() > kLogFormatVersion) {
    return Error(Code::kFailedPrecondition,
                 "trajectory log at {} has format version {} (written by '{}'); this build reads "
                 "versions up to {}: use a newer paddock",
                 options_.dir, meta.format_version(), meta.created_by(), kLogFormatVersion);
  }
  return Status::Ok();
}

// ---- Write-ahead call records ------------------------------------------------

Status TrajectoryLogImpl::PutIntent(const CallKey& key, const std::string& request_fingerprint,
                                    const std::string& request_summary, bool idempotent,
                                    const std::string& request, Durability durability) {
  PADDOCK_RETURN_IF_ERROR(key.Validate());
  const std::string k = key.Encode();
  v1::CallRecordProto record;
  record.set_format_version(kLogFormatVersion);
  record.set_request_fingerprint(request_fingerprint);
  record.set_request_summary(request_summary);
  record.set_idempotent(idempotent);
  record.set_intent_unix_ms(NowUnixMs());
  if (!request.empty()) record.set_request(request);
  std::string encoded = Serialize(record);
  return commits_.Commit(
      [&](CommitQueue::Staging& staging) -> Status {
        PADDOCK_ASSIGN_OR_RETURN(std::optional<std::string> existing, staging.Get(intents_, k));
        if (existing) {
          v1::CallRecordProto old;
          if (!old.ParseFromString(*existing))
            return Error(Code::kDataLoss, "the intent of call {} does not decode", key.ToString());
          if (old.request_fingerprint() != request_fingerprint) {
            return Error(Code::kAlreadyExists,
                         "call key {} is already used by another request: logged '{}' (sha256 {}…), "
                         "now '{}' (sha256 {}…); a new request needs a new key",
                         key.ToString(), old.request_summary(), ShortHash(old.request_fingerprint()),
                         request_summary, ShortHash(request_fingerprint));
          }
          return Status::Ok();  // the same request again: its intent is already logged
        }
        staging.Put(intents_, k, std::move(encoded));
        return Status::Ok();
      },
      durability == Durability::kSynced);
}

Status TrajectoryLogImpl::StageResult(CommitQueue::Staging& staging, const CallKey& key, const std::string& k,
                                      const std::string& result, std::string& encoded) {
  PADDOCK_ASSIGN_OR_RETURN(std::optional<std::string> intent, staging.Get(intents_, k));
  if (!intent) {
    return Error(Code::kFailedPrecondition,
                 "call {} has no intent logged: the intent must be durable before the call runs",
                 key.ToString());
  }
  PADDOCK_ASSIGN_OR_RETURN(std::optional<std::string> existing, staging.Get(results_, k));
  if (existing) {
    v1::CallResultProto old;
    if (!old.ParseFromString(*existing))
      return Error(Code::kDataLoss, "the result of call {} does not decode", key.ToString());
    if (old.result() == result) return Status::Ok();
    return Error(Code::kAlreadyExists,
                 "call {} already has a different result logged ({} bytes, now {} bytes): it "
                 "must not run twice",
                 key.ToString(), old.result().size(), result.size());
  }
  staging.Put(results_, k, std::move(encoded));
  return Status::Ok();
}

Status TrajectoryLogImpl::PutResult(const CallKey& key, const std::string& result, Durability durability) {
  PADDOCK_RETURN_IF_ERROR(key.Validate());
  const std::string k = key.Encode();
  std::string encoded = EncodeResult(result);
  return commits_.Commit(
      [&](CommitQueue::Staging& staging) { return StageResult(staging, key, k, result, encoded); },
      durability == Durability::kSynced);
}

Status TrajectoryLogImpl::PutResultAndStep(const CallKey& key, const std::string& result,
                                           const v1::StepRecordProto& step) {
  PADDOCK_RETURN_IF_ERROR(key.Validate());
  PADDOCK_RETURN_IF_ERROR(CallKey{step.episode_id()}.Validate());
  const std::string k = key.Encode();
  std::string encoded_result = EncodeResult(result);
  const std::string step_key = EncodeStepKey(step.episode_id(), step.step());
  std::string encoded_step = EncodeStep(step);
  // Staging keeps a writer's ops only when its Prepare returns OK, so a
  // failed step check drops the staged result too: all or nothing.
  return commits_.Commit([&](CommitQueue::Staging& staging) -> Status {
    PADDOCK_RETURN_IF_ERROR(StageResult(staging, key, k, result, encoded_result));
    return StageStep(staging, step.episode_id(), step.step(), step_key, encoded_step);
  });
}

Result<CallRecord> TrajectoryLogImpl::DecodeIntent(const CallKey& key, std::string_view value, bool with_request) {
  v1::CallRecordProto intent;
  if (!intent.ParseFromArray(value.data(), static_cast<int>(value.size())))
    return Error(Code::kDataLoss, "the intent of call {} does not decode", key.ToString());
  CallRecord record;
  record.request_fingerprint = std::move(*intent.mutable_request_fingerprint());
  record.request_summary = std::move(*intent.mutable_request_summary());
  record.idempotent = intent.idempotent();
  record.intent_unix_ms = intent.intent_unix_ms();
  if (with_request) record.request = std::move(*intent.mutable_request());
  return record;
}

Status TrajectoryLogImpl::ReadResult(const CallKey& key, const rocksdb::Slice& k, CallRecord& record) {
  rocksdb::PinnableSlice value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), results_, k, &value);
  if (s.IsNotFound()) return Status::Ok();
  if (!s.ok()) return FromRocks(s, fmt::format("reading the result of call {}", key.ToString()));
  v1::CallResultProto result;
  if (!result.ParseFromArray(value.data(), static_cast<int>(value.size())))
    return Error(Code::kDataLoss, "the result of call {} does not decode", key.ToString());
  record.has_result = true;
  record.result = std::move(*result.mutable_result());
  record.result_unix_ms = result.result_unix_ms();
  return Status::Ok();
}

Result<std::optional<CallRecord>> TrajectoryLogImpl::GetCall(const CallKey& key) {
  PADDOCK_RETURN_IF_ERROR(key.Validate());
  const std::string k = key.Encode();
  rocksdb::PinnableSlice value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), intents_, k, &value);
  if (s.IsNotFound()) return std::optional<CallRecord>();
  if (!s.ok()) return FromRocks(s, fmt::format("reading the intent of call {}", key.ToString()));
  PADDOCK_ASSIGN_OR_RETURN(CallRecord record, DecodeIntent(key, value.ToStringView(), false));
  PADDOCK_RETURN_IF_ERROR(ReadResult(key, k, record));
  return std::optional<CallRecord>(std::move(record));
}

Result<std::vector<std::pair<CallKey, CallRecord>>> TrajectoryLogImpl::ListCalls(const std::string& episode) {
  PADDOCK_RETURN_IF_ERROR(CallKey{episode}.Validate());
  const std::string begin = EpisodeBegin(episode), end = EpisodeEnd(episode);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read;
  read.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, intents_));
  std::vector<std::pair<CallKey, CallRecord>> out;
  for (it->Seek(begin); it->Valid(); it->Next()) {
    PADDOCK_ASSIGN_OR_RETURN(CallKey key, CallKey::Decode(it->key().ToStringView()));
    PADDOCK_ASSIGN_OR_RETURN(CallRecord record, DecodeIntent(key, it->value().ToStringView(), true));
    PADDOCK_RETURN_IF_ERROR(ReadResult(key, it->key(), record));
    out.emplace_back(std::move(key), std::move(record));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "listing calls");
  return out;
}

Result<std::vector<InDoubtCall>> TrajectoryLogImpl::InDoubtCalls(const std::string& episode) {
  PADDOCK_RETURN_IF_ERROR(CallKey{episode}.Validate());
  const std::string begin = EpisodeBegin(episode), end = EpisodeEnd(episode);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read;
  read.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, intents_));
  std::vector<InDoubtCall> out;
  for (it->Seek(begin); it->Valid(); it->Next()) {
    std::string ignored;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), results_, it->key(), &ignored);
    if (s.ok()) continue;
    if (!s.IsNotFound()) return FromRocks(s, "reading call results");
    PADDOCK_ASSIGN_OR_RETURN(CallKey key, CallKey::Decode(it->key().ToStringView()));
    PADDOCK_ASSIGN_OR_RETURN(CallRecord intent, DecodeIntent(key, it->value().ToStringView(), false));
    out.push_back({std::move(key), std::move(intent.request_summary), intent.idempotent, intent.intent_unix_ms});
  }
  if (!it->status().ok()) return FromRocks(it->status(), "listing intents");
  return out;
}

// ---- Episodes and steps ------------------------------------------------------

Status TrajectoryLogImpl::PutEpisode(const v1::EpisodeRecordProto& episode) {
  PADDOCK_RETURN_IF_ERROR(CallKey{episode.episode_id()}.Validate());
  v1::EpisodeRecordProto record = episode;
  record.set_format_version(kLogFormatVersion);
  int64_t now = NowUnixMs();
  if (record.created_unix_ms() == 0) record.set_created_unix_ms(now);
  if (record.updated_unix_ms() == 0) record.set_updated_unix_ms(now);
  std::string encoded = Serialize(record);
  return commits_.Commit([&](CommitQueue::Staging& staging) {
    staging.Put(episodes_, record.episode_id(), std::move(encoded));
    return Status::Ok();
  });
}

Result<std::optional<v1::EpisodeRecordProto>> TrajectoryLogImpl::GetEpisode(const std::string& id) {
  PADDOCK_RETURN_IF_ERROR(CallKey{id}.Validate());
  rocksdb::PinnableSlice value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), episodes_, id, &value);
  if (s.IsNotFound()) return std::optional<v1::EpisodeRecordProto>();
  if (!s.ok()) return FromRocks(s, fmt::format("reading episode {}", id));
  v1::EpisodeRecordProto record;
  if (!record.ParseFromArray(value.data(), static_cast<int>(value.size())))
    return Error(Code::kDataLoss, "the record of episode {} does not decode", id);
  return std::optional<v1::EpisodeRecordProto>(std::move(record));
}

Result<std::vector<v1::EpisodeRecordProto>> TrajectoryLogImpl::ListEpisodes(
    const ListEpisodesOptions& options) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), episodes_));
  std::vector<v1::EpisodeRecordProto> out;
  std::string start = options.prefix;
  if (!options.start_after.empty()) start = std::max(start, options.start_after + std::string(1, '\0'));
  for (it->Seek(start); it->Valid(); it->Next()) {
    if (!it->key().starts_with(options.prefix)) break;
    v1::EpisodeRecordProto record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
      return Error(Code::kDataLoss, "the record of episode {} does not decode", it->key().ToString());
    out.push_back(std::move(record));
    if (options.limit != 0 && out.size() >= options.limit) break;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "listing episodes");
  return out;
}

Status TrajectoryLogImpl::StageStep(CommitQueue::Staging& staging, const std::string& episode, uint64_t step,
                                    const std::string& k, std::string& encoded) {
  PADDOCK_ASSIGN_OR_RETURN(std::optional<std::string> existing, staging.Get(steps_, k));
  if (existing) {
    if (*existing == encoded) return Status::Ok();
    return Error(Code::kAlreadyExists,
                 "step {} of episode {} is already logged with other content ({} bytes, now {} "
                 "bytes): steps are append-only",
                 step, episode, existing->size(), encoded.size());
  }
  staging.Put(steps_, k, std::move(encoded));
  return Status::Ok();
}

Status TrajectoryLogImpl::AppendStep(const v1::StepRecordProto& step) {
  PADDOCK_RETURN_IF_ERROR(CallKey{step.episode_id()}.Validate());
  const std::string k = EncodeStepKey(step.episode_id(), step.step());
  std::string encoded = EncodeStep(step);
  return commits_.Commit(
      [&](CommitQueue::Staging& staging) { return StageStep(staging, step.episode_id(), step.step(), k, encoded); });
}

namespace {
// A step as a queued write keeps it: its key and encoding, and what names it
// in messages. The step itself is freed by the caller, not on the thread
// that writes the group.
struct QueuedStep {
  explicit QueuedStep(v1::StepRecordProto& s)
      : step(s.step()), key(EncodeStepKey(s.episode_id(), s.step())), encoded(EncodeStep(s)),
        episode(std::move(*s.mutable_episode_id())) {}
  uint64_t step;
  std::string key, encoded, episode;
};
}  // namespace

void TrajectoryLogImpl::AppendStepAsync(v1::StepRecordProto step, Done done) {
  if (Status valid = CallKey{step.episode_id()}.Validate(); !valid.ok()) return done(std::move(valid));
  auto p = std::make_shared<QueuedStep>(step);  // the Prepare outlives this call
  commits_.CommitAsync(
      [this, p](CommitQueue::Staging& staging) { return StageStep(staging, p->episode, p->step, p->key, p->encoded); },
      std::move(done));
}

void TrajectoryLogImpl::PutResultAndStepAsync(const CallKey& key, std::string result, v1::StepRecordProto step,
                                              Done done) {
  if (Status valid = key.Validate(); !valid.ok()) return done(std::move(valid));
  if (Status valid = CallKey{step.episode_id()}.Validate(); !valid.ok()) return done(std::move(valid));
  struct Pending {
    CallKey key;
    std::string k, result, encoded_result;
    QueuedStep step;
  };
  auto p = std::make_shared<Pending>(Pending{key, key.Encode(), {}, EncodeResult(result), QueuedStep(step)});
  p->result = std::move(result);
  commits_.CommitAsync(
      [this, p](CommitQueue::Staging& staging) -> Status {
        PADDOCK_RETURN_IF_ERROR(StageResult(staging, p->key, p->k, p->result, p->encoded_result));
        return StageStep(staging, p->step.episode, p->step.step, p->step.key, p->step.encoded);
      },
      std::move(done));
}

Result<std::vector<v1::StepRecordProto>> TrajectoryLogImpl::ReadSteps(const std::string& episode,
                                                                      uint64_t from_step,
                                                                      uint64_t limit) {
  PADDOCK_RETURN_IF_ERROR(CallKey{episode}.Validate());
  const std::string begin = EncodeStepKey(episode, from_step), end = EpisodeEnd(episode);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read;
  read.iterate_upper_bound = &upper;
  read.readahead_size = 2 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, steps_));
  std::vector<v1::StepRecordProto> out;
  for (it->Seek(begin); it->Valid() && out.size() < limit; it->Next()) {
    v1::StepRecordProto& record = out.emplace_back();
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
      return Error(Code::kDataLoss, "step record of episode {} at key {} does not decode", episode,
                   it->key().ToString(true));
  }
  if (!it->status().ok()) return FromRocks(it->status(), fmt::format("reading steps of episode {}", episode));
  return out;
}

}  // namespace paddock::replay
