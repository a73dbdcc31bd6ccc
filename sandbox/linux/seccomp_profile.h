// The default seccomp profile of sandboxes, compiled once with libseccomp to
// a BPF program that paddock-init installs on every thread it has (TSYNC).
// Default allow; the calls listed in docs/security.md fail with EPERM (clone3
// with ENOSYS, so libc falls back to clone, whose namespace flags the filter
// can inspect), socket() of any family but AF_UNIX, AF_INET and AF_INET6
// with EAFNOSUPPORT, raw sockets with EPERM; a call of another ABI (ia32,
// x32) kills the process.
#pragma once

#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock {

// Names of the system calls the profile denies outright.
const std::vector<std::string>& DeniedSyscalls();

// The profile as an array of struct sock_filter, ready for PR_SET_SECCOMP.
Result<std::string> DefaultSeccompBpf();

}  // namespace paddock
