#include "sandbox/image_view.h"

#include <sys/stat.h>

#include <filesystem>
#include <functional>

#include <spdlog/spdlog.h>

#include "sandbox/linux/fs_util.h"
#include "sandbox/linux/mounts.h"

namespace paddock {

Status RefuseSystemDirectory(const std::string& canonical, const std::string& asked) {
  // The host's own trees: as an image they would hand the host's files
  // (/etc/shadow, keys, the daemon's state) to whatever runs in the sandbox.
  static const char* const kBelow[] = {"/proc", "/sys", "/dev", "/etc", "/boot", "/root", "/run",
                                       "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                                       "/var/lib", "/var/run", "/var/log", "/snap"};
  static const char* const kExactly[] = {"/", "/home", "/var", "/tmp", "/var/tmp", "/opt", "/srv",
                                         "/mnt", "/media"};
  for (const char* d : kExactly)
    if (canonical == d)
      return Error(Code::kPermissionDenied, "image '{}' is the host directory {}, which is never an image",
                   asked, canonical);
  for (const char* d : kBelow) {
    std::string dir = d;
    if (canonical == dir || canonical.rfind(dir + "/", 0) == 0)
      return Error(Code::kPermissionDenied,
                   "image '{}' is inside the host's system directory {}, which is never an image", asked, dir);
  }
  return Status::Ok();
}

Result<std::string> ResolveImageDir(const std::string& image) {
  if (image.empty() || image[0] != '/')
    return Error(Code::kInvalidArgument,
                 "image '{}' is not an absolute path: without an image store an image is a root "
                 "filesystem directory given by absolute path",
                 image);
  // Checked as written and as resolved: /proc/1/root names `/` by a link.
  PADDOCK_RETURN_IF_ERROR(
      RefuseSystemDirectory(std::filesystem::path(image).lexically_normal().string(), image));
  std::error_code ec;
  auto canon = std::filesystem::canonical(image, ec);
  if (ec || !std::filesystem::is_directory(canon))
    return Error(Code::kNotFound, "image '{}' not found: no such root filesystem directory", image);
  PADDOCK_RETURN_IF_ERROR(RefuseSystemDirectory(canon.string(), image));
  if (!std::filesystem::exists(canon / "bin") && !std::filesystem::exists(canon / "usr"))
    return Error(Code::kInvalidArgument,
                 "image '{}' does not look like a root filesystem (no /bin or /usr)", image);
  return canon.string();
}

Result<std::string> ImageViews::Acquire(const std::string& image_dir) {
  std::lock_guard lock(mu_);
  auto it = views_.find(image_dir);
  if (it != views_.end()) {
    it->second.holders++;
    return it->second.target;
  }
  std::string target = fmt::format("{}/{:016x}", dir_, std::hash<std::string>{}(image_dir));
  // Views show image files to the daemon's mounts only: other host users
  // must not walk into them (nor into the views directory above).
  PADDOCK_RETURN_IF_ERROR(MkdirAll(dir_, 0700));
  for (const std::string& d : {std::filesystem::path(dir_).parent_path().string(), dir_})
    if (chmod(d.c_str(), 0700) != 0) return ErrnoError("making " + d + " private");
  PADDOCK_RETURN_IF_ERROR(MkdirAll(target));
  if (!idmap_unsupported_) {
    if (!userns_.valid()) {
      auto ns = OpenUsernsWithMap(range_);
      if (!ns.ok()) return ns.status().Prefix("preparing image view");
      userns_ = std::move(ns).value();
    }
    Status st = MountIdmappedReadOnly(image_dir, target, userns_.get());
    if (st.ok()) {
      views_[image_dir] = View{target, 1};
      return target;
    }
    spdlog::warn("idmapped mounts unavailable ({}); image files will appear owned by nobody",
                 st.message());
    idmap_unsupported_ = true;
  }
  PADDOCK_RETURN_IF_ERROR(BindReadOnly(image_dir, target));
  views_[image_dir] = View{target, 1};
  return target;
}

Result<std::vector<std::string>> ImageViews::AcquireAll(const std::vector<std::string>& dirs) {
  std::vector<std::string> out;
  for (const auto& d : dirs) {
    auto v = Acquire(d);
    if (!v.ok()) {
      for (size_t i = 0; i < out.size(); ++i) Release(dirs[i]);
      return v.status();
    }
    out.push_back(std::move(v).value());
  }
  return out;
}

void ImageViews::Release(const std::string& image_dir) {
  std::lock_guard lock(mu_);
  auto it = views_.find(image_dir);
  if (it == views_.end() || --it->second.holders > 0) return;
  // Overlays made from the view keep their own private copy of it, so the
  // view itself can go as soon as nobody will mount it again.
  Status st = Unmount(it->second.target);
  if (st.ok()) rmdir(it->second.target.c_str());
  views_.erase(it);
}

void ImageViews::ReleaseAll() {
  std::lock_guard lock(mu_);
  for (const auto& [_, view] : views_) {
    Status st = Unmount(view.target);
    if (st.ok()) rmdir(view.target.c_str());
  }
  views_.clear();
}

}  // namespace paddock
