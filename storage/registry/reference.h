// Image references as registries and users write them:
//   [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:HEX]
// The first component is a registry host when it holds a '.' or ':' or is
// "localhost" (the rule docker and skopeo use); otherwise the image is on Docker
// Hub, whose one-component names live under "library/".
#pragma once

#include <string>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::storage::registry {

struct Reference {
  std::string registry;    // as written ("127.0.0.1:5000", "docker.io")
  std::string repository;  // "test/busybox", "library/debian"
  std::string tag;         // empty when only a digest was given
  std::string digest;      // "sha256:<hex>" or empty

  // HOST[:PORT] to connect to ("registry-1.docker.io" for docker.io).
  std::string ApiHost() const;
  // What GET /v2/<repository>/manifests/<this> names: the digest when given.
  std::string ManifestRef() const { return digest.empty() ? tag : digest; }
  // The reference, fully spelled: "registry/repository:tag[@digest]".
  std::string str() const;
  // The store name a pull gives the image when none is asked for:
  // "registry/repository:tag"; empty for a reference by digest only.
  std::string DefaultName() const;
};

// INVALID_ARGUMENT naming the reference and what is wrong with it.
Result<Reference> ParseReference(std::string_view text);

}  // namespace paddock::storage::registry
