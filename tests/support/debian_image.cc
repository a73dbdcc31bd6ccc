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
  // The script prints the path on stdout; its progress and errors go to our stderr.
  std::string cmd = fmt::format("'{}' --out '{}'", script, out.string());
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return ErrnoError("running " + script);
  std::string printed;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) printed.append(buf, n);
  int status = ::pclose(p);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Error(Code::kUnavailable,
                 "building the Debian python3 test image failed ({} exited with status {}); see its "
                 "\"make-debian-image: error:\" line above (e.g. the Debian mirror is unreachable)",
                 script, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  while (!printed.empty() && (printed.back() == '\n' || printed.back() == '\r')) printed.pop_back();
  if (printed != out.string() || !fs::exists(out))
    return Error(Code::kInternal, "{} printed '{}', expected {}", script, printed, out.string());
  return out.string();
}

}  // namespace paddock::testing
