// The trajectory log: one RocksDB database per daemon, column families per
// record kind, protobuf records (proto/trajectory.proto). Every write that a
// caller is told about is durable (WAL synced) first; concurrent writers share
// syncs (group commit).
//
// Keys keep one episode's records contiguous and ordered:
//   episode id bytes, 0x00, big-endian u64 step, big-endian u32 call.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::replay {

// Identifies one side-effecting call: (episode, step, call index).
struct CallKey {
  std::string episode;
  uint64_t step = 0;
  uint32_t call = 0;
  std::string Encode() const;           // the RocksDB key
  std::string ToString() const;         // "EPISODE:STEP:CALL" for messages
  static Result<CallKey> Parse(const std::string& text);  // from "EPISODE:STEP:CALL"
};

struct LogOptions {
  std::string dir;                 // created if missing
  bool create_if_missing = true;
  // Refuse to open a database that fails its checks unless this is set.
  bool allow_corruption = false;
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
};

class TrajectoryLog {
 public:
  static Result<std::unique_ptr<TrajectoryLog>> Open(const LogOptions& options);
  virtual ~TrajectoryLog() = default;

  // Write-ahead protocol. Each returns only once the record is durable.
  virtual Status PutIntent(const CallKey& key, const std::string& request_fingerprint,
                           const std::string& request_summary, bool idempotent) = 0;
  virtual Status PutResult(const CallKey& key, const std::string& result) = 0;
  virtual Result<std::optional<CallRecord>> GetCall(const CallKey& key) = 0;
};

}  // namespace paddock::replay
