// The trajectory log: one RocksDB database per daemon, column families per
// record kind, protobuf records (proto/trajectory.proto). Every write that a
// caller is told about is durable (WAL synced) first; concurrent writers share
// syncs (group commit).
//
// Column families and keys:
//   meta      "log"                             LogMetaProto (format version, created-by)
//   episodes  episode id                        EpisodeRecordProto
//   steps     episode id, 0x00, be u64 step     StepRecordProto
//   intents   CallKey::Encode()                 CallRecordProto
//   results   CallKey::Encode()                 CallResultProto
// CallKey::Encode() is: episode id bytes, 0x00, big-endian u64 step,
// big-endian u32 call, so one episode's records are contiguous and ordered by
// (step, call). Episode ids are non-empty and contain no NUL byte.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "trajectory.pb.h"

namespace paddock::replay {

// The layout version of the records this build writes (see trajectory.proto).
inline constexpr uint32_t kLogFormatVersion = 1;

// When a write returns (see docs/trajectory-log.md, "Durability").
enum class Durability {
  // Once the WAL is synced (fdatasync): the record survives a crash.
  kSynced,
  // Once the record is in the log (its checks passed, readable), without
  // waiting for a sync. The WAL is one sequential file, so the record becomes
  // durable with the next synced write of this log, whoever makes it; a crash
  // before that loses it (and never loses it while keeping a later record).
  // For records whose loss is harmless: a policy call asked again, a result
  // followed by a synced write before anything depends on it.
  kDeferred,
};

// Identifies one side-effecting call: (episode, step, call index).
struct CallKey {
  std::string episode;
  uint64_t step = 0;
  uint32_t call = 0;
  std::string Encode() const;           // the RocksDB key
  std::string ToString() const;         // "EPISODE:STEP:CALL" for messages
  // From "EPISODE:STEP:CALL". Episode ids may contain ':': the LAST two ':'
  // separate step and call, so "run:7:3:0" is episode "run:7", step 3, call 0.
  // STEP is a decimal u64, CALL a decimal u32; errors name the part at fault.
  static Result<CallKey> Parse(const std::string& text);
  // From Encode()'s bytes (DATA_LOSS if they are not such a key).
  static Result<CallKey> Decode(std::string_view bytes);
  // OK when the episode id is non-empty and has no NUL byte.
  Status Validate() const;
};

// The RocksDB key of one step: episode id, 0x00, big-endian u64 step.
std::string EncodeStepKey(const std::string& episode, uint64_t step);

// Lower-case hex sha256 of a canonical request: a CallRecord's request_fingerprint.
std::string RequestFingerprint(std::string_view canonical_request);

struct LogOptions {
  std::string dir;                 // created if missing
  bool create_if_missing = true;
  // Refuse to open a database that fails its checks unless this is set.
  bool allow_corruption = false;
  // Read every SST file at Open and check its block checksums (the check that
  // `allow_corruption` skips refusing on). Costs one read of the database.
  bool verify_checksums_on_open = true;
  // Concurrent writers share one WAL sync (the default). When false every
  // write is synced on its own, one after the other (for comparison).
  bool group_commit = true;
  // Durability::kDeferred writes skip the sync wait (the default). When false
  // they are synced like every other write (for comparison).
  bool deferred_writes = true;
  // Written into the meta record of a database this process creates.
  std::string created_by = "paddock";
  // RocksDB memtable size; small values suit tests on tiny filesystems.
  size_t write_buffer_size = 64 << 20;
  // Writes are refused (RESOURCE_EXHAUSTED) when fewer bytes than this would
  // stay free on the log's filesystem (a quarter of a smaller filesystem):
  // room for memtable flushes, so RocksDB itself never hits a full disk.
  // 0: no check.
  uint64_t reserve_bytes = 2 * (64ull << 20) + (16ull << 20);
};

// What the log holds for one call. `request_fingerprint` is a sha256 over
// the canonical request, so a key reused with another request is caught.
struct CallRecord {
  std::string request_fingerprint;
  std::string request_summary;     // human-readable, for error messages
  bool idempotent = false;         // the caller said it may run twice
  bool has_result = false;
  std::string result;              // the serialized response, byte for byte
  int64_t intent_unix_ms = 0;
  int64_t result_unix_ms = 0;
  // The serialized request, when the intent kept one (idempotent sandbox
  // calls; see PutIntent). Filled by ListCalls only: GetCall, the fast-forward
  // path, leaves it empty.
  std::string request;
};

// A call with an intent but no result: it may or may not have run.
struct InDoubtCall {
  CallKey key;
  std::string request_summary;
  bool idempotent = false;
  int64_t intent_unix_ms = 0;
};

// What Verify() found. In-doubt calls are not errors (a killed daemon leaves
// them); ok() is about the database's integrity.
struct VerifyReport {
  bool checksums_ok = true;
  std::string checksum_error;              // RocksDB's message, naming the file
  std::vector<std::string> corrupt_files;  // the SST/blob files named in it
  uint32_t format_version = 0;             // from the meta record
  bool format_ok = true;
  std::string format_error;
  uint64_t episodes = 0, steps = 0, intents = 0, results = 0;
  std::vector<InDoubtCall> in_doubt;       // orphan intents, in key order
  uint64_t results_without_intent = 0;
  uint64_t undecodable_records = 0;
  std::vector<std::string> problems;       // one line per record at fault (first 100)

  bool ok() const {
    return checksums_ok && format_ok && undecodable_records == 0 && results_without_intent == 0;
  }
  std::string ToString() const;            // a multi-line summary for `paddock log verify`
};

// Counters of the commit path. `syncs` counts WAL syncs; with group commit
// under load it is far below `writes`.
struct CommitStats {
  uint64_t writes = 0;      // write requests acknowledged or failed
  uint64_t syncs = 0;       // synced RocksDB writes (one per group)
  uint64_t deferred = 0;    // of `writes`, those that asked for Durability::kDeferred
  uint64_t async = 0;       // of `writes`, asynchronous appends (no thread waited on them)
  uint64_t max_group = 0;   // the most writes one sync carried
};

struct ListEpisodesOptions {
  std::string prefix;        // only ids starting with this
  std::string start_after;   // resume a listing after this id
  size_t limit = 0;          // 0: all
};

class TrajectoryLog {
 public:
  // Opens or creates the database in options.dir. Errors: DATA_LOSS naming the
  // file when a checksum fails (unless options.allow_corruption),
  // FAILED_PRECONDITION for a format version newer than this build's,
  // UNAVAILABLE when another process holds it, RESOURCE_EXHAUSTED when the
  // disk is full.
  static Result<std::unique_ptr<TrajectoryLog>> Open(const LogOptions& options);
  virtual ~TrajectoryLog() = default;

  // Write-ahead protocol. Each returns only once the record is durable
  // (unless asked for Durability::kDeferred).
  // PutIntent: ALREADY_EXISTS when the key has an intent for another request
  // fingerprint (the message names both requests); the same fingerprint again
  // is accepted (an in-doubt idempotent call re-run).
  // `request`: the serialized request, kept with the intent so a rebuilt
  // sandbox can run the call again (only idempotent sandbox calls pass it).
  virtual Status PutIntent(const CallKey& key, const std::string& request_fingerprint,
                           const std::string& request_summary, bool idempotent,
                           const std::string& request = {},
                           Durability durability = Durability::kSynced) = 0;
  // PutResult: FAILED_PRECONDITION without an intent; ALREADY_EXISTS when the
  // key has a different result already (the same bytes again are accepted).
  virtual Status PutResult(const CallKey& key, const std::string& result,
                           Durability durability = Durability::kSynced) = 0;
  // A call's result and the step record that holds it, in one synced write:
  // both are logged or neither is. The checks of PutResult and AppendStep
  // both apply; an error from either leaves both unwritten.
  virtual Status PutResultAndStep(const CallKey& key, const std::string& result,
                                  const v1::StepRecordProto& step) = 0;
  // nullopt when the key has no intent.
  virtual Result<std::optional<CallRecord>> GetCall(const CallKey& key) = 0;
  // Calls of one episode with an intent but no result, in key order.
  virtual Result<std::vector<InDoubtCall>> InDoubtCalls(const std::string& episode) = 0;
  // Every call of one episode (intent, and result when logged), in key order,
  // with the kept request. For rebuilding an episode's sandbox.
  virtual Result<std::vector<std::pair<CallKey, CallRecord>>> ListCalls(const std::string& episode) = 0;

  // Episode records (rollout engine). PutEpisode inserts or replaces; it fills
  // format_version, and created_unix_ms/updated_unix_ms when they are 0.
  virtual Status PutEpisode(const v1::EpisodeRecordProto& episode) = 0;
  virtual Result<std::optional<v1::EpisodeRecordProto>> GetEpisode(const std::string& id) = 0;
  virtual Result<std::vector<v1::EpisodeRecordProto>> ListEpisodes(
      const ListEpisodesOptions& options = {}) = 0;
  // Steps are append-only: ALREADY_EXISTS when the step is logged with other
  // content (the same content again is accepted, so a resumed episode may
  // re-append). Durable before it returns.
  virtual Status AppendStep(const v1::StepRecordProto& step) = 0;
  // The asynchronous forms of AppendStep and PutResultAndStep, for a caller
  // with many episodes in flight on a few threads: each queues its write and
  // returns; `done` runs once, with what the synchronous form would return,
  // after the write is durable. It runs on a thread that is writing this log
  // (the log's own committer thread, or a synchronous writer leading a
  // group), so it must be short and must neither block nor call a
  // synchronous write of this log: post further work elsewhere. A request
  // refused before it is queued (an invalid episode id) gets `done` before
  // the call returns. The log must outlive every pending `done`.
  using Done = std::function<void(Status)>;
  virtual void AppendStepAsync(v1::StepRecordProto step, Done done) = 0;
  virtual void PutResultAndStepAsync(const CallKey& key, std::string result, v1::StepRecordProto step,
                                     Done done) = 0;
  // Steps of an episode in step order, from `from_step`, at most `limit`.
  virtual Result<std::vector<v1::StepRecordProto>> ReadSteps(
      const std::string& episode, uint64_t from_step = 0, uint64_t limit = UINT64_MAX) = 0;
  // One JSON object per line: first {"type":"episode",...} (when the episode
  // has a record), then {"type":"step",...} per step in order. NOT_FOUND when
  // the episode has neither record nor steps.
  virtual Result<std::string> ExportEpisodeJsonl(const std::string& episode) = 0;

  // Maintenance (`paddock log verify/backup/restore/compact`, retention).
  // Verify: block checksums of every file, the format version, every record
  // decodes, orphan intents (in-doubt calls).
  virtual Result<VerifyReport> Verify() = 0;
  // A new backup of the live database into backup_dir (RocksDB BackupEngine;
  // created if missing; earlier backups are kept). Returns the backup id.
  virtual Result<uint32_t> Backup(const std::string& backup_dir) = 0;
  // Restores the latest backup in backup_dir into db_dir, replacing what is
  // there. The database at db_dir must not be open.
  static Status Restore(const std::string& backup_dir, const std::string& db_dir);
  // Opens dir allowing corruption and runs Verify() (for the CLI).
  static Result<VerifyReport> VerifyAt(const std::string& dir);
  // Full manual compaction of every column family.
  virtual Status Compact() = 0;
  // Retention: deletes episodes whose latest activity is older than now - age,
  // with their steps, intents and results. An episode's latest activity is
  // the newest of its record's updated_unix_ms, its calls' intent and result
  // times and its steps' logged times, so an episode driven only by keyed
  // calls (whose record is written once) is kept while it is in use.
  // Returns how many were deleted.
  virtual Result<uint64_t> DeleteEpisodesOlderThan(std::chrono::milliseconds age) = 0;

  virtual CommitStats GetCommitStats() const = 0;
};

}  // namespace paddock::replay
