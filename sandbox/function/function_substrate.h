// The function substrate: stateless and cheap. A zygote per (image, limits) has
// already entered its namespaces and chrooted (pivot_root) into the image,
// read-only; every exec is a fresh process cloned from it into its own pid,
// mount and ipc namespaces, with a scratch /tmp that dies with the exec,
// rlimits, seccomp and no network. Nothing persists between execs.
#pragma once

#include <memory>

#include "sandbox/sandbox.h"

namespace paddock {

std::unique_ptr<Substrate> MakeFunctionSubstrate(const SubstrateEnv& env);

}  // namespace paddock
