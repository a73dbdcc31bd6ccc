// A small client of QEMU's machine protocol (QMP) on our end of a socketpair
// whose other end QEMU holds as `-chardev socket,fd=N -mon chardev=...,mode=control`.
// Used to save a template VM (stop, migrate to an fd) and to restore its
// clones (migrate-incoming, cont). Every read is bounded (a line of at most
// kMaxLine bytes) and every call has a deadline: QEMU runs confined and, once
// a guest has run in it, is not trusted to answer.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"

namespace paddock::microvm {

class QmpClient {
 public:
  using Deadline = std::chrono::steady_clock::time_point;
  static constexpr size_t kMaxLine = 64u << 10;

  // Reads QEMU's greeting and enters command mode (qmp_capabilities).
  static Result<QmpClient> Open(UniqueFd socket, Deadline deadline);

  // Runs one command (`command_json`: a whole QMP object) and returns its
  // reply line ({"return": ...}); an {"error": ...} reply is an INTERNAL
  // error quoting QEMU's description. Events on the way are skipped. `fds`
  // travel with the command (SCM_RIGHTS), as `getfd` needs.
  Result<std::string> Execute(std::string_view command_json, Deadline deadline, const std::vector<int>& fds = {});

  // Polls `query` (every `interval`) until its reply, spaces removed, holds
  // one of `done` (R"("status":"completed")", ...) or one of `failed` (an
  // error quoting the reply); returns the reply.
  Result<std::string> WaitFor(std::string_view query, const std::vector<std::string>& done,
                              const std::vector<std::string>& failed, Deadline deadline,
                              std::chrono::milliseconds interval);

 private:
  explicit QmpClient(UniqueFd socket) : socket_(std::move(socket)) {}
  Result<std::string> ReadLine(Deadline deadline);
  UniqueFd socket_;
  std::string buffer_;
};

}  // namespace paddock::microvm
