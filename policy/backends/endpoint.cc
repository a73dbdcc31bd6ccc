#include "policy/backends/endpoint.h"

#include <algorithm>
#include <cctype>

namespace paddock::policy {

Result<Endpoint> ParseEndpoint(std::string_view url) {
  constexpr std::string_view kHttp = "http://";
  constexpr std::string_view kHttps = "https://";
  Endpoint ep;
  std::string_view rest;
  if (url.rfind(kHttps, 0) == 0) {
    ep.tls = true;
    rest = url.substr(kHttps.size());
  } else if (url.rfind(kHttp, 0) == 0) {
    rest = url.substr(kHttp.size());
  } else {
    return Error(Code::kInvalidArgument,
                 "inference server URL '{}' must start with http:// or https://", url);
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);

  ep.base_path = std::string(path);
  if (!authority.empty() && authority.front() == '[') {  // [v6]:port
    size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return Error(Code::kInvalidArgument, "inference server URL '{}': unclosed '['", url);
    }
    ep.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (!authority.empty() && authority.front() == ':') ep.port = std::string(authority.substr(1));
  } else {
    size_t colon = authority.rfind(':');
    ep.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) ep.port = std::string(authority.substr(colon + 1));
  }
  if (ep.port.empty()) ep.port = ep.tls ? "443" : "80";
  if (ep.host.empty()) {
    return Error(Code::kInvalidArgument, "inference server URL '{}' has no host", url);
  }
  if (!std::all_of(ep.port.begin(), ep.port.end(), [](unsigned char c) { return std::isdigit(c); }) ||
      ep.port.size() > 5 || std::stoi(ep.port) > 65535) {
    return Error(Code::kInvalidArgument, "inference server URL '{}': bad port '{}'", url, ep.port);
  }
  return ep;
}

}  // namespace paddock::policy
