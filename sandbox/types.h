// Plain domain types of the uniform sandbox API. No gRPC, no protobuf: shared by
// the daemon and by paddock-init (a static binary).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace paddock {

struct Limits {
  uint32_t cpu_millicores = 0;  // 0: no cpu bandwidth limit
  uint64_t memory_bytes = 0;    // 0: substrate default
  uint32_t pids = 0;            // 0: substrate default
  uint64_t disk_bytes = 0;      // 0: substrate default
  bool operator==(const Limits&) const = default;
  auto operator<=>(const Limits&) const = default;
};

// Defaults applied where a spec leaves a limit at 0.
inline constexpr uint64_t kDefaultMemoryBytes = 512ull << 20;
inline constexpr uint32_t kDefaultPids = 256;
inline constexpr uint64_t kDefaultDiskBytes = 1ull << 30;
inline constexpr uint32_t kDefaultExecTimeoutMs = 60'000;
inline constexpr uint64_t kDefaultOutputCap = 1ull << 20;
inline constexpr uint64_t kDefaultReadCap = 16ull << 20;
inline constexpr uint64_t kMaxFileBytes = 64ull << 20;  // WriteFile/ReadFile hard bound

struct SandboxSpec {
  std::string substrate;
  std::string image;
  Limits limits;
  std::map<std::string, std::string> env;
  std::string workdir;  // empty: substrate default
  uint32_t ttl_seconds = 0;
  std::map<std::string, std::string> labels;
  // Set by the daemon only for a Create from its unix socket: a host
  // directory may then be the image, when the daemon was started with
  // --allow-dir-images. Never set for TCP clients or task files.
  bool host_dir_image_ok = false;
  // Set by the daemon for a Create from its unix socket and for rollouts
  // started there: an image pulled on first use may then come from a loopback
  // or --insecure-registry host (storage/registry/on_demand_pull.h).
  bool local_client = false;
  // Egress allow list (empty: no network but loopback). Entries: "host",
  // "host:port", "*.domain[:port]", "IP[:port]", "CIDR[:port]"; served by
  // the daemon's egress proxy (sandbox/network/egress_proxy.h). Every
  // substrate: a microVM guest's connections reach it over the init channel
  // (sandbox/network/egress_tunnel.h).
  std::vector<std::string> network_allow;
};

struct ExecRequest {
  std::vector<std::string> argv;
  std::string shell;  // when set: /bin/sh -c shell
  std::string stdin_data;
  std::map<std::string, std::string> env;
  std::string cwd;
  uint32_t timeout_ms = 0;
  uint64_t output_cap = 0;
  bool stream = false;  // deliver output chunks as they are produced
  // A sealed run (the rollout engine's verifier): when set, these are the
  // bytes of a static program that paddock-init runs from a sealed memfd
  // (argv[0] names it, e.g. busybox's "sh") instead of looking argv[0] up in
  // the sandbox, after killing every other process of the sandbox. The agent
  // can neither replace the tools the verifier runs nor leave a process to
  // race it. Never set from the API.
  std::string trusted_program;
  // Asks a daemon over the API for such a sealed run with its own toolset (a
  // front's verifier on a node): the node fills trusted_program itself.
  bool sealed = false;
  // Polled (every few tens of ms) while the command runs; once it returns
  // true the command's process tree is killed as at a timeout and the call
  // returns CANCELLED (a client that went away). Not sent to the sandbox.
  std::function<bool()> cancelled;
};

struct ExecResult {
  int32_t exit_code = 0;
  int32_t signal = 0;
  std::string stdout_data;
  std::string stderr_data;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  bool timed_out = false;
  bool oom_killed = false;
  uint64_t wall_time_us = 0;
  uint64_t cpu_time_us = 0;
  uint64_t peak_memory_bytes = 0;
};

enum class FileType : uint32_t { kUnknown = 0, kRegular = 1, kDirectory = 2, kSymlink = 3, kOther = 4 };

struct FileInfo {
  std::string name;
  FileType type = FileType::kUnknown;
  uint64_t size = 0;
  uint32_t mode = 0;
  int64_t mtime_unix_ms = 0;
};

struct Usage {
  uint64_t memory_bytes = 0;
  uint64_t cpu_time_us = 0;
  uint32_t pids = 0;
};

// Receives output as it is produced: stream 1 = stdout, 2 = stderr.
using OutputCallback = std::function<void(int stream, std::string_view chunk)>;

}  // namespace paddock
