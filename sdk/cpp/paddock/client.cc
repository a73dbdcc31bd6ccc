#include "paddock/client.h"
#include "paddock/grpc_call.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>

#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>

#include <google/protobuf/util/json_util.h>

#include "image.grpc.pb.h"
#include "log.grpc.pb.h"
#include "proto/convert.h"
#include "sandbox.grpc.pb.h"
#include "sandbox/base/unique_fd.h"

namespace paddock::client {

namespace {

constexpr int kMaxMessageBytes = 128 << 20;  // same bound as the daemon
constexpr std::chrono::seconds kExecDeadlineMargin{30};

using internal::FromGrpc;

// Why a unix socket does not answer, from connect(2) itself (gRPC only says
// "failed to connect"); empty when it accepts connections.
std::string ProbeUnixSocket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return "socket path too long";
  path.copy(addr.sun_path, path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return std::strerror(errno);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return "";
  if (errno == ENOENT) return "no such socket (paddockd is not running)";
  if (errno == ECONNREFUSED) return "connection refused (stale socket; paddockd is not running)";
  return std::strerror(errno);
}

Status Unreachable(const std::string& target, const std::string& reason) {
  return Error(Code::kUnavailable,
               "cannot reach paddockd at {}: {}; start it with `paddockd --state-dir "
               "/var/lib/paddock &` or set PADDOCK_SOCKET",
               target, reason);
}

// The client's SandboxInfo is flat; the manager's (which the daemon converts)
// keeps the whole spec.
SandboxInfo FromProto(const v1::SandboxInfo& p) {
  SandboxInfo d;
  d.id = p.id();
  d.substrate = p.substrate();
  d.image = p.image();
  d.created_unix_ms = p.created_unix_ms();
  d.expires_unix_ms = p.expires_unix_ms();
  d.state = p.state();
  d.labels.insert(p.labels().begin(), p.labels().end());
  d.limits = v1conv::FromProto(p.limits());
  return d;
}

// The sandbox id travels in the request message, not in the domain struct.
v1::ExecRequest ToProto(const std::string& id, const ExecRequest& d) {
  v1::ExecRequest p;
  p.set_sandbox_id(id);
  v1conv::ToProto(d, &p);
  return p;
}

void SetKey(const CallKey& k, v1::IdempotencyKey* p) {
  p->set_episode(k.episode);
  p->set_step(k.step);
  p->set_call(k.call);
  p->set_idempotent(k.idempotent);
}

const char* StateName(v1::EpisodeRecordProto::State s) {
  switch (s) {
    case v1::EpisodeRecordProto::RUNNING: return "running";
    case v1::EpisodeRecordProto::FINISHED: return "finished";
    case v1::EpisodeRecordProto::FAILED: return "failed";
    default: return "";
  }
}

LogEpisode FromProto(const v1::EpisodeRecordProto& p) {
  LogEpisode d;
  d.episode_id = p.episode_id();
  d.state = StateName(p.state());
  d.created_unix_ms = p.created_unix_ms();
  d.updated_unix_ms = p.updated_unix_ms();
  d.sandbox_id = p.sandbox_id();
  d.model = p.model();
  d.task = p.task();
  d.stop_reason = p.stop_reason();
  d.failure_reason = p.failure_reason();
  d.rebuild_note = p.rebuild_note();
  d.total_reward = p.total_reward();
  d.labels.insert(p.labels().begin(), p.labels().end());
  return d;
}

InDoubtCall FromProto(const v1::InDoubtCallProto& p) {
  return {p.key(), p.request_summary(), p.idempotent(), p.intent_unix_ms()};
}

// Debian's Abseil is built without NDEBUG, so by default every absl::Mutex
// lock (gRPC takes several per call) runs Abseil's lock-order deadlock
// detection through one process-wide graph under a global lock. Off, once,
// for the process that uses this client; it is a debugging aid of Abseil's
// own, not something a program relies on.
void DisableAbslDeadlockDetection() {
  static std::once_flag once;
  std::call_once(once, [] { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); });
}

}  // namespace

Result<CallKey> ParseCallKey(const std::string& text) {
  size_t c2 = text.rfind(':');
  size_t c1 = c2 == std::string::npos || c2 == 0 ? std::string::npos : text.rfind(':', c2 - 1);
  if (c1 == std::string::npos || c1 == 0)
    return Error(Code::kInvalidArgument,
                 "key '{}': expected EPISODE:STEP:CALL, e.g. run-7:3:0", text);
  std::string step = text.substr(c1 + 1, c2 - c1 - 1), call = text.substr(c2 + 1);
  auto number = [](const std::string& s, uint64_t max) -> std::optional<uint64_t> {
    if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    try {
      uint64_t v = std::stoull(s);
      if (v > max) return std::nullopt;
      return v;
    } catch (...) {
      return std::nullopt;
    }
  };
  auto st = number(step, UINT64_MAX);
  if (!st) return Error(Code::kInvalidArgument, "key '{}': STEP '{}' is not a decimal u64", text, step);
  auto ca = number(call, UINT32_MAX);
  if (!ca) return Error(Code::kInvalidArgument, "key '{}': CALL '{}' is not a decimal u32", text, call);
  CallKey k;
  k.episode = text.substr(0, c1);
  k.step = *st;
  k.call = static_cast<uint32_t>(*ca);
  return k;
}

std::string EnvOr(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

namespace {

Result<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return ErrnoError(fmt::format("cannot read {} {}", what, path));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find("-----BEGIN ") == std::string::npos)
    return Error(Code::kInvalidArgument, "{} {} holds no PEM data", what, path);
  return text;
}

bool LoopbackTarget(const std::string& target) {
  std::string host = target.substr(0, target.rfind(':'));
  return host == "localhost" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

Result<std::shared_ptr<grpc::ChannelCredentials>> TcpCredentials(const ClientOptions& o) {
  if (!o.tls && o.tls_ca_file.empty()) {
    if (!o.tls_cert_file.empty())
      return Error(Code::kInvalidArgument, "a client certificate needs TLS: set tls_ca_file (--tls-ca)");
    // The token would cross the network in clear text.
    if (!o.token.empty() && !LoopbackTarget(o.tcp_target))
      return Error(Code::kInvalidArgument,
                   "refusing to send the token in clear text to {}: reach a non-loopback paddockd over TLS "
                   "(--tls-ca, or PADDOCK_TLS_CA)",
                   o.tcp_target);
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca_file.empty()) {
    PADDOCK_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(o.tls_ca_file, "TLS CA"));
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty())
    return Error(Code::kInvalidArgument, "a client certificate and its key go together (--tls-cert, --tls-key)");
  if (!o.tls_cert_file.empty()) {
    PADDOCK_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(o.tls_cert_file, "client certificate"));
    PADDOCK_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(o.tls_key_file, "client key"));
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

std::string DefaultSocketPath() {
  const char* env = std::getenv("PADDOCK_SOCKET");
  return env && *env ? env : "/run/paddock/paddockd.sock";
}

struct Client::Impl {
  ClientOptions options;
  std::string target;  // for messages
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Sandboxes::Stub> stub;
  std::unique_ptr<v1::Log::Stub> log_stub;

  // A fresh context per call: deadline plus the token on TCP.
  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout) const {
    return internal::CallContext(options, timeout);
  }
  std::unique_ptr<grpc::ClientContext> Context() const { return Context(options.call_timeout); }
  std::unique_ptr<grpc::ClientContext> ExecContext(const ExecRequest& req) const {
    auto timeout = std::chrono::milliseconds(req.timeout_ms ? req.timeout_ms : kDefaultExecTimeoutMs);
    return Context(timeout + kExecDeadlineMargin);
  }
};

Result<Client> Client::Connect(ClientOptions options) {
  auto impl = std::make_unique<Impl>();
  bool tcp = !options.tcp_target.empty();
  impl->target = tcp ? options.tcp_target : options.socket_path;
  std::string address = tcp ? options.tcp_target : "unix:" + options.socket_path;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // The retry filter keeps a copy of every outgoing message and per-call
  // retry state in case gRPC may resend it: work on every call (a
  // fast-forwarded call costs a few tens of microseconds in all) that buys
  // nothing against a daemon: a failed call is reported, and a keyed call may
  // be re-issued by the caller, answered from the log.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  DisableAbslDeadlockDetection();
  // A missing or refused unix socket is known at once; don't wait the timeout.
  if (!tcp) {
    std::string reason = ProbeUnixSocket(options.socket_path);
    if (!reason.empty()) return Unreachable(impl->target, reason);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (tcp) {
    PADDOCK_ASSIGN_OR_RETURN(credentials, TcpCredentials(options));
  }
  impl->channel = grpc::CreateCustomChannel(address, credentials, args);
  // Fail fast with a useful reason instead of letting the first call hang.
  if (!impl->channel->WaitForConnected(std::chrono::system_clock::now() + options.connect_timeout)) {
    if (tcp)
      return Error(Code::kUnavailable,
                   "cannot reach paddockd at {}: no answer within {} ms; is it running with "
                   "`--listen-tcp {}`{}?",
                   impl->target, options.connect_timeout.count(), impl->target,
                   options.tls || !options.tls_ca_file.empty()
                       ? " and --tls-cert, with a certificate your --tls-ca trusts"
                       : " (a daemon with --tls-cert needs --tls-ca here)");
    return Unreachable(impl->target,
                       fmt::format("no answer within {} ms", options.connect_timeout.count()));
  }
  impl->stub = v1::Sandboxes::NewStub(impl->channel);
  impl->log_stub = v1::Log::NewStub(impl->channel);
  impl->options = std::move(options);
  return Client(std::move(impl));
}

namespace internal {

Status FromGrpc(const grpc::Status& st) {
  if (st.ok()) return Status::Ok();
  int code = st.error_code();
  if (code < 0 || code > static_cast<int>(Code::kUnauthenticated)) return Status(Code::kUnknown, st.error_message());
  return Status(static_cast<Code>(code), st.error_message());
}

std::unique_ptr<grpc::ClientContext> CallContext(const ClientOptions& options, std::chrono::milliseconds timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (timeout.count() > 0) ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  if (!options.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options.token);
  for (const auto& [k, v] : options.metadata) ctx->AddMetadata(k, v);
  return ctx;
}

}  // namespace internal

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::shared_ptr<grpc::Channel> Client::channel() const { return impl_->channel; }
const ClientOptions& Client::options() const { return impl_->options; }
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

const std::string& Client::target() const { return impl_->target; }

Result<SandboxInfo> Client::Create(const SandboxSpec& spec) {
  v1::CreateRequest req;
  v1conv::ToProto(spec, req.mutable_spec());
  v1::CreateResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Create(ctx.get(), req, &resp)));
  return FromProto(resp.sandbox());
}

Result<ExecResult> Client::Exec(const std::string& id, const ExecRequest& req) {
  v1::ExecRequest p = ToProto(id, req);
  v1::ExecResult resp;
  auto ctx = impl_->ExecContext(req);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Exec(ctx.get(), p, &resp)));
  return v1conv::FromProto(resp);
}

void ExecCancel::Cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  if (ctx_) ctx_->TryCancel();
}

bool ExecCancel::cancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

void ExecCancel::Attach(grpc::ClientContext* ctx) {
  std::lock_guard lock(mu_);
  ctx_ = ctx;
  if (ctx_ && cancelled_) ctx_->TryCancel();
}

Result<ExecResult> Client::ExecStream(const std::string& id, const ExecRequest& req,
                                      const OutputCallback& on_output, ExecCancel* cancel) {
  v1::ExecRequest p = ToProto(id, req);
  auto ctx = impl_->ExecContext(req);
  auto reader = impl_->stub->ExecStream(ctx.get(), p);
  // Detached before `ctx` goes, whichever way this returns.
  struct Detach {
    ExecCancel* c;
    ~Detach() {
      if (c) c->Attach(nullptr);
    }
  } detach{cancel};
  if (cancel) cancel->Attach(ctx.get());
  v1::ExecEvent ev;
  std::optional<ExecResult> result;
  while (reader->Read(&ev)) {
    switch (ev.event_case()) {
      case v1::ExecEvent::kStdout:
        if (on_output) on_output(1, ev.stdout());
        break;
      case v1::ExecEvent::kStderr:
        if (on_output) on_output(2, ev.stderr());
        break;
      case v1::ExecEvent::kResult:
        result = v1conv::FromProto(ev.result());
        break;
      case v1::ExecEvent::EVENT_NOT_SET:
        break;
    }
  }
  PADDOCK_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  if (!result) return Error(Code::kInternal, "exec stream ended without a result");
  return *std::move(result);
}

Result<uint64_t> Client::WriteFile(const std::string& id, const std::string& path,
                                   std::string_view content, uint32_t mode, bool make_parents) {
  v1::WriteFileRequest req;
  req.set_sandbox_id(id);
  req.set_path(path);
  req.set_content(content.data(), content.size());
  req.set_mode(mode);
  req.set_make_parents(make_parents);
  v1::WriteFileResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->WriteFile(ctx.get(), req, &resp)));
  return resp.bytes_written();
}

Result<std::string> Client::ReadFile(const std::string& id, const std::string& path,
                                     uint64_t max_bytes) {
  v1::ReadFileRequest req;
  req.set_sandbox_id(id);
  req.set_path(path);
  req.set_max_bytes(max_bytes);
  v1::ReadFileResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->ReadFile(ctx.get(), req, &resp)));
  return std::move(*resp.mutable_content());
}

Result<std::vector<FileInfo>> Client::ListDir(const std::string& id, const std::string& path) {
  v1::ListDirRequest req;
  req.set_sandbox_id(id);
  req.set_path(path);
  v1::ListDirResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->ListDir(ctx.get(), req, &resp)));
  std::vector<FileInfo> out;
  for (const auto& e : resp.entries()) out.push_back(v1conv::FromProto(e));
  return out;
}

Result<FileInfo> Client::Stat(const std::string& id, const std::string& path) {
  v1::StatRequest req;
  req.set_sandbox_id(id);
  req.set_path(path);
  v1::FileInfo resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Stat(ctx.get(), req, &resp)));
  return v1conv::FromProto(resp);
}

Result<std::string> Client::Snapshot(const std::string& id, const std::string& name) {
  v1::SnapshotRequest req;
  req.set_sandbox_id(id);
  req.set_name(name);
  v1::SnapshotResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Snapshot(ctx.get(), req, &resp)));
  return resp.image();
}

Status Client::Destroy(const std::string& id) {
  v1::DestroyRequest req;
  req.set_sandbox_id(id);
  v1::DestroyResponse resp;
  auto ctx = impl_->Context();
  return FromGrpc(impl_->stub->Destroy(ctx.get(), req, &resp));
}

Result<std::vector<SandboxInfo>> Client::List() {
  v1::ListRequest req;
  v1::ListResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->List(ctx.get(), req, &resp)));
  std::vector<SandboxInfo> out;
  for (const auto& s : resp.sandboxes()) out.push_back(FromProto(s));
  return out;
}

Result<DaemonStats> Client::Stats(const std::string& id, std::chrono::milliseconds timeout) {
  v1::StatsRequest req;
  req.set_sandbox_id(id);
  v1::StatsResponse resp;
  auto ctx = timeout.count() > 0 ? impl_->Context(timeout) : impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Stats(ctx.get(), req, &resp)));
  DaemonStats d;
  d.live_sandboxes = resp.live_sandboxes();
  d.max_sandboxes = resp.max_sandboxes();
  d.by_substrate.insert(resp.by_substrate().begin(), resp.by_substrate().end());
  d.execs_total = resp.execs_total();
  d.daemon_rss_bytes = resp.daemon_rss_bytes();
  d.has_usage = resp.has_usage();
  d.usage = v1conv::FromProto(resp.usage());
  d.api_version = resp.api_version();
  d.substrates.assign(resp.substrates().begin(), resp.substrates().end());
  d.mem_available_bytes = resp.mem_available_bytes();
  d.cpus = resp.cpus();
  d.version = resp.version();
  d.draining = resp.draining();
  d.images.assign(resp.images().begin(), resp.images().end());
  d.image_ids.assign(resp.image_ids().begin(), resp.image_ids().end());
  d.images_fetched = resp.images_fetched();
  d.front_lease_ms = resp.front_lease_ms();
  d.queued_episodes = resp.queued_episodes();
  return d;
}

Result<EpisodeSandbox> Client::CreateForEpisode(const SandboxSpec& spec, const std::string& episode) {
  v1::CreateRequest req;
  v1conv::ToProto(spec, req.mutable_spec());
  req.set_episode(episode);
  v1::CreateResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Create(ctx.get(), req, &resp)));
  EpisodeSandbox out;
  out.sandbox = FromProto(resp.sandbox());
  out.reused = resp.reused();
  out.rebuilt = resp.rebuilt();
  out.previous_sandbox_id = resp.previous_sandbox_id();
  return out;
}

Result<KeyedExecResult> Client::Exec(const std::string& id, const ExecRequest& req, const CallKey& key) {
  v1::ExecRequest p = ToProto(id, req);
  SetKey(key, p.mutable_idempotency_key());
  v1::ExecResult resp;
  auto ctx = impl_->ExecContext(req);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Exec(ctx.get(), p, &resp)));
  return KeyedExecResult{v1conv::FromProto(resp), resp.replayed()};
}

Result<KeyedExecResult> Client::ExecStream(const std::string& id, const ExecRequest& req,
                                           const CallKey& key, const OutputCallback& on_output) {
  v1::ExecRequest p = ToProto(id, req);
  SetKey(key, p.mutable_idempotency_key());
  auto ctx = impl_->ExecContext(req);
  auto reader = impl_->stub->ExecStream(ctx.get(), p);
  v1::ExecEvent ev;
  std::optional<KeyedExecResult> result;
  while (reader->Read(&ev)) {
    if (ev.has_result()) result = KeyedExecResult{v1conv::FromProto(ev.result()), ev.result().replayed()};
    else if (ev.event_case() == v1::ExecEvent::kStdout && on_output) on_output(1, ev.stdout());
    else if (ev.event_case() == v1::ExecEvent::kStderr && on_output) on_output(2, ev.stderr());
  }
  PADDOCK_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  if (!result) return Error(Code::kInternal, "exec stream ended without a result");
  return *std::move(result);
}

Result<KeyedWriteResult> Client::WriteFile(const std::string& id, const std::string& path,
                                           std::string_view content, uint32_t mode,
                                           bool make_parents, const CallKey& key) {
  v1::WriteFileRequest req;
  req.set_sandbox_id(id);
  req.set_path(path);
  req.set_content(content.data(), content.size());
  req.set_mode(mode);
  req.set_make_parents(make_parents);
  SetKey(key, req.mutable_idempotency_key());
  v1::WriteFileResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->WriteFile(ctx.get(), req, &resp)));
  return KeyedWriteResult{resp.bytes_written(), resp.replayed()};
}

Result<std::vector<LogEpisode>> Client::LogListEpisodes(const std::string& prefix) {
  v1::ListEpisodesRequest req;
  req.set_prefix(prefix);
  v1::ListEpisodesResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->log_stub->ListEpisodes(ctx.get(), req, &resp)));
  std::vector<LogEpisode> out;
  for (const auto& e : resp.episodes()) out.push_back(FromProto(e));
  return out;
}

Result<LogEpisodeDetail> Client::LogShowEpisode(const std::string& episode) {
  v1::ShowEpisodeRequest req;
  req.set_episode(episode);
  v1::ShowEpisodeResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->log_stub->ShowEpisode(ctx.get(), req, &resp)));
  LogEpisodeDetail d;
  d.has_record = resp.has_episode();
  if (d.has_record) d.episode = FromProto(resp.episode());
  for (const auto& s : resp.steps()) {
    LogStep step;
    step.step = s.step();
    step.reward = s.reward();
    step.tool_calls = s.tool_calls_size();
    step.stop_reason = s.stop_reason();
    google::protobuf::util::JsonPrintOptions jo;
    jo.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(s, &step.json, jo);
    d.steps.push_back(std::move(step));
  }
  for (const auto& c : resp.in_doubt()) d.in_doubt.push_back(FromProto(c));
  return d;
}

Status Client::LogExport(const std::vector<std::string>& episodes, const std::string& format,
                         const std::function<void(std::string_view)>& on_chunk) {
  v1::ExportRequest req;
  for (const auto& e : episodes) req.add_episodes(e);
  req.set_format(format);
  auto ctx = impl_->Context();
  auto reader = impl_->log_stub->Export(ctx.get(), req);
  v1::ExportChunk chunk;
  while (reader->Read(&chunk))
    if (on_chunk) on_chunk(chunk.data());
  return FromGrpc(reader->Finish());
}

Result<LogVerifyReport> Client::LogVerify() {
  v1::VerifyRequest req;
  v1::VerifyResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->log_stub->Verify(ctx.get(), req, &resp)));
  LogVerifyReport r;
  r.ok = resp.ok();
  r.checksums_ok = resp.checksums_ok();
  r.checksum_error = resp.checksum_error();
  r.corrupt_files.assign(resp.corrupt_files().begin(), resp.corrupt_files().end());
  r.format_version = resp.format_version();
  r.format_ok = resp.format_ok();
  r.format_error = resp.format_error();
  r.episodes = resp.episodes();
  r.steps = resp.steps();
  r.intents = resp.intents();
  r.results = resp.results();
  for (const auto& c : resp.in_doubt()) r.in_doubt.push_back(FromProto(c));
  r.results_without_intent = resp.results_without_intent();
  r.undecodable_records = resp.undecodable_records();
  r.problems.assign(resp.problems().begin(), resp.problems().end());
  r.report = resp.report();
  return r;
}

Result<uint32_t> Client::LogBackup(const std::string& dir) {
  v1::BackupRequest req;
  req.set_dir(dir);
  v1::BackupResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->log_stub->Backup(ctx.get(), req, &resp)));
  return resp.backup_id();
}

Status Client::LogRestore(const std::string& dir) {
  v1::RestoreRequest req;
  req.set_dir(dir);
  v1::RestoreResponse resp;
  auto ctx = impl_->Context();
  return FromGrpc(impl_->log_stub->Restore(ctx.get(), req, &resp));
}

Status Client::LogCompact() {
  v1::CompactRequest req;
  v1::CompactResponse resp;
  auto ctx = impl_->Context();
  return FromGrpc(impl_->log_stub->Compact(ctx.get(), req, &resp));
}

Result<uint64_t> Client::LogPrune(std::chrono::seconds older_than) {
  v1::PruneRequest req;
  req.set_older_than_seconds(older_than.count());
  v1::PruneResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->log_stub->Prune(ctx.get(), req, &resp)));
  return resp.episodes_deleted();
}

// ---- images ----------------------------------------------------------------
namespace {
constexpr auto kLongCall = std::chrono::hours(2);  // imports and exports of large images

// Reads an Import or Pull stream (both send ImportEvents): each progress event
// to `on_progress`, the result into what it returns.
Result<ImageImportResult> ReadImportEvents(grpc::ClientReader<v1::ImportEvent>& reader,
                                           const std::function<void(const v1::ImportProgress&)>& on_progress,
                                           const char* what) {
  v1::ImportEvent ev;
  ImageImportResult out;
  bool got = false;
  while (reader.Read(&ev)) {
    if (ev.has_progress()) {
      if (on_progress) on_progress(ev.progress());
    } else if (ev.has_result()) {
      const auto& r = ev.result();
      out.images.assign(r.images().begin(), r.images().end());
      out.names.assign(r.names().begin(), r.names().end());
      out.layers_total = r.layers_total();
      out.layers_new = r.layers_new();
      out.bytes_committed = r.bytes_committed();
      out.bytes_fetched = r.bytes_fetched();
      out.manifest_digest = r.manifest_digest();
      got = true;
    }
  }
  PADDOCK_RETURN_IF_ERROR(FromGrpc(reader.Finish()));
  if (!got) return Error(Code::kInternal, "the daemon ended the {} without a result", what);
  return out;
}
}  // namespace

Result<ImageImportResult> Client::ImageImport(const std::string& path, const std::string& name,
                                              const std::function<void(const std::string&)>& on_progress) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::ImportRequest req;
  req.set_path(path);
  req.set_name(name);
  auto ctx = impl_->Context(kLongCall);
  auto reader = stub->Import(ctx.get(), req);
  return ReadImportEvents(*reader, [&](const v1::ImportProgress& p) {
    if (on_progress) on_progress(p.message());
  }, "import");
}

Result<ImageImportResult> Client::ImagePull(const std::string& ref, const ImagePullOptions& options,
                                           const std::function<void(const ImagePullProgress&)>& on_progress) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::PullRequest req;
  req.set_ref(ref);
  req.set_name(options.name);
  for (const auto& h : options.insecure_registries) req.add_insecure_registries(h);
  req.set_platform(options.platform);
  req.set_ca_file(options.ca_file);
  if (!options.credentials.empty()) {
    req.mutable_credentials()->set_username(options.credentials.username);
    req.mutable_credentials()->set_password(options.credentials.password);
  }
  auto ctx = impl_->Context(kLongCall);
  auto reader = stub->Pull(ctx.get(), req);
  PADDOCK_ASSIGN_OR_RETURN(ImageImportResult out, ReadImportEvents(*reader, [&](const v1::ImportProgress& p) {
    if (on_progress) on_progress({p.phase(), p.message(), p.bytes_done(), p.bytes_total()});
  }, "pull"));
  if (out.images.empty()) return Error(Code::kInternal, "the daemon ended the pull without a result");
  return out;
}

Result<ImagePushResult> Client::ImagePush(const std::string& image, const std::string& ref,
                                         const ImagePushOptions& options,
                                         const std::function<void(const ImagePullProgress&)>& on_progress) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::PushRequest req;
  req.set_image(image);
  req.set_ref(ref);
  for (const auto& h : options.insecure_registries) req.add_insecure_registries(h);
  req.set_ca_file(options.ca_file);
  req.set_chunk_size(options.chunk_size);
  if (!options.credentials.empty()) {
    req.mutable_credentials()->set_username(options.credentials.username);
    req.mutable_credentials()->set_password(options.credentials.password);
  }
  auto ctx = impl_->Context(kLongCall);
  auto reader = stub->Push(ctx.get(), req);
  v1::PushEvent ev;
  ImagePushResult out;
  bool got = false;
  while (reader->Read(&ev)) {
    if (ev.has_progress()) {
      const auto& p = ev.progress();
      if (on_progress) on_progress({p.phase(), p.message(), p.bytes_done(), p.bytes_total()});
    } else if (ev.has_result()) {
      const auto& r = ev.result();
      out = {r.image(), r.ref(), r.manifest_digest(), r.blobs_total(), r.blobs_present(), r.blobs_mounted(),
             r.blobs_uploaded(), r.bytes_uploaded(), r.blobs_chunked(), r.chunk_resumes()};
      got = true;
    }
  }
  PADDOCK_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  if (!got) return Error(Code::kInternal, "the daemon ended the push without a result");
  return out;
}

Result<ImageImportResult> Client::ImageImportDir(const std::string& dir, const std::string& name,
                                                 const std::vector<std::string>& env,
                                                 const std::string& workdir) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::ImportDirRequest req;
  req.set_path(dir);
  req.set_name(name);
  for (const auto& e : env) req.add_env(e);
  req.set_workdir(workdir);
  v1::ImportDirResponse resp;
  auto ctx = impl_->Context(kLongCall);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(stub->ImportDir(ctx.get(), req, &resp)));
  ImageImportResult out;
  out.images = {resp.image()};
  out.names.assign(resp.names().begin(), resp.names().end());
  out.layers_total = 1;
  return out;
}

Result<std::vector<ImageSummary>> Client::ImageList() {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::ImageListRequest req;
  v1::ImageListResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(stub->List(ctx.get(), req, &resp)));
  std::vector<ImageSummary> out;
  for (const auto& i : resp.images())
    out.push_back({i.digest(), {i.names().begin(), i.names().end()}, i.layers(), i.stored_bytes()});
  return out;
}

Result<ImageDetail> Client::ImageInspect(const std::string& ref) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::InspectRequest req;
  req.set_ref(ref);
  v1::ImageDetail resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(stub->Inspect(ctx.get(), req, &resp)));
  ImageDetail out;
  out.digest = resp.digest();
  out.config_digest = resp.config_digest();
  out.workdir = resp.workdir();
  out.user = resp.user();
  out.names.assign(resp.names().begin(), resp.names().end());
  out.env.assign(resp.env().begin(), resp.env().end());
  out.entrypoint.assign(resp.entrypoint().begin(), resp.entrypoint().end());
  out.cmd.assign(resp.cmd().begin(), resp.cmd().end());
  for (const auto& l : resp.layers())
    out.layers.push_back({l.diff_id(), l.blob(), l.compression(), l.size(), l.uncompressed_size(),
                          l.materialized()});
  return out;
}

Result<std::string> Client::ImageRemove(const std::string& ref) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::RemoveImageRequest req;
  req.set_ref(ref);
  v1::RemoveImageResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(stub->Remove(ctx.get(), req, &resp)));
  return resp.image();
}

Result<ImageGcResult> Client::ImageGc(std::chrono::seconds grace) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::GcRequest req;
  req.set_grace_seconds(grace.count());
  v1::GcResponse resp;
  auto ctx = impl_->Context(kLongCall);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(stub->Gc(ctx.get(), req, &resp)));
  return ImageGcResult{resp.blobs_removed(), resp.bytes_freed(), resp.staging_removed()};
}

Result<std::string> Client::ImageExport(const std::string& ref, const std::string& dir) {
  auto stub = v1::Images::NewStub(impl_->channel);
  v1::ExportImageRequest req;
  req.set_ref(ref);
  req.set_dir(dir);
  v1::ExportImageResponse resp;
  auto ctx = impl_->Context(kLongCall);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(stub->Export(ctx.get(), req, &resp)));
  return resp.image();
}

Result<SnapshotInfo> Client::SnapshotImage(const std::string& id, const std::string& name) {
  v1::SnapshotRequest req;
  req.set_sandbox_id(id);
  req.set_name(name);
  v1::SnapshotResponse resp;
  auto ctx = impl_->Context(kLongCall);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Snapshot(ctx.get(), req, &resp)));
  return SnapshotInfo{resp.image(), resp.name(), resp.layer(), resp.layer_bytes()};
}

Result<uint64_t> Client::Pause(const std::string& id) {
  v1::PauseRequest req;
  req.set_sandbox_id(id);
  v1::PauseResponse resp;
  auto ctx = impl_->Context(kLongCall);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Pause(ctx.get(), req, &resp)));
  return resp.state_bytes();
}

Status Client::Resume(const std::string& id) {
  v1::ResumeRequest req;
  req.set_sandbox_id(id);
  v1::ResumeResponse resp;
  auto ctx = impl_->Context(kLongCall);
  return FromGrpc(impl_->stub->Resume(ctx.get(), req, &resp));
}

Result<std::vector<SandboxInfo>> Client::Fork(const std::string& id, uint32_t count) {
  v1::ForkRequest req;
  req.set_sandbox_id(id);
  req.set_count(count);
  v1::ForkResponse resp;
  auto ctx = impl_->Context(kLongCall);
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Fork(ctx.get(), req, &resp)));
  std::vector<SandboxInfo> out;
  for (const auto& p : resp.sandboxes()) out.push_back(FromProto(p));
  return out;
}

}  // namespace paddock::client
