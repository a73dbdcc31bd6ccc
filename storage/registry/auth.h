// Registry authentication challenges (RFC 7235 WWW-Authenticate) and the
// distribution token flow: a 401 carrying
//   WWW-Authenticate: Bearer realm="https://auth.example/token",service="reg",scope="repository:x:pull"
// is answered by GET realm?service=…&scope=… (with basic credentials when there
// are any) for a JSON {"token": …} or {"access_token": …}, which later requests
// carry as `Authorization: Bearer …`. `Basic realm=…` wants the credentials on
// each request. RegistryClient (registry_client.h) drives this.
//
// Rules for secrets: credentials (basic or a token) are never sent over plain
// HTTP to a host that is not loopback, the realm is spoken to under the same
// rules as the registry (plain HTTP only to loopback or --insecure-registry
// hosts, loopback refused for TCP clients), its answer is bounded (64 KiB,
// the request deadline), and its redirects are not followed.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/registry/credentials.h"
#include "storage/registry/http_get.h"

namespace paddock::storage::registry {

struct Challenge {
  std::string scheme;                         // lowercase: "basic", "bearer", …
  std::map<std::string, std::string> params;  // lowercase names: realm, service, scope
};

// The first challenge of a WWW-Authenticate value; INVALID_ARGUMENT when it is
// not `scheme [name=value|name="quoted value"],…`.
Result<Challenge> ParseChallenge(std::string_view header);

// Whether credentials may be sent to `url`: TLS, or a loopback host.
bool MaySendCredentials(const Url& url);

// "Basic base64(user:password)".
std::string BasicAuthorization(const Credentials& creds);

constexpr uint64_t kMaxTokenResponseBytes = 64 << 10;

// GET the bearer challenge's realm with its service and `scopes` (the
// challenge's own scope first), with basic `creds` unless they are empty.
// Errors name `who` (the reference) and the realm's host: UNAUTHENTICATED when
// the token server refuses the credentials (401/403), PERMISSION_DENIED when the
// realm is plain HTTP to a non-loopback host and there are credentials to send,
// or is refused by `http`'s rules, DATA_LOSS for an answer over 64 KiB or
// without a token, and the transport's errors.
Result<std::string> FetchBearerToken(const Challenge& challenge, const std::vector<std::string>& scopes,
                                     const Credentials& creds, const HttpGetOptions& http,
                                     Clock::time_point deadline, const std::string& who);

}  // namespace paddock::storage::registry
