#include "tests/support/debian_image.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

namespace fs = std::filesystem;

namespace paddock::testing {

Result<std::string> EnsureDebianImage() {
  // Test binaries live in BUILD/tests (bench binaries in BUILD/bench): the cache goes to BUILD/test-images.
  fs::path self = fs::read_symlink("/proc/self/exe");
  fs::path out = self.parent_path().parent_path() / "test-images" / "debian-python3.oci.tar";
  std::string script = std::string(PADDOCK_SOURCE_DIR) + "/scripts/make-debian-image.sh";
  if (::access(script.c_str(), X_OK) != 0)
    return Error(Code::kFailedPrecondition, "{} is missing or not executable", script);
  // The script prints the path last; its progress and errors come before. Progress is
  // passed on to our stderr as it comes (a cold build takes minutes), and the error
  // line, if any, goes into the returned status.
  std::string cmd = fmt::format("'{}' --out '{}' 2>&1", script, out.string());
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return ErrnoError("running " + script);
  std::string line, last, error;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) {
    line += buf;
    if (line.back() != '\n') continue;
    line.pop_back();
    if (line.find("make-debian-image: error: ") != std::string::npos) error = line;
    if (!last.empty()) std::fprintf(stderr, "%s\n", last.c_str());
    last = std::move(line);
    line.clear();
  }
  int status = ::pclose(p);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (!last.empty() && last != error) std::fprintf(stderr, "%s\n", last.c_str());
    return Error(Code::kUnavailable, "building the Debian python3 test image failed ({} exited with status {}): {}",
                 script, WIFEXITED(status) ? WEXITSTATUS(status) : -1, error.empty() ? last : error);
  }
  const std::string printed = last;
  if (printed != out.string() || !fs::exists(out))
    return Error(Code::kInternal, "{} printed '{}', expected {}", script, printed, out.string());
  return out.string();
}

}  // namespace paddock::testing
