// Internal: RocksDB statuses as paddock Status, with the codes a caller acts on.
#pragma once

#include <string_view>

#include <rocksdb/status.h>

#include "sandbox/base/status.h"

namespace paddock::replay {

inline Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return Status::Ok();
  Code code = Code::kInternal;
  std::string text = s.ToString();
  if (s.IsNoSpace() || text.find("No space left") != std::string::npos ||
      text.find("Disk quota") != std::string::npos) {
    code = Code::kResourceExhausted;
  } else if (s.IsCorruption()) {
    code = Code::kDataLoss;
  } else if (s.IsNotFound() || s.IsPathNotFound()) {
    code = Code::kNotFound;
  } else if (s.IsInvalidArgument() || s.IsNotSupported()) {
    code = Code::kInvalidArgument;
  } else if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut() ||
             text.find("lock") != std::string::npos || text.find("LOCK") != std::string::npos) {
    code = Code::kUnavailable;
  } else if (s.IsIOError()) {
    code = Code::kUnavailable;
  }
  return Status(code, fmt::format("{}: {}", context, text));
}

}  // namespace paddock::replay
