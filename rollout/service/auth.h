// Bearer-token authentication for the daemon's TCP listener.
//
// The unix socket needs no token: its file permissions (0660, root) already say
// who may connect. A TCP port has no such guard, so every call arriving on it
// must carry `authorization: Bearer <token>` metadata.
//
// Why not grpc::AuthMetadataProcessor: gRPC only runs it on TLS credentials,
// and InsecureServerCredentials() refuses one outright. The check therefore
// runs at the top of every handler of the TCP listener's service instance
// (see SandboxService), which gives the same UNAUTHENTICATED answer.
#pragma once

#include <string>

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "sandbox/base/status.h"

namespace paddock::service {

class BearerTokenAuth {
 public:
  // `token` must be non-empty (LoadTokenFile guarantees it).
  explicit BearerTokenAuth(std::string token);

  // OK when the call carries `authorization: Bearer <token>`; UNAUTHENTICATED
  // (with a message saying what is missing) otherwise. Compares in constant
  // time so the token cannot be guessed byte by byte from response timings.
  grpc::Status Check(const grpc::ServerContext& ctx) const;

 private:
  std::string token_;
};

// Reads a token file: its content with surrounding whitespace trimmed. Refuses a
// missing or empty file with a message naming the file.
Result<std::string> LoadTokenFile(const std::string& path);

}  // namespace paddock::service
