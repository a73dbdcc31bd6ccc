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
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/types.h"

namespace grpc {
class Channel;
class ClientContext;
}

namespace paddock::client {

// $PADDOCK_SOCKET when set, else /run/paddock/paddockd.sock.
std::string DefaultSocketPath();
// The environment variable's value, or "" when unset.
std::string EnvOr(const char* name);

struct ClientOptions {
  std::string socket_path = DefaultSocketPath();  // used when tcp_target is empty
  std::string tcp_target;  // "host:port" of a paddockd --listen-tcp
  std::string token;       // bearer token for tcp_target
  // TLS to tcp_target (a daemon started with --tls-cert): on when tls_ca_file
  // is set or `tls` is true (then the system's CAs verify the daemon).
  // tls_cert_file/tls_key_file: this client's certificate, for a daemon with
  // --tls-client-ca. Defaults from PADDOCK_TLS_CA, PADDOCK_TLS_CERT and
  // PADDOCK_TLS_KEY.
  bool tls = false;
  std::string tls_ca_file = EnvOr("PADDOCK_TLS_CA");
  std::string tls_cert_file = EnvOr("PADDOCK_TLS_CERT");
  std::string tls_key_file = EnvOr("PADDOCK_TLS_KEY");
  // Sent with every call, e.g. a front's lease (rollout/fleet).
  std::vector<std::pair<std::string, std::string>> metadata;
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
  std::string state;  // "running" | "failed" | "paused"
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
  // For fronts placing sandboxes on this daemon (proto StatsResponse).
  uint32_t api_version = 0;
  std::vector<std::string> substrates;  // usable here
  uint64_t mem_available_bytes = 0;
  uint32_t cpus = 0;
  std::string version;
  bool draining = false;
  std::vector<std::string> images;  // names in its store (at most 256)
  std::vector<std::string> image_ids;  // ids ("sha256:<hex>") in its store (at most 256)
  uint64_t images_fetched = 0;         // images fronts handed it that it fetched
  uint32_t front_lease_ms = 0;      // a front's lease there
  uint32_t queued_episodes = 0;     // rollout episodes waiting for a slot of the daemon
};

// Idempotency key of a side-effecting call (see proto/sandbox.proto
// IdempotencyKey): with one, the daemon logs the call write-ahead and answers
// a repeat from its trajectory log instead of running it again.
struct CallKey {
  std::string episode;
  uint64_t step = 0;
  uint32_t call = 0;
  bool idempotent = false;  // may run again if it is in doubt after a crash
};
// "EPISODE:STEP:CALL"; the last two ':' separate step and call, so episode ids
// may contain ':'. INVALID_ARGUMENT naming the part at fault.
Result<CallKey> ParseCallKey(const std::string& text);

struct KeyedExecResult {
  ExecResult result;
  bool replayed = false;  // answered from the log; the command did not run now
};
struct KeyedWriteResult {
  uint64_t bytes_written = 0;
  bool replayed = false;  // answered from the log; nothing was written now
};
struct EpisodeSandbox {
  SandboxInfo sandbox;
  bool reused = false;   // the episode's live bound sandbox was returned
  bool rebuilt = false;  // its earlier sandbox was gone; this one replaces it
  std::string previous_sandbox_id;
};

// The trajectory log, as the Log service reports it.
struct LogEpisode {
  std::string episode_id;
  std::string state;  // "running" | "finished" | "failed" | ""
  int64_t created_unix_ms = 0;
  int64_t updated_unix_ms = 0;
  std::string sandbox_id;
  std::string model, task, stop_reason, failure_reason, rebuild_note;
  double total_reward = 0;
  std::map<std::string, std::string> labels;
};
struct LogStep {
  uint64_t step = 0;
  double reward = 0;
  size_t tool_calls = 0;
  std::string stop_reason;
  std::string json;  // the whole step record, protobuf JSON mapping
};
struct InDoubtCall {
  std::string key;  // "EPISODE:STEP:CALL"
  std::string request_summary;
  bool idempotent = false;
  int64_t intent_unix_ms = 0;
};
struct LogEpisodeDetail {
  bool has_record = false;
  LogEpisode episode;
  std::vector<LogStep> steps;
  std::vector<InDoubtCall> in_doubt;
};
struct LogVerifyReport {
  bool ok = false;
  bool checksums_ok = false;
  std::string checksum_error;
  std::vector<std::string> corrupt_files;
  uint32_t format_version = 0;
  bool format_ok = false;
  std::string format_error;
  uint64_t episodes = 0, steps = 0, intents = 0, results = 0;
  std::vector<InDoubtCall> in_doubt;
  uint64_t results_without_intent = 0, undecodable_records = 0;
  std::vector<std::string> problems;
  std::string report;  // the whole report as text
};

// ---- the image store (paddock.v1.Images) ----
struct ImageSummary {
  std::string digest;
  std::vector<std::string> names;
  uint32_t layers = 0;
  uint64_t stored_bytes = 0;
};
struct ImageLayer {
  std::string diff_id, blob, compression;
  uint64_t size = 0, uncompressed_size = 0;
  bool materialized = false;  // unpacked in the daemon's layer cache
};
struct ImageDetail {
  std::string digest, config_digest, workdir, user;
  std::vector<std::string> names, env, entrypoint, cmd;
  std::vector<ImageLayer> layers;  // bottom first
};
struct ImageImportResult {
  std::vector<std::string> images, names;
  uint64_t layers_total = 0, layers_new = 0, bytes_committed = 0;
  uint64_t bytes_fetched = 0;   // pull: layer bytes downloaded
  std::string manifest_digest;  // pull: the registry's manifest digest
};
// Sent to the daemon for one call, never logged. Empty: anonymous.
struct RegistryCredentials {
  std::string username, password;
  bool empty() const { return username.empty() && password.empty(); }
};
struct ImagePullOptions {
  std::string name;                              // store name; empty: the reference itself
  std::vector<std::string> insecure_registries;  // plain HTTP to these hosts (loopback always)
  std::string platform;                          // "os/arch[/variant]"; empty: linux/amd64
  std::string ca_file;                           // on the daemon's host
  RegistryCredentials credentials;
};
struct ImagePushOptions {
  std::vector<std::string> insecure_registries;  // plain HTTP to these hosts (loopback always)
  std::string ca_file;                           // on the daemon's host
  RegistryCredentials credentials;
  int64_t chunk_size = 0;  // blobs larger go in chunks of this size; 0: 16 MiB; negative: never chunked
};
struct ImagePushResult {
  std::string image, ref, manifest_digest;
  uint64_t blobs_total = 0, blobs_present = 0, blobs_mounted = 0, blobs_uploaded = 0, bytes_uploaded = 0;
  uint64_t blobs_chunked = 0, chunk_resumes = 0;
};
// A pull's progress: a line, and layer bytes fetched of those to fetch.
struct ImagePullProgress {
  std::string phase, message;
  uint64_t bytes_done = 0, bytes_total = 0;
};
struct ImageGcResult {
  uint64_t blobs_removed = 0, bytes_freed = 0, staging_removed = 0;
};
struct SnapshotInfo {
  std::string image, name, layer;
  uint64_t layer_bytes = 0;
};

// Cancels a Client::ExecStream from any thread, also from inside its output
// callback: the call ends with CANCELLED and the daemon kills the command in the
// sandbox (as at a timeout). Cancel before the call starts cancels it at once.
// One handle per call.
class ExecCancel {
 public:
  void Cancel();
  bool cancelled() const;

 private:
  friend class Client;
  void Attach(grpc::ClientContext* ctx);  // while the call runs; nullptr after
  mutable std::mutex mu_;
  grpc::ClientContext* ctx_ = nullptr;
  bool cancelled_ = false;
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
  // `cancel`, when given, can stop the call (see ExecCancel).
  Result<ExecResult> ExecStream(const std::string& id, const ExecRequest& req,
                                const OutputCallback& on_output, ExecCancel* cancel = nullptr);
  // Returns the number of bytes written. mode 0 means 0644.
  Result<uint64_t> WriteFile(const std::string& id, const std::string& path,
                             std::string_view content, uint32_t mode = 0,
                             bool make_parents = true);
  // max_bytes 0: the daemon's default (16 MiB); larger files are refused.
  Result<std::string> ReadFile(const std::string& id, const std::string& path,
                               uint64_t max_bytes = 0);
  Result<std::vector<FileInfo>> ListDir(const std::string& id, const std::string& path);
  Result<FileInfo> Stat(const std::string& id, const std::string& path);
  // A container's changes as a new image on top of its own; the new image's digest.
  Result<std::string> Snapshot(const std::string& id, const std::string& name);
  Status Destroy(const std::string& id);
  Result<std::vector<SandboxInfo>> List();
  // Daemon-wide numbers; with an id, that sandbox's usage too.
  // `timeout`: this call's deadline; 0: the client's call_timeout.
  Result<DaemonStats> Stats(const std::string& id = "", std::chrono::milliseconds timeout = {});

  // ---- the trajectory log (keyed calls, episodes) ----
  // Creates a sandbox bound to `episode`, or returns the bound one while it
  // lives; after a daemon restart a new one, with `rebuilt` set.
  Result<EpisodeSandbox> CreateForEpisode(const SandboxSpec& spec, const std::string& episode);
  Result<KeyedExecResult> Exec(const std::string& id, const ExecRequest& req, const CallKey& key);
  Result<KeyedExecResult> ExecStream(const std::string& id, const ExecRequest& req,
                                     const CallKey& key, const OutputCallback& on_output);
  Result<KeyedWriteResult> WriteFile(const std::string& id, const std::string& path,
                                     std::string_view content, uint32_t mode, bool make_parents,
                                     const CallKey& key);

  Result<std::vector<LogEpisode>> LogListEpisodes(const std::string& prefix = "");
  Result<LogEpisodeDetail> LogShowEpisode(const std::string& episode);
  // JSON lines of the named episodes (all when empty), passed to `on_chunk`
  // in whole lines as they arrive.
  Status LogExport(const std::vector<std::string>& episodes, const std::string& format,
                   const std::function<void(std::string_view)>& on_chunk);
  Result<LogVerifyReport> LogVerify();
  // A backup of the live log into `dir` (absolute; on the daemon's host). The backup id.
  Result<uint32_t> LogBackup(const std::string& dir);
  // Refused while the daemon runs (it has the log open); the message says how.
  Status LogRestore(const std::string& dir);
  Status LogCompact();
  // Deletes episodes not updated for `older_than`; how many.
  Result<uint64_t> LogPrune(std::chrono::seconds older_than);

  // ---- images: paths are on the daemon's host and must be absolute ----
  // `on_progress` receives progress lines while the daemon reads the archive.
  Result<ImageImportResult> ImageImport(const std::string& path, const std::string& name,
                                        const std::function<void(const std::string&)>& on_progress = {});
  // Pulls REF from its registry into the daemon's store (images[0]: the image id).
  Result<ImageImportResult> ImagePull(const std::string& ref, const ImagePullOptions& options,
                                      const std::function<void(const ImagePullProgress&)>& on_progress = {});
  // Pushes `image` (name, digest or prefix) of the daemon's store to REF.
  // Progress as for a pull: blob bytes uploaded of those to upload.
  Result<ImagePushResult> ImagePush(const std::string& image, const std::string& ref,
                                    const ImagePushOptions& options,
                                    const std::function<void(const ImagePullProgress&)>& on_progress = {});
  Result<ImageImportResult> ImageImportDir(const std::string& dir, const std::string& name,
                                           const std::vector<std::string>& env = {},
                                           const std::string& workdir = "");
  Result<std::vector<ImageSummary>> ImageList();
  Result<ImageDetail> ImageInspect(const std::string& ref);
  // The digest of the image the name pointed at.
  Result<std::string> ImageRemove(const std::string& ref);
  // grace < 0: the daemon's default (1 h).
  Result<ImageGcResult> ImageGc(std::chrono::seconds grace = std::chrono::seconds(-1));
  Result<std::string> ImageExport(const std::string& ref, const std::string& dir);
  // Snapshot with everything the daemon reports.
  Result<SnapshotInfo> SnapshotImage(const std::string& id, const std::string& name);
  // Pause with memory, resume, fork of a running microVM (Sandboxes.Pause,
  // Resume, Fork): the bytes saved; the copies made.
  Result<uint64_t> Pause(const std::string& id);
  Status Resume(const std::string& id);
  Result<std::vector<SandboxInfo>> Fork(const std::string& id, uint32_t count);

  // Where this client connects, for messages: "/run/paddock/paddockd.sock" or "host:port".
  const std::string& target() const;

  // The connected channel and the options it was made with, so clients of the
  // daemon's other services (RolloutsClient) share this connection.
  std::shared_ptr<grpc::Channel> channel() const;
  const ClientOptions& options() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace paddock::client
