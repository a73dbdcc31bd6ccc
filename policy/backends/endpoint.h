// Where an inference server listens: parsed once from a URL such as
// "http://127.0.0.1:30000" or "http://host:8000/v1-prefix".
#pragma once

#include <string>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::policy {

struct Endpoint {
  std::string host;
  std::string port;       // numeric service, "80" when the URL gives none
  std::string base_path;  // without a trailing '/'; "" for the root

  // "host:port", the connection pool's key.
  std::string Authority() const { return host + ":" + port; }
  // base_path + path, path starting with '/'.
  std::string Target(std::string_view path) const { return base_path + std::string(path); }
};

// Accepts http:// URLs only (https is not supported yet: INVALID_ARGUMENT says so).
Result<Endpoint> ParseEndpoint(std::string_view url);

}  // namespace paddock::policy
