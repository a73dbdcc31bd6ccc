// Image resolution: what a substrate mounts for `SandboxSpec::image`.
//
// A reference is one of
//   * an image name ("name:tag"; "name" means "name:latest"), a digest
//     ("sha256:<hex>") or a unique digest prefix (≥ 4 hex characters), looked
//     up in the daemon's ImageStore; its layers are materialized once per node
//     by the LayerCache and handed out as read-only directories;
//   * an absolute path to a root filesystem directory: the development form
//     (one layer, no config), kept so a rootfs on disk can be used without an
//     import. `paddock image import-dir` turns such a directory into an image.
//     The daemon refuses it unless started with --allow-dir-images, and even
//     then only for Creates from its unix socket (SandboxSpec::
//     host_dir_image_ok), never from TCP clients or task files; `/` and the
//     host's system directories are refused always (RefuseSystemDirectory);
//   * a registry reference the store does not hold ("127.0.0.1:5000/swe/
//     django:4.2", "reg.example/x@sha256:…"): pulled on first use through the
//     resolver's RegistryFetcher (storage/store_image_resolver.h; paddockd's,
//     storage/registry/on_demand_pull.h
//     says which texts are references and how one pull per node is kept), then
//     served from the store like any stored image.
//
// Substrates never look at the store themselves: they call an ImageResolver
// (SubstrateEnv::images) and mount `layer_dirs`. sandbox/ declares the
// interface and knows nothing of the store: the store-backed resolver is
// storage/store_image_resolver.h (paddock_store_images), which the daemon
// hands its substrates. The lease keeps the layers
// materialized (not evictable from the cache) while it is held, so a sandbox
// holds it for its whole life.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock {

struct ResolvedImage {
  // Stable identity of what is mounted: "sha256:<manifest hex>" for a stored
  // image, the canonical path for a directory. Warm pools and zygotes are keyed
  // by it, so two names of one image share them.
  std::string id;
  std::string ref;  // what the user asked for
  // Materialized layers, bottom first; one entry for a plain directory. Each is
  // a plain directory tree whose whiteouts are in overlayfs form, to be stacked
  // as overlay lowerdir=top:...:bottom.
  std::vector<std::string> layer_dirs;
  // From the image config (empty for a directory): defaults under the spec's.
  std::vector<std::string> env;  // "KEY=value"
  std::string workdir;
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::string user;
  // Keeps the layers materialized while held (null for a directory).
  std::shared_ptr<void> lease;
  bool from_store() const { return id.rfind("sha256:", 0) == 0; }
};

// Produces a layer as an uncompressed OCI tar, pushing bytes into `sink`.
using TarSink = std::function<Status(const void* data, size_t n)>;
using TarProducer = std::function<Status(const TarSink& sink)>;

struct SnapshotResult {
  std::string image;       // "sha256:<manifest hex>" of the new image
  std::string name;        // normalized name:tag it was given ("" when none)
  std::string layer;       // diff_id of the new top layer
  uint64_t layer_bytes = 0;  // its uncompressed tar size
};

// What a pause with memory saved (Sandbox::Pause).
struct PauseResult {
  uint64_t state_bytes = 0;  // the saved memory and device state, on disk
  std::string path;          // where it lies (under the daemon's state dir)
};

// Who asks for an image, which bounds what naming it may reach.
struct ImageAccess {
  bool host_dir_ok = false;   // may name a host directory (SandboxSpec::host_dir_image_ok)
  bool local_client = false;  // may pull from loopback and insecure registries (SandboxSpec::local_client)
};

class ImageResolver {
 public:
  virtual ~ImageResolver() = default;
  // NOT_FOUND names the reference and says how to list images.
  virtual Result<ResolvedImage> Resolve(const std::string& ref, const ImageAccess& access) = 0;
  // Commits `top` (a layer tar) on top of `base`'s layers as a new image named
  // `name` (may be empty), with base's config. A directory base is imported
  // first as a one-layer image.
  virtual Result<SnapshotResult> CommitLayer(const ResolvedImage& base, const TarProducer& top,
                                             const std::string& name) {
    (void)base, (void)top, (void)name;
    return Error(Code::kUnimplemented, "this daemon has no image store to commit snapshots into");
  }
};

// Resolves absolute directories only (the development form of an in-process
// library user, which no daemon uses); anything else is refused with a
// message saying an image store is needed.
class DirectoryImageResolver final : public ImageResolver {
 public:
  Result<ResolvedImage> Resolve(const std::string& ref, const ImageAccess& access) override;
};

// A host directory as a one-layer image (the development form), for resolvers
// that allow it: the canonical directory as id, no config.
Result<ResolvedImage> ResolveHostDirectoryImage(const std::string& ref);

// `env` (SubstrateEnv::images) when set, else a process-wide DirectoryImageResolver.
ImageResolver& ResolverOrDefault(ImageResolver* env);

// Applies the image config's env and workdir as defaults under the spec's:
// keys the spec sets win; `workdir` is replaced only when empty.
void ApplyImageDefaults(const ResolvedImage& image, std::map<std::string, std::string>* env,
                        std::string* workdir);

}  // namespace paddock
