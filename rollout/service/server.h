// The daemon's listeners: a gRPC server on a unix socket (no token; the socket
// file's 0660 mode decides who may connect) and, optionally, a second server on
// TCP whose service instance demands a bearer token. Two servers rather than
// one with two ports, because gRPC gives a handler no reliable way to tell which
// port a call came in on; per-listener service instances make "the unix socket
// needs no token" true by construction.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "replay/idempotent_calls.h"
#include "replay/trajectory_log.h"
#include "rollout/service/auth.h"
#include "rollout/service/log_service.h"
#include "rollout/service/sandbox_service.h"
#include "sandbox/manager.h"

namespace paddock::service {

inline constexpr int kMaxMessageBytes = 128 << 20;  // both directions

struct ServerOptions {
  std::string socket_path;  // required
  std::string tcp_address;  // "host:port"; empty: no TCP listener. Port 0 picks one.
  std::string token;        // required when tcp_address is set
  // TLS on the TCP listener (cert_chain empty: plain, loopback only; the
  // daemon's flag parsing enforces that).
  ServerTls tls;
  // Bound on gRPC's sync-server threads (one per in-flight call, and a blocked
  // Exec holds one for its whole run). 0: 4 per allowed sandbox plus 64.
  int max_threads = 0;
  // The daemon's open trajectory log (outlives the server). With it, keyed
  // Exec/WriteFile, `Create --episode` and the Log service work; without it
  // they are refused and the Log service is not served.
  replay::TrajectoryLog* log = nullptr;
  std::string log_dir;  // where `log` lives, for messages
  // Leases of fronts, image names and drain state, for fronts placing
  // sandboxes on this daemon (rollout/fleet).
  NodeParts node;
  // More services served on every listener: each is built once per listener
  // with that listener's auth (null for the unix socket), e.g. the Images service.
  std::vector<std::function<std::unique_ptr<grpc::Service>(const BearerTokenAuth*)>> extra_services;
};

class SandboxServer {
 public:
  SandboxServer(SandboxManager& manager, ServerOptions options);
  ~SandboxServer();

  // Prepares the socket path (creates its parent directory, removes a stale
  // socket a crashed daemon left; refuses when a live server answers there),
  // starts listening and sets the socket's mode to 0660.
  Status Start();
  // The TCP port actually bound (useful with port 0); 0 without TCP.
  int tcp_port() const { return tcp_port_; }
  // Stops accepting calls; in-flight calls get until `deadline` to finish,
  // then are cancelled. Blocks until every handler has returned. Removes the
  // socket file. Idempotent.
  void Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  SandboxManager& manager_;
  ServerOptions options_;
  std::optional<BearerTokenAuth> auth_;
  std::unique_ptr<replay::IdempotentCalls> calls_;
  std::unique_ptr<replay::EpisodeBindings> bindings_;
  std::unique_ptr<SandboxService> unix_service_;
  std::unique_ptr<SandboxService> tcp_service_;
  std::unique_ptr<LogService> unix_log_service_;
  std::unique_ptr<LogService> tcp_log_service_;
  std::vector<std::unique_ptr<grpc::Service>> extra_services_;  // outlive the servers
  std::unique_ptr<grpc::Server> unix_server_;
  std::unique_ptr<grpc::Server> tcp_server_;
  int tcp_port_ = 0;
  bool shut_down_ = false;
};

// Removes `path` if it is a socket nobody listens on (a crashed daemon's).
// FAILED_PRECONDITION when a server answers there; INVALID_ARGUMENT when it is
// not a socket.
Status RemoveStaleSocket(const std::string& path);

}  // namespace paddock::service
