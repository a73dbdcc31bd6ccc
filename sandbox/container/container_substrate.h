// The container substrate: a stateful Linux container per sandbox. User, mount,
// pid, net (loopback only), uts, ipc and cgroup namespaces; overlayfs with the
// image read-only below a private upper dir; pivot_root; minimal /dev, /proc,
// tmpfs /tmp; cgroup limits (v1 or v2); capabilities dropped; no_new_privs;
// seccomp; paddock-init as PID 1.
#pragma once

#include <memory>

#include "sandbox/sandbox.h"

namespace paddock {

std::unique_ptr<Substrate> MakeContainerSubstrate(const SubstrateEnv& env);

}  // namespace paddock
