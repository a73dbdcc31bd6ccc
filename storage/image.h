// Image documents: the manifest (ordered layers) and the config, both JSON blobs.
#pragma once

#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "storage/layer.h"

namespace paddock::storage {

// What a sandbox needs from an image config. The config blob itself is the OCI
// image config JSON, kept verbatim from import so export reproduces its digest.
struct ImageConfig {
  std::vector<std::string> env;         // "KEY=value"
  std::string cwd;                      // WorkingDir; empty means "/"
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::string user;                     // "uid[:gid]" or a name
};

// Parses the "config" section of an OCI/docker image config, and its rootfs.diff_ids.
Result<ImageConfig> ParseImageConfig(std::string_view oci_config_json);
Result<std::vector<Digest>> ParseDiffIds(std::string_view oci_config_json);
// A minimal OCI image config for images we build (directories, snapshots).
std::string MakeOciConfig(const ImageConfig& config, const std::vector<Digest>& diff_ids);

// Paddock's manifest: media type application/vnd.paddock.image.manifest.v1+json.
// Its digest is the image id. Encoding is canonical (sorted keys, no spaces).
struct Manifest {
  Digest config;                    // OCI config blob
  std::vector<StoredLayer> layers;  // bottom first
  std::string Encode() const;
  static Result<Manifest> Decode(std::string_view json);
};

}  // namespace paddock::storage
