#include "sandbox/network/egress_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

namespace paddock {

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxRequestHead = 16 << 10;
constexpr int kHeadTimeoutMs = 10'000;
constexpr int kConnectTimeoutMs = 10'000;
constexpr int kIdleTimeoutMs = 300'000;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// "1.2.3.4" or "::1" → bytes; empty when not an address.
std::vector<uint8_t> ParseIp(const std::string& s) {
  in_addr v4{};
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    auto* b = reinterpret_cast<uint8_t*>(&v4);
    return {b, b + 4};
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) return {v6.s6_addr, v6.s6_addr + 16};
  return {};
}

bool InPrefix(const std::vector<uint8_t>& ip, const std::vector<uint8_t>& net, int prefix) {
  if (ip.size() != net.size()) return false;
  for (int i = 0; i < prefix; ++i) {
    int byte = i / 8, bit = 7 - i % 8;
    if (((ip[byte] >> bit) & 1) != ((net[byte] >> bit) & 1)) return false;
  }
  return true;
}

// Splits "host:port" / "[v6]:port" / "host"; port 0 when absent. False on a bad port.
bool SplitHostPort(const std::string& s, std::string* host, int* port) {
  *port = 0;
  std::string p;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos) return false;
    *host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return false;
      p = s.substr(close + 2);
    }
  } else {
    size_t colon = s.rfind(':');
    // A bare IPv6 address (several colons) or CIDR has no port.
    if (colon != std::string::npos && s.find(':') == colon) {
      *host = s.substr(0, colon);
      p = s.substr(colon + 1);
    } else {
      *host = s;
    }
  }
  if (!p.empty()) {
    if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) return false;
    *port = std::stoi(p);
    if (*port < 1 || *port > 65535) return false;
  }
  return !host->empty();
}

// Addresses no sandbox may reach: loopback, link-local (cloud metadata),
// unspecified, multicast, broadcast, and this host's own.
std::string ForbiddenReason(const std::vector<uint8_t>& ip) {
  if (ip.size() == 4) {
    if (ip[0] == 127) return "a loopback address";
    if (ip[0] == 169 && ip[1] == 254) return "a link-local address (cloud metadata lives there)";
    if (ip[0] == 0) return "an unspecified address";
    if (ip[0] >= 224) return "a multicast or reserved address";
  } else if (ip.size() == 16) {
    static const uint8_t loop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const uint8_t zero[16] = {};
    if (std::memcmp(ip.data(), loop, 16) == 0) return "a loopback address";
    if (std::memcmp(ip.data(), zero, 16) == 0) return "an unspecified address";
    if (ip[0] == 0xfe && (ip[1] & 0xc0) == 0x80) return "a link-local address";
    if (ip[0] == 0xff) return "a multicast address";
    // IPv4-mapped: judge the IPv4 address.
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(ip.data(), mapped, 12) == 0) return ForbiddenReason({ip.begin() + 12, ip.end()});
  }
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) == 0) {
    std::string why;
    for (ifaddrs* i = ifs; i && why.empty(); i = i->ifa_next) {
      if (!i->ifa_addr) continue;
      std::vector<uint8_t> mine;
      if (i->ifa_addr->sa_family == AF_INET) {
        auto* b = reinterpret_cast<const uint8_t*>(&reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr);
        mine.assign(b, b + 4);
      } else if (i->ifa_addr->sa_family == AF_INET6) {
        auto* b = reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr.s6_addr;
        mine.assign(b, b + 16);
      }
      if (!mine.empty() && mine == ip) why = "an address of the daemon's host";
    }
    freeifaddrs(ifs);
    if (!why.empty()) return why;
  }
  return "";
}

std::string IpText(const std::vector<uint8_t>& ip) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(ip.size() == 4 ? AF_INET : AF_INET6, ip.data(), buf, sizeof buf);
  return buf;
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void Refuse(int client, int code, const std::string& why) {
  const char* reason = code == 403 ? "Forbidden" : code == 400 ? "Bad Request" : code == 503 ? "Service Unavailable" : "Bad Gateway";
  std::string body = "paddock egress: " + why + "\n";
  std::string head = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: text/plain\r\n" +
                     "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  WriteAll(client, head.data(), head.size());
  WriteAll(client, body.data(), body.size());
}

}  // namespace

Result<std::vector<EgressRule>> ParseEgressRules(const std::vector<std::string>& allow) {
  std::vector<EgressRule> out;
  for (const auto& text : allow) {
    EgressRule r;
    r.text = text;
    std::string host;
    size_t slash = text.find('/');
    std::string addr_part = text;
    std::string prefix_part;
    if (slash != std::string::npos) {
      // CIDR, possibly with ":port" after the prefix length.
      addr_part = text.substr(0, slash);
      prefix_part = text.substr(slash + 1);
      size_t colon = prefix_part.find(':');
      if (colon != std::string::npos) {
        std::string port = prefix_part.substr(colon + 1);
        prefix_part = prefix_part.substr(0, colon);
        if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
            std::stoi(port) < 1 || std::stoi(port) > 65535)
          return Error(Code::kInvalidArgument, "network allow entry '{}': bad port", text);
        r.port = std::stoi(port);
      }
      r.net = ParseIp(addr_part);
      if (r.net.empty() || prefix_part.empty() || prefix_part.size() > 3 ||
          prefix_part.find_first_not_of("0123456789") != std::string::npos)
        return Error(Code::kInvalidArgument, "network allow entry '{}': expected ADDRESS/PREFIX[:PORT]", text);
      r.prefix = std::stoi(prefix_part);
      if (r.prefix > static_cast<int>(r.net.size() * 8))
        return Error(Code::kInvalidArgument, "network allow entry '{}': prefix too long", text);
      r.kind = EgressRule::Kind::kCidr;
      out.push_back(std::move(r));
      continue;
    }
    if (!SplitHostPort(text, &host, &r.port))
      return Error(Code::kInvalidArgument, "network allow entry '{}': expected HOST[:PORT], *.DOMAIN[:PORT] or CIDR",
                   text);
    host = Lower(host);
    if (auto ip = ParseIp(host); !ip.empty()) {
      r.kind = EgressRule::Kind::kCidr;
      r.net = ip;
      r.prefix = static_cast<int>(ip.size() * 8);
    } else if (host.rfind("*.", 0) == 0 && host.size() > 2) {
      r.kind = EgressRule::Kind::kSuffix;
      r.host = host.substr(1);  // ".domain"
    } else if (host.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-.") == std::string::npos) {
      r.kind = EgressRule::Kind::kHost;
      r.host = host;
    } else {
      return Error(Code::kInvalidArgument, "network allow entry '{}': '{}' is not a host name, address or *.domain",
                   text, host);
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> EgressProxy::ProxyEnv() {
  const std::string url = "http://127.0.0.1:" + std::to_string(kEgressProxyPort);
  return {{"HTTP_PROXY", url},  {"HTTPS_PROXY", url}, {"http_proxy", url},
          {"https_proxy", url}, {"NO_PROXY", "localhost,127.0.0.1,::1"}, {"no_proxy", "localhost,127.0.0.1,::1"}};
}

Result<std::unique_ptr<EgressProxy>> EgressProxy::Start(pid_t pid, std::vector<EgressRule> rules,
                                                        EgressLimits limits) {
  UniqueFd ns(open(fmt::format("/proc/{}/ns/net", pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns.valid()) return ErrnoError(fmt::format("opening the network namespace of {}", pid));
  // A network namespace is per thread: a short-lived thread enters the
  // sandbox's, makes the listening socket there and ends; the socket stays
  // in that namespace, served from any thread.
  Result<int> made = Error(Code::kInternal, "not made");
  std::thread([&] {
    if (setns(ns.get(), CLONE_NEWNET) != 0) {
      made = ErrnoError("entering the sandbox's network namespace");
      return;
    }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
      made = ErrnoError("socket for the egress proxy");
      return;
    }
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(kEgressProxyPort);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(s, 64) != 0) {
      made = ErrnoError("listening on 127.0.0.1:3128 in the sandbox");
      close(s);
      return;
    }
    made = s;
  }).join();
  if (!made.ok()) return made.status();
  return std::unique_ptr<EgressProxy>(new EgressProxy(UniqueFd(*made), std::move(rules), limits));
}

std::unique_ptr<EgressProxy> EgressProxy::WithoutListener(std::vector<EgressRule> rules, EgressLimits limits) {
  return std::unique_ptr<EgressProxy>(new EgressProxy(UniqueFd(), std::move(rules), limits));
}

EgressProxy::EgressProxy(UniqueFd listener, std::vector<EgressRule> rules, EgressLimits limits)
    : listener_(std::move(listener)), rules_(std::move(rules)), limits_(limits) {
  budget_ = static_cast<double>(limits_.bytes_per_second);
  refilled_ = Clock::now();
  if (listener_.valid()) accept_thread_ = std::thread([this] { AcceptLoop(); });
}

EgressProxy::~EgressProxy() {
  stopping_ = true;
  if (listener_.valid()) ::shutdown(listener_.get(), SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  // Connection threads see their sockets shut and end; they use `this`
  // until then. Each socket is aborted, not closed gracefully (linger 0: a
  // reset, whatever is unsent or unacknowledged dropped): with a graceful
  // close the kernel goes on retransmitting a request its peer has not yet
  // acknowledged (a network partition), and delivers it seconds after the
  // sandbox that made it is gone, a side effect of a call that was never
  // answered.
  while (active_.load() > 0) {
    {
      std::lock_guard lock(mu_);
      for (int fd : open_fds_) {
        struct linger abort_on_close {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
        ::shutdown(fd, SHUT_RDWR);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void EgressProxy::AcceptLoop() {
  while (!stopping_) {
    int c = accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    Adopt(c);
  }
}

void EgressProxy::ServeConnected(UniqueFd client) {
  if (stopping_) return;
  Adopt(client.release());
}

void EgressProxy::Adopt(int c) {
  if (active_.load() >= limits_.max_connections) {
    Refuse(c, 503, fmt::format("this sandbox already has {} connections open (its limit)", limits_.max_connections));
    close(c);
    return;
  }
  ++active_;
  {
    std::lock_guard lock(mu_);
    open_fds_.push_back(c);
  }
  std::thread([this, c] {
    Serve(c);
    {
      std::lock_guard l(mu_);
      open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), c), open_fds_.end());
    }
    close(c);
    --active_;
  }).detach();
}

bool EgressProxy::Throttle(size_t bytes) {
  // A token bucket shared by the sandbox's connections (one second deep).
  for (;;) {
    if (stopping_) return false;
    {
      std::lock_guard lock(mu_);
      auto now = Clock::now();
      double rate = static_cast<double>(limits_.bytes_per_second);
      budget_ = std::min(rate, budget_ + rate * std::chrono::duration<double>(now - refilled_).count());
      refilled_ = now;
      if (budget_ >= static_cast<double>(bytes) || budget_ >= rate) {
        budget_ -= static_cast<double>(bytes);
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string EgressProxy::Connect(const std::string& host_in, int port, int* fd) {
  std::string host = Lower(host_in);
  if (!host.empty() && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  auto literal = ParseIp(host);
  // Which rules could allow this name (CIDR rules are checked per address).
  bool name_allowed = false;
  for (const auto& r : rules_) {
    if (r.port && r.port != port) continue;
    if (r.kind == EgressRule::Kind::kHost && literal.empty() && host == r.host) name_allowed = true;
    if (r.kind == EgressRule::Kind::kSuffix && literal.empty() && host.size() > r.host.size() &&
        host.compare(host.size() - r.host.size(), r.host.size(), r.host) == 0)
      name_allowed = true;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = literal.empty() ? 0 : AI_NUMERICHOST;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
    return fmt::format("{} does not resolve", host);
  std::string why = fmt::format("{}:{} is not in this sandbox's network allow list", host, port);
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    std::vector<uint8_t> ip;
    if (ai->ai_family == AF_INET) {
      auto* b = reinterpret_cast<const uint8_t*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr);
      ip.assign(b, b + 4);
    } else if (ai->ai_family == AF_INET6) {
      auto* b = reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr.s6_addr;
      ip.assign(b, b + 16);
    } else {
      continue;
    }
    if (std::string forbidden = ForbiddenReason(ip); !forbidden.empty()) {
      why = fmt::format("{} ({}) is {}, which no sandbox may reach", host, IpText(ip), forbidden);
      continue;
    }
    bool allowed = name_allowed;
    for (const auto& r : rules_)
      if (r.kind == EgressRule::Kind::kCidr && (!r.port || r.port == port) && InPrefix(ip, r.net, r.prefix))
        allowed = true;
    if (!allowed) continue;
    int s = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) continue;
    int rc = connect(s, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      // In slices, so that a stopping proxy (the sandbox destroyed) does not
      // wait out a slow connect.
      int err = ETIMEDOUT;
      for (int waited = 0; waited < kConnectTimeoutMs && !stopping_; waited += 100) {
        pollfd p{s, POLLOUT, 0};
        if (poll(&p, 1, 100) != 1) continue;
        socklen_t len = sizeof err;
        if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        break;
      }
      if (err == 0) rc = 0;
      else errno = err;
    }
    if (rc == 0) {
      fcntl(s, F_SETFL, fcntl(s, F_GETFL) & ~O_NONBLOCK);
      freeaddrinfo(res);
      *fd = s;
      return "";
    }
    why = fmt::format("connecting to {}:{}: {}", IpText(ip), port, std::strerror(errno));
    close(s);
  }
  freeaddrinfo(res);
  return why;
}

void EgressProxy::Serve(int client) {
  // The request head, bounded in size and time.
  std::string head;
  auto deadline = Clock::now() + std::chrono::milliseconds(kHeadTimeoutMs);
  while (head.find("\r\n\r\n") == std::string::npos) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    pollfd p{client, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) != 1) return;
    char buf[4096];
    ssize_t n = recv(client, buf, sizeof buf, 0);
    if (n <= 0) return;
    head.append(buf, static_cast<size_t>(n));
    if (head.size() > kMaxRequestHead) return Refuse(client, 400, "request head too large");
  }
  size_t head_end = head.find("\r\n\r\n") + 4;
  std::string line = head.substr(0, head.find("\r\n"));
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string::npos || sp2 == sp1) return Refuse(client, 400, "malformed request line");
  std::string method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string version = line.substr(sp2 + 1);
  std::string host;
  int port = 0;
  std::string forward;  // what goes to the server first (plain HTTP)
  if (method == "CONNECT") {
    if (!SplitHostPort(target, &host, &port) || port == 0) return Refuse(client, 400, "CONNECT needs host:port");
  } else {
    // Absolute-form HTTP: http://host[:port]/path → origin-form to the server.
    if (target.rfind("http://", 0) != 0)
      return Refuse(client, 400, "only CONNECT and absolute http:// requests go through the egress proxy");
    std::string rest = target.substr(7);
    size_t path_at = rest.find('/');
    std::string authority = rest.substr(0, path_at);
    std::string path = path_at == std::string::npos ? "/" : rest.substr(path_at);
    if (!SplitHostPort(authority, &host, &port)) return Refuse(client, 400, "bad host in the request");
    if (port == 0) port = 80;
    forward = method + " " + path + " " + version + "\r\n" + head.substr(line.size() + 2);
  }
  int upstream = -1;
  std::string why = Connect(host, port, &upstream);
  if (!why.empty()) {
    spdlog::info("egress refused: {}", why);
    return Refuse(client, 403, why);
  }
  UniqueFd up(upstream);
  {
    std::lock_guard lock(mu_);
    open_fds_.push_back(upstream);
  }
  if (method == "CONNECT") {
    static const char kOk[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    if (!WriteAll(client, kOk, sizeof kOk - 1)) return;
    if (head.size() > head_end && !WriteAll(upstream, head.data() + head_end, head.size() - head_end)) return;
  } else if (!WriteAll(upstream, forward.data(), forward.size())) {
    return;
  }
  // Both directions until either side closes, the idle limit passes, or the proxy stops.
  pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
  char buf[65536];
  while (!stopping_) {
    int n = poll(fds, 2, kIdleTimeoutMs);
    if (n <= 0) break;
    bool done = false;
    for (int i = 0; i < 2 && !done; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t r = recv(fds[i].fd, buf, sizeof buf, 0);
      if (r <= 0 || !Throttle(static_cast<size_t>(r)) || !WriteAll(fds[1 - i].fd, buf, static_cast<size_t>(r)))
        done = true;
    }
    if (done) break;
  }
  std::lock_guard lock(mu_);
  open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), upstream), open_fds_.end());
}

}  // namespace paddock
