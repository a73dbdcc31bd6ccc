// The C++ client of paddockd's sandbox API, used by the `paddock` CLI, tests and
// benchmarks.
//
// Types: requests and results reuse the plain domain structs of
// sandbox/types.h (SandboxSpec, ExecRequest, ExecResult, FileInfo, Usage) and
// errors are paddock::Status, so code moving between an in-process
// SandboxManager and a remote daemon keeps its types. Only what the daemon adds
// (SandboxInfo, DaemonStats) is declared here. No gRPC header leaks out.
//
// Every call is synchronous and thread-safe; one Client may be shared by many
// threads. Errors carry the daemon's message and code unchanged; when the daemon
// cannot be reached the message says how to start it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/types.h"

namespace paddock::client {

// $PADDOCK_SOCKET when set, else /run/paddock/paddockd.sock.
std::string DefaultSocketPath();

struct ClientOptions {
  std::string socket_path = DefaultSocketPath();  // used when tcp_target is empty
  std::string tcp_target;  // "host:port" of a paddockd --listen-tcp
  std::string token;       // bearer token for tcp_target
  // How long Connect waits for the daemon to answer.
  std::chrono::milliseconds connect_timeout{2000};
  // Deadline of every call except Exec (whose deadline is its own timeout plus
  // a margin). Creating a sandbox may take seconds; the default is generous.
  std::chrono::milliseconds call_timeout{300'000};
};

struct SandboxInfo {
  std::string id;
  std::string substrate;
  std::string image;
  int64_t created_unix_ms = 0;
  int64_t expires_unix_ms = 0;
  std::string state;  // "running" | "failed"
  std::map<std::string, std::string> labels;
  Limits limits;
};

struct DaemonStats {
  uint32_t live_sandboxes = 0;
  uint32_t max_sandboxes = 0;
  std::map<std::string, uint32_t> by_substrate;
  uint64_t execs_total = 0;
  uint64_t daemon_rss_bytes = 0;
  bool has_usage = false;  // usage is set when Stats was asked about one sandbox
  Usage usage;
};

class Client {
 public:
  // Connects and waits (up to connect_timeout) until the daemon answers.
  // UNAVAILABLE with a "start it with ..." hint when nothing listens.
  static Result<Client> Connect(ClientOptions options = {});

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  Result<SandboxInfo> Create(const SandboxSpec& spec);
  // Runs one command to completion. `req.stream` is ignored; see ExecStream.
  Result<ExecResult> Exec(const std::string& id, const ExecRequest& req);
  // Like Exec, but `on_output(stream, chunk)` (1 = stdout, 2 = stderr) is called
  // on the calling thread as output arrives, before this returns. The returned
  // result's stdout_data/stderr_data are empty: the chunks were the output.
  Result<ExecResult> ExecStream(const std::string& id, const ExecRequest& req,
                                const OutputCallback& on_output);
  // Returns the number of bytes written. mode 0 means 0644.
  Result<uint64_t> WriteFile(const std::string& id, const std::string& path,
                             std::string_view content, uint32_t mode = 0,
                             bool make_parents = true);
  // max_bytes 0: the daemon's default (16 MiB); larger files are refused.
  Result<std::string> ReadFile(const std::string& id, const std::string& path,
                               uint64_t max_bytes = 0);
  Result<std::vector<FileInfo>> ListDir(const std::string& id, const std::string& path);
  Result<FileInfo> Stat(const std::string& id, const std::string& path);
  // Answers UNIMPLEMENTED until the layered image store lands.
  Result<std::string> Snapshot(const std::string& id, const std::string& name);
  Status Destroy(const std::string& id);
  Result<std::vector<SandboxInfo>> List();
  // Daemon-wide numbers; with an id, that sandbox's usage too.
  Result<DaemonStats> Stats(const std::string& id = "");

  // Where this client connects, for messages: "/run/paddock/paddockd.sock" or "host:port".
  const std::string& target() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace paddock::client
