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

// TLS material of the TCP listener, as PEM text.
struct ServerTls {
  std::string cert_chain, private_key;
  std::string client_ca;  // non-empty: clients must present a certificate it signed
};

// Reads --tls-cert, --tls-key and (optional) --tls-client-ca. The key file
// must be private to its owner, as the token file.
Result<ServerTls> LoadServerTls(const std::string& cert_file, const std::string& key_file,
                                const std::string& client_ca_file);

// Reads a token file: its content with surrounding whitespace trimmed. Refuses a
// missing or empty file, and one that group or others may access (PERMISSION_
// DENIED), with a message naming the file.
Result<std::string> LoadTokenFile(const std::string& path);

}  // namespace paddock::service
