// Read-only views of image root directories as a substrate's user namespace
// sees them (idmapped mounts: host root's files belong to sandbox root).
// One view per image per substrate, made on first use and shared by every
// sandbox of that substrate; removed at shutdown.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/linux/userns.h"

namespace paddock {

// Until the image store lands, an image is an absolute path to a root
// filesystem directory. Returns its canonical path or a clear error.
Result<std::string> ResolveImageDir(const std::string& image);

class ImageViews {
 public:
  ImageViews(std::string views_dir, IdRange range) : dir_(std::move(views_dir)), range_(range) {}
  ~ImageViews() { ReleaseAll(); }

  // The lower dir to use for `image_dir` (canonical path).
  Result<std::string> Acquire(const std::string& image_dir);
  void ReleaseAll();

 private:
  std::string dir_;
  IdRange range_;
  std::mutex mu_;
  UniqueFd userns_;
  bool idmap_unsupported_ = false;
  std::map<std::string, std::string> views_;  // image dir -> mount point
};

}  // namespace paddock
