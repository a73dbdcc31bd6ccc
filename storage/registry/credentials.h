// Registry credentials and where they come from: docker's config file format
//   {"auths": {"HOST[:PORT]": {"auth": base64("user:pass")}
//                            | {"username": "...", "password": "..."}}}
// as written by `docker login` (~/.docker/config.json) or by hand (`paddock image
// pull/push --creds-file`, `paddockd --registry-creds-file`).
//
// Credential helpers (`credsStore`, `credHelpers`) are programs docker runs; this
// code never runs them: an entry found only there is reported in `note` and the
// registry is spoken to anonymously.
//
// Credentials are secrets: nothing here logs them, and Credentials has no
// printer; error messages name the file and the registry, never the values.
#pragma once

#include <string>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::storage::registry {

struct Credentials {
  std::string username;
  std::string password;  // a password or an access token
  bool empty() const { return username.empty() && password.empty(); }
};

struct CredentialLookup {
  Credentials creds;  // empty: none for this registry (anonymous)
  std::string note;   // why an entry was passed over (a credential helper), or ""
};

// The entry of `config_json` (read from `source`, named in errors) for
// `registry` ("host[:port]" as in a reference; docker.io also matches docker's
// "https://index.docker.io/v1/" key). Keys may carry a scheme and a path
// ("https://host:5000/v2/"), which are ignored. INVALID_ARGUMENT naming `source`
// when the file is not such a document or the matching entry is malformed.
Result<CredentialLookup> FindCredentials(std::string_view config_json, const std::string& registry,
                                         const std::string& source);

// Reads `path` (≤ 1 MiB) and looks `registry` up in it. NOT_FOUND when the file
// does not exist.
Result<CredentialLookup> ReadCredentialsFile(const std::string& path, const std::string& registry);

// The registry part of an image reference as credentials are keyed by it:
// "host[:port]" when the first component holds a '.' or ':' or is "localhost"
// (reference.h's rule), else "docker.io". For the CLI, which does not parse
// references fully (the daemon does).
std::string RegistryOfReference(std::string_view ref);

// The user's docker config: $DOCKER_CONFIG/config.json, else
// $HOME/.docker/config.json ("" when neither variable is set).
std::string DefaultDockerConfigPath();

// base64 (standard alphabet, padded), for `Authorization: Basic` and `auth`.
std::string Base64Encode(std::string_view bytes);
Result<std::string> Base64Decode(std::string_view text);

}  // namespace paddock::storage::registry
