// Where an inference server listens: parsed once from a URL such as
// "http://127.0.0.1:30000", "http://host:8000/v1-prefix" or
// "https://api.deepseek.com".
#pragma once

#include <string>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::policy {

struct Endpoint {
  std::string host;
  std::string port;       // numeric service, "80" ("443" for https) when the URL gives none
  std::string base_path;  // without a trailing '/'; "" for the root
  bool tls = false;       // https://: TLS with certificate and hostname verification

  // "host:port", for messages.
  std::string Authority() const { return host + ":" + port; }
  // "http://host:port" or "https://host:port", the connection pool's key.
  std::string PoolKey() const { return (tls ? "https://" : "http://") + Authority(); }
  // base_path + path, path starting with '/'.
  std::string Target(std::string_view path) const { return base_path + std::string(path); }
};

// Accepts http:// and https:// URLs; anything else is INVALID_ARGUMENT.
Result<Endpoint> ParseEndpoint(std::string_view url);

}  // namespace paddock::policy
