// A microVM's console log on the host, bounded: QEMU writes the guest's serial
// console (and its own stderr) into a pipe, and a thread of the daemon drains
// the pipe into <vm dir>/console.log. When the file reaches its cap, only its
// last half is kept (behind one line saying how much was dropped), so a guest
// that floods its console costs the host at most `cap` bytes of disk and
// cap/2 bytes of memory for a moment, and the guest is never blocked on a
// full pipe (QEMU's serial writes would stall its vCPU).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"

namespace paddock::microvm {

inline constexpr uint64_t kConsoleLogCap = 1ull << 20;

class ConsoleLog {
 public:
  // Creates (truncates) `path` and starts draining; the write end of the pipe
  // is in `*writer` (close-on-exec), for QEMU's stdout and stderr.
  static Result<std::unique_ptr<ConsoleLog>> Start(const std::string& path, uint64_t cap, UniqueFd* writer);
  ~ConsoleLog();

  // Drains what is already in the pipe, then stops (after QEMU is gone, the
  // pipe has reached EOF and everything QEMU wrote is in the file). Idempotent.
  void Stop();
  // The log's text (at most `cap` bytes): what is in the file now.
  std::string Text() const;
  // Bytes dropped so far to keep the file under its cap.
  uint64_t dropped() const { return dropped_.load(); }

 private:
  ConsoleLog(std::string path, uint64_t cap) : path_(std::move(path)), cap_(cap) {}
  void Drain();
  void Append(const char* data, size_t n);

  std::string path_;
  uint64_t cap_;
  UniqueFd pipe_, file_, stop_;  // stop_: an eventfd that ends Drain
  uint64_t size_ = 0;            // of the file; the drain thread's only
  std::atomic<uint64_t> dropped_{0};
  std::thread thread_;
};

}  // namespace paddock::microvm
