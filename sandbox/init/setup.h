// Builds the sandbox from inside its fresh namespaces. Runs in paddock-init
// before it serves requests; each step is a small function so the container
// and function sequences read top to bottom.
#pragma once

#include <string>

#include "sandbox/init/protocol.h"

namespace paddock::init {

// A step's failure: `*err` = `what` and errno's text; returns false.
bool Fail(std::string* err, const std::string& what);

// Container: private mounts, the overlay root with /proc, /dev, /tmp,
// hostname, loopback, pivot_root, cgroup namespace, capability drop,
// no_new_privs, seccomp. On failure returns false with a message in *err.
bool SetupContainer(const SetupConfig& c, std::string* err);

// Function zygote: the read-only root with /proc and /dev, hostname,
// loopback, pivot_root. Keeps its capabilities (each exec needs them to
// build its own namespaces) and leaves seccomp to each exec.
bool SetupFunctionZygote(const SetupConfig& c, std::string* err);

// Per-exec steps of a function sandbox, run in the cloned child (its own
// pid, mount, IPC and network namespaces): a fresh /proc, scratch /tmp and
// /dev/shm, and loopback up in its own network namespace.
bool MountFreshProcAndScratch(uint64_t scratch_bytes, std::string* err);

// Makes the kernel-wide parts of a mounted /proc read-only (sys, sysrq-trigger,
// irq, bus, fs) and hides kcore, keys and the timer lists
// (Docker's masked and read-only paths). Absent entries are skipped.
bool MaskProc(const std::string& proc, std::string* err);

// Keeps only `keep` (a bit mask of CAP_* numbers) in every capability set.
bool DropCapabilities(uint64_t keep, std::string* err);
bool InstallSeccomp(const std::string& bpf, std::string* err);

// Capabilities a container keeps (Docker's default set less NET_RAW and MKNOD).
uint64_t ContainerCapabilities();

}  // namespace paddock::init
