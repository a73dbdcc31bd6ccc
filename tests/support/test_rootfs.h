// Builds a root filesystem for tests from Debian's busybox-static: /bin/busybox
// plus one symlink per applet, the mount points sandboxes need, and a minimal
// /etc. Built once per directory; reused when already complete.
#pragma once

#include <string>

namespace paddock::testing {

// Returns the rootfs directory (created under `parent`), or aborts the test
// binary with a clear message when busybox-static is not installed.
std::string EnsureBusyboxRootfs(const std::string& parent = "/var/tmp/paddock-test-rootfs");

// Path of a built paddock binary (paddockd, paddock, paddock-init) in the build tree.
std::string BuiltBinary(const std::string& name);

}  // namespace paddock::testing
