#include "sandbox/image_source.h"

#include "sandbox/image_view.h"

namespace paddock {

Result<ResolvedImage> ResolveHostDirectoryImage(const std::string& ref) {
  PADDOCK_ASSIGN_OR_RETURN(std::string dir, ResolveImageDir(ref));
  ResolvedImage out;
  out.id = dir;
  out.ref = ref;
  out.layer_dirs = {dir};
  return out;
}

Result<ResolvedImage> DirectoryImageResolver::Resolve(const std::string& ref, const ImageAccess& /*access*/) {
  if (!ref.empty() && ref[0] == '/') return ResolveHostDirectoryImage(ref);
  return Error(Code::kInvalidArgument,
               "image '{}' is not an absolute path: without an image store an image must be a root "
               "filesystem directory given by absolute path",
               ref);
}

ImageResolver& ResolverOrDefault(ImageResolver* env) {
  static DirectoryImageResolver directories;
  return env ? *env : directories;
}

void ApplyImageDefaults(const ResolvedImage& image, std::map<std::string, std::string>* env,
                        std::string* workdir) {
  for (const auto& kv : image.env) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    env->emplace(kv.substr(0, eq), kv.substr(eq + 1));  // the spec's value wins
  }
  if (workdir->empty() && !image.workdir.empty()) *workdir = image.workdir;
}

}  // namespace paddock
