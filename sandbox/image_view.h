// Read-only views of image layer directories as a substrate's user namespace
// sees them (idmapped mounts: host root's files belong to sandbox root).
// One view per directory per substrate, made on first use and shared by every
// sandbox of that substrate that holds it; removed when its last holder
// releases it (a materialized layer may then be evicted) and at shutdown.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/linux/userns.h"

namespace paddock {

// The development form of an image: an absolute path to a root filesystem
// directory (sandbox/image_source.h resolves names and digests through the
// image store). Returns its canonical path or a clear error.
Result<std::string> ResolveImageDir(const std::string& image);
// PERMISSION_DENIED for `/`, the host's top-level directories and anything
// below its system trees (/etc, /usr, /proc, /root, /var/lib, ...): never an
// image, whatever flags the daemon has. `canonical` is a canonical path.
Status RefuseSystemDirectory(const std::string& canonical, const std::string& asked);

class ImageViews {
 public:
  ImageViews(std::string views_dir, IdRange range) : dir_(std::move(views_dir)), range_(range) {}
  ~ImageViews() { ReleaseAll(); }

  // The lower dir to use for `image_dir` (canonical path). Each successful
  // Acquire is paired with one Release of the same directory.
  Result<std::string> Acquire(const std::string& image_dir);
  // Views for several directories, in order; on error none is held.
  Result<std::vector<std::string>> AcquireAll(const std::vector<std::string>& dirs);
  void Release(const std::string& image_dir);
  void ReleaseAll();

 private:
  std::string dir_;
  IdRange range_;
  std::mutex mu_;
  UniqueFd userns_;
  bool idmap_unsupported_ = false;
  struct View {
    std::string target;
    size_t holders = 0;
  };
  std::map<std::string, View> views_;  // image dir -> mount point
};

}  // namespace paddock
