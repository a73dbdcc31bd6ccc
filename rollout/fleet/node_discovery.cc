#include "rollout/fleet/node_discovery.h"

#include <netdb.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

namespace paddock::fleet {

namespace {

std::string Trim(std::string s) {
  auto sp = [](unsigned char c) { return std::isspace(c); };
  while (!s.empty() && sp(s.back())) s.pop_back();
  size_t i = 0;
  while (i < s.size() && sp(s[i])) ++i;
  return s.substr(i);
}

bool ValidPort(std::string_view p) {
  int port = 0;
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
  return ec == std::errc() && end == p.data() + p.size() && port >= 1 && port <= 65535;
}

constexpr size_t kMaxNodes = 4096;

}  // namespace

Status ValidateNodeAddress(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || address.size() > 300)
    return Error(Code::kInvalidArgument, "node address '{}' is not host:port", address.substr(0, 300));
  std::string host = address.substr(0, colon);
  if (!ValidPort(std::string_view(address).substr(colon + 1)))
    return Error(Code::kInvalidArgument, "node address '{}' has no valid port (1-65535)", address);
  if (host.front() == '[') {
    if (host.back() != ']' || host.size() < 4)
      return Error(Code::kInvalidArgument, "node address '{}': an IPv6 host is written [addr]:port", address);
    return Status::Ok();
  }
  for (char c : host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
      return Error(Code::kInvalidArgument, "node address '{}': the host may hold letters, digits, '.', '-' and '_'",
                   address);
  return Status::Ok();
}

Result<NodeDiscovery> NodeDiscovery::Parse(const std::string& spec_in) {
  NodeDiscovery d;
  d.spec_ = Trim(spec_in);
  const std::string& spec = d.spec_;
  if (spec.empty()) return Error(Code::kInvalidArgument, "--nodes is empty; name host:port,... or dns:NAME:PORT or file:PATH");
  if (spec.rfind("dns:", 0) == 0) {
    std::string rest = spec.substr(4);
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos || colon == 0 || !ValidPort(std::string_view(rest).substr(colon + 1)))
      return Error(Code::kInvalidArgument, "--nodes {}: expected dns:NAME:PORT, e.g. dns:paddock-nodes.default.svc:7443",
                   spec);
    d.kind_ = Kind::kDns;
    d.name_ = rest.substr(0, colon);
    d.port_ = rest.substr(colon + 1);
    PADDOCK_RETURN_IF_ERROR(ValidateNodeAddress(d.name_ + ":" + d.port_).Prefix("--nodes"));
    return d;
  }
  if (spec.rfind("file:", 0) == 0) {
    d.kind_ = Kind::kFile;
    d.path_ = spec.substr(5);
    if (d.path_.empty()) return Error(Code::kInvalidArgument, "--nodes file: names no file");
    return d;
  }
  std::stringstream ss(spec);
  std::string item;
  std::set<std::string> seen;
  while (std::getline(ss, item, ',')) {
    item = Trim(item);
    if (item.empty()) continue;
    PADDOCK_RETURN_IF_ERROR(ValidateNodeAddress(item).Prefix("--nodes"));
    if (seen.insert(item).second) d.list_.push_back(item);
  }
  if (d.list_.empty()) return Error(Code::kInvalidArgument, "--nodes '{}' names no node", spec);
  if (d.list_.size() > kMaxNodes) return Error(Code::kInvalidArgument, "--nodes names more than {} nodes", kMaxNodes);
  std::sort(d.list_.begin(), d.list_.end());
  return d;
}

Result<std::vector<std::string>> NodeDiscovery::Resolve() const {
  switch (kind_) {
    case Kind::kStatic:
      return list_;
    case Kind::kDns: {
      addrinfo hints{};
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      int rc = ::getaddrinfo(name_.c_str(), port_.c_str(), &hints, &res);
      if (rc != 0)
        return Error(Code::kUnavailable, "--nodes dns:{}:{}: {}", name_, port_, ::gai_strerror(rc));
      std::set<std::string> out;
      for (addrinfo* a = res; a && out.size() < kMaxNodes; a = a->ai_next) {
        char buf[INET6_ADDRSTRLEN] = {};
        if (a->ai_family == AF_INET) {
          ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, buf, sizeof buf);
          out.insert(std::string(buf) + ":" + port_);
        } else if (a->ai_family == AF_INET6) {
          ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, buf, sizeof buf);
          out.insert("[" + std::string(buf) + "]:" + port_);
        }
      }
      ::freeaddrinfo(res);
      if (out.empty()) return Error(Code::kUnavailable, "--nodes dns:{}:{} resolves to no address", name_, port_);
      return std::vector<std::string>(out.begin(), out.end());
    }
    case Kind::kFile: {
      std::ifstream in(path_);
      if (!in) return Error(Code::kUnavailable, "--nodes file:{}: cannot read it", path_);
      std::set<std::string> out;
      std::string line;
      size_t lineno = 0;
      while (std::getline(in, line) && out.size() < kMaxNodes) {
        ++lineno;
        if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
        line = Trim(line);
        if (line.empty()) continue;
        if (Status st = ValidateNodeAddress(line); !st.ok())
          return st.Prefix(fmt::format("--nodes file:{} line {}", path_, lineno));
        out.insert(line);
      }
      return std::vector<std::string>(out.begin(), out.end());
    }
  }
  return Error(Code::kInternal, "unknown node discovery");
}

}  // namespace paddock::fleet
