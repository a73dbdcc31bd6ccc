#include "rollout/service/server.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <absl/synchronization/mutex.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include "sandbox/base/unique_fd.h"

namespace paddock::service {

namespace {
// Threads the sync server keeps waiting for calls at most (see Start).
constexpr int kMaxWaitingThreads = 64;
}  // namespace

Status RemoveStaleSocket(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoError(fmt::format("inspecting socket path {}", path));
  }
  if (!S_ISSOCK(st.st_mode))
    return Error(Code::kInvalidArgument, "{} exists and is not a socket; remove it or pass another --socket",
                 path);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return Error(Code::kInvalidArgument, "socket path {} is longer than {} bytes", path,
                 sizeof addr.sun_path - 1);
  path.copy(addr.sun_path, path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
    return Error(Code::kFailedPrecondition,
                 "another server is listening on {}; stop it or pass another --socket", path);
  if (errno != ECONNREFUSED) return ErrnoError(fmt::format("probing socket {}", path));
  if (unlink(path.c_str()) != 0 && errno != ENOENT)
    return ErrnoError(fmt::format("removing stale socket {}", path));
  spdlog::info("removed stale socket {} left by an earlier daemon", path);
  return Status::Ok();
}

SandboxServer::SandboxServer(SandboxManager& manager, ServerOptions options)
    : manager_(manager), options_(std::move(options)) {}

SandboxServer::~SandboxServer() {
  Shutdown(std::chrono::system_clock::now());
}

Status SandboxServer::Start() {
  namespace fs = std::filesystem;
  if (options_.socket_path.empty()) return Error(Code::kInvalidArgument, "no socket path given");
  std::error_code ec;
  fs::path parent = fs::path(options_.socket_path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec)
    return Error(Code::kPermissionDenied, "creating socket directory {}: {}", parent.string(),
                 ec.message());
  PADDOCK_RETURN_IF_ERROR(RemoveStaleSocket(options_.socket_path));

  int max_threads = options_.max_threads > 0
                        ? options_.max_threads
                        : static_cast<int>(std::min<uint64_t>(4ull * manager_.max_sandboxes() + 64, 1 << 16));
  ReplayParts replay;
  if (options_.log) {
    calls_ = std::make_unique<replay::IdempotentCalls>(*options_.log);
    bindings_ = std::make_unique<replay::EpisodeBindings>(*options_.log);
    replay = {calls_.get(), bindings_.get()};
    replay.log = options_.log;
  }
  // Debian's Abseil is built without NDEBUG, so by default every absl::Mutex
  // lock (gRPC takes several per call) runs Abseil's lock-order deadlock
  // detection through one process-wide graph under a global lock: measurable
  // CPU per call and a point where all of gRPC's threads meet. The daemon's
  // own locking is std::mutex; turn the debug check off.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // The unix socket is guarded by its file mode; the TCP listener by TLS
  // (when configured: required off loopback) and the bearer token.
  auto ListenerCredentials = [&](const std::string& address) -> std::shared_ptr<grpc::ServerCredentials> {
    if (address.rfind("unix:", 0) == 0 || options_.tls.cert_chain.empty()) return grpc::InsecureServerCredentials();
    grpc::SslServerCredentialsOptions ssl(options_.tls.client_ca.empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = options_.tls.client_ca;
    ssl.pem_key_cert_pairs.push_back({options_.tls.private_key, options_.tls.cert_chain});
    return grpc::SslServerCredentials(ssl);
  };
  auto build = [&](SandboxService* service, LogService* log_service, const std::string& address,
                   int* port, std::unique_ptr<grpc::Server>* out) -> Status {
    grpc::ServerBuilder builder;
    grpc::ResourceQuota quota("paddockd");
    quota.SetMaxThreads(max_threads);
    builder.SetResourceQuota(quota);
    // The sync server keeps between MIN_POLLERS and MAX_POLLERS threads waiting
    // for calls (per completion queue): a thread that finishes a call and
    // finds MAX_POLLERS already waiting ends, and one that takes a call and
    // leaves fewer than MIN_POLLERS waiting starts another. The default band
    // (1..2) makes every burst of more than two concurrent calls start threads
    // and end them again: with 16 clients fast-forwarding logged calls that
    // was ~1,400 thread starts and exits per second. A waiting thread costs
    // only its stack and ends after CQ_TIMEOUT_MSEC (10 s) idle when more than
    // MIN_POLLERS wait, so a wide band is cheap; the quota above still bounds
    // the threads in all.
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 2);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                                std::min(max_threads, kMaxWaitingThreads));
    builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
    builder.SetMaxSendMessageSize(kMaxMessageBytes);
    builder.AddListeningPort(address, ListenerCredentials(address), port);
    builder.RegisterService(service);
    if (log_service) builder.RegisterService(log_service);
    for (const auto& make : options_.extra_services) {
      extra_services_.push_back(make(address.rfind("unix:", 0) == 0 ? nullptr : &*auth_));
      builder.RegisterService(extra_services_.back().get());
    }
    *out = builder.BuildAndStart();
    if (!*out) return Error(Code::kUnavailable, "cannot listen on {}", address);
    return Status::Ok();
  };

  unix_service_ = std::make_unique<SandboxService>(manager_, nullptr, replay, options_.node);
  if (options_.log)
    unix_log_service_ = std::make_unique<LogService>(*options_.log, options_.log_dir);
  // gRPC creates the socket with the umask's mode. It listens under a
  // temporary name first, narrowed to root and the `paddock` group
  // (scripts/install-deps.sh creates it, its members may drive the daemon
  // without being root), then is renamed into place: whoever finds the socket
  // finds it with its final mode and owner.
  const std::string binding = options_.socket_path + ".new";
  if (binding.size() >= sizeof(sockaddr_un{}.sun_path))
    return Error(Code::kInvalidArgument, "socket path {} is too long (at most {} bytes)", options_.socket_path,
                 sizeof(sockaddr_un{}.sun_path) - 1 - 4);
  if (unlink(binding.c_str()) != 0 && errno != ENOENT)
    return ErrnoError(fmt::format("removing {}", binding));
  int unix_port = 0;
  PADDOCK_RETURN_IF_ERROR(build(unix_service_.get(), unix_log_service_.get(), "unix:" + binding, &unix_port,
                                &unix_server_));
  if (chmod(binding.c_str(), 0660) != 0) return ErrnoError(fmt::format("chmod 0660 {}", binding));
  if (struct group* g = getgrnam("paddock")) {
    if (chown(binding.c_str(), 0, g->gr_gid) != 0)
      return ErrnoError(fmt::format("chown root:paddock {}", binding));
  } else {
    spdlog::info("no group 'paddock' on this host: the socket {} is for root only", options_.socket_path);
  }
  if (rename(binding.c_str(), options_.socket_path.c_str()) != 0)
    return ErrnoError(fmt::format("renaming {} to {}", binding, options_.socket_path));
  spdlog::info("listening on unix:{}", options_.socket_path);

  if (!options_.tcp_address.empty()) {
    if (options_.token.empty())
      return Error(Code::kInvalidArgument, "a TCP listener needs a token; pass --token-file");
    auth_.emplace(options_.token);
    tcp_service_ = std::make_unique<SandboxService>(manager_, &*auth_, replay, options_.node);
    if (options_.log)
      tcp_log_service_ = std::make_unique<LogService>(*options_.log, options_.log_dir, &*auth_);
    PADDOCK_RETURN_IF_ERROR(build(tcp_service_.get(), tcp_log_service_.get(), options_.tcp_address,
                                  &tcp_port_, &tcp_server_));
    if (tcp_port_ == 0)
      return Error(Code::kUnavailable, "cannot listen on {}; is the port in use?", options_.tcp_address);
    spdlog::info("listening on tcp {} (port {}, {}); calls need a bearer token", options_.tcp_address, tcp_port_,
                 options_.tls.cert_chain.empty()   ? "plain: loopback only"
                 : options_.tls.client_ca.empty() ? "TLS"
                                                  : "mutual TLS");
  }
  return Status::Ok();
}

void SandboxServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  // Both servers stop accepting at once; each waits for its own handlers.
  if (tcp_server_) tcp_server_->Shutdown(deadline);
  if (unix_server_) unix_server_->Shutdown(deadline);
  if (unix_server_) unlink(options_.socket_path.c_str());
}

}  // namespace paddock::service
