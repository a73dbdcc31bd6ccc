// Egress for a sandbox whose network namespace has only loopback: an HTTP
// proxy whose listening socket the daemon opens *inside* that namespace
// (127.0.0.1:3128 there) and serves from the host's. Programs in the sandbox
// reach the outside only through it (HTTP_PROXY / HTTPS_PROXY are set), with
// `CONNECT host:port` (HTTPS and any TCP) or an absolute-URI request (plain
// HTTP). Every destination is checked against the sandbox's allow list and
// refused, whatever the list says, when it resolves to this host, a loopback,
// link-local (169.254.169.254: cloud metadata), multicast or unspecified
// address. A sandbox has no route of its own: nothing else leaves it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/init/protocol.h"

namespace paddock {

// One allow-list entry: "host", "host:port", "*.domain[:port]", "IP[:port]",
// "CIDR[:port]" ("[v6]:port" for IPv6 with a port). No port: any port.
struct EgressRule {
  enum class Kind { kHost, kSuffix, kCidr } kind = Kind::kHost;
  std::string host;         // kHost: exact (lowercase); kSuffix: ".domain"
  std::vector<uint8_t> net; // kCidr: address bytes (4 or 16)
  int prefix = 0;           // kCidr
  int port = 0;             // 0: any
  std::string text;         // as given, for messages
};

// Parses an allow list; INVALID_ARGUMENT names the bad entry.
Result<std::vector<EgressRule>> ParseEgressRules(const std::vector<std::string>& allow);

struct EgressLimits {
  int max_connections = 32;               // at once, per sandbox
  uint64_t bytes_per_second = 32ull << 20;  // per sandbox, both directions together
};

// The port the proxy listens on inside the sandbox.
inline constexpr int kEgressProxyPort = init::kEgressProxyPort;

class EgressProxy {
 public:
  // Opens the listener in the network namespace of process `pid` (the
  // sandbox's init) and starts serving. Stops (closing every connection) when
  // destroyed.
  static Result<std::unique_ptr<EgressProxy>> Start(pid_t pid, std::vector<EgressRule> rules,
                                                    EgressLimits limits = {});
  // A proxy without a listener of its own: its connections come through
  // ServeConnected (a microVM guest's, carried over its init channel).
  static std::unique_ptr<EgressProxy> WithoutListener(std::vector<EgressRule> rules, EgressLimits limits = {});
  ~EgressProxy();
  EgressProxy(const EgressProxy&) = delete;
  EgressProxy& operator=(const EgressProxy&) = delete;

  // Environment for the sandbox's commands: HTTP_PROXY, HTTPS_PROXY (both
  // cases) and NO_PROXY for loopback.
  static std::vector<std::pair<std::string, std::string>> ProxyEnv();

  // Serves a connection already open to a client (one end of a socketpair)
  // as if accepted from the listener: the same rules and caps (beyond the
  // connection cap it is answered 503 and closed). Never blocks.
  void ServeConnected(UniqueFd client);

 private:
  EgressProxy(UniqueFd listener, std::vector<EgressRule> rules, EgressLimits limits);
  void AcceptLoop();
  void Adopt(int client);
  void Serve(int client);
  // Checks the destination and connects; "" with *fd set, else why it was refused.
  std::string Connect(const std::string& host, int port, int* fd);
  bool Throttle(size_t bytes);

  UniqueFd listener_;
  const std::vector<EgressRule> rules_;
  const EgressLimits limits_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};  // connection threads still running (detached)
  std::mutex mu_;  // the bandwidth budget and the connection list
  double budget_ = 0;
  std::chrono::steady_clock::time_point refilled_;
  std::vector<int> open_fds_;
  std::thread accept_thread_;
};

}  // namespace paddock
