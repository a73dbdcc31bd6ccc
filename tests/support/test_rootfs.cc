#include "tests/support/test_rootfs.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

namespace paddock::testing {

namespace {
[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "test rootfs: %s\n", msg.c_str());
  std::abort();
}
}  // namespace

std::string EnsureBusyboxRootfs(const std::string& parent) {
  const std::string root = parent + "/busybox";
  if (fs::exists(root + "/.complete")) return root;
  if (!fs::exists("/bin/busybox")) Die("/bin/busybox missing; install busybox-static (scripts/install-deps.sh)");
  std::string tmp = parent + "/.build-" + std::to_string(getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp + "/bin");
  fs::copy_file("/bin/busybox", tmp + "/bin/busybox");
  fs::permissions(tmp + "/bin/busybox", fs::perms(0755));
  FILE* p = popen("/bin/busybox --list", "r");
  if (!p) Die("cannot run /bin/busybox --list");
  char line[256];
  while (fgets(line, sizeof line, p)) {
    std::string applet(line);
    while (!applet.empty() && (applet.back() == '\n' || applet.back() == '\r')) applet.pop_back();
    if (applet.empty() || applet == "busybox") continue;
    std::error_code ec;
    fs::create_symlink("busybox", tmp + "/bin/" + applet, ec);
  }
  pclose(p);
  for (const char* d : {"proc", "dev", "tmp", "etc", "sys", "work", "root", "usr", "var"})
    fs::create_directories(tmp + "/" + d);
  fs::create_symlink("../bin", tmp + "/usr/bin");
  fs::create_symlink("bin", tmp + "/sbin");
  fs::permissions(tmp + "/tmp", fs::perms(01777));
  std::ofstream(tmp + "/etc/passwd") << "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
  std::ofstream(tmp + "/etc/group") << "root:x:0:\nnobody:x:65534:\n";
  std::ofstream(tmp + "/etc/image-marker") << "busybox test image\n";
  std::ofstream(tmp + "/.complete") << "ok\n";
  fs::create_directories(parent);
  std::error_code ec;
  fs::rename(tmp, root, ec);
  if (ec) {
    fs::remove_all(tmp);  // another test binary won the race; use its rootfs
    if (!fs::exists(root + "/.complete")) Die("could not build " + root + ": " + ec.message());
  }
  return root;
}

std::string BuiltBinary(const std::string& name) {
  // Test binaries live in BUILD/tests; the other binaries in BUILD/sandbox, BUILD/rollout, BUILD/sdk.
  fs::path self = fs::read_symlink("/proc/self/exe");
  fs::path build = self.parent_path().parent_path();
  for (const char* sub : {"sandbox", "rollout", "sdk", "bench", "."}) {
    fs::path p = build / sub / name;
    if (fs::exists(p)) return p.string();
  }
  Die("binary " + name + " not found under " + build.string());
}

}  // namespace paddock::testing
