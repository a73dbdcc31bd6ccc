// Builds the sandbox from inside its fresh namespaces. Runs in paddock-init
// before it serves requests; each step is a small function so the container
// and function sequences read top to bottom.
#pragma once

#include <sys/stat.h>

#include <cstdint>
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

// A function sandbox's exec stub, run in the cloned child (its own pid,
// mount, IPC and network namespaces): a fresh /proc, scratch /tmp and
// /dev/shm, and loopback up in its own network namespace.
bool MountFreshProcAndScratch(uint64_t scratch_bytes, std::string* err);
// The size of a stub's /dev/shm for a scratch /tmp of `scratch_bytes`.
uint64_t ShmBytes(uint64_t scratch_bytes);

// New IPC namespace for the caller (and a new network namespace with
// loopback up, when `network`): the next exec's, made by a stub.
bool RenewExecNamespaces(bool network, std::string* err);

// A scratch tmpfs as it was right after it was mounted: its root's metadata
// and the filesystem's used inodes and blocks.
struct ScratchMark {
  struct stat root {};
  uint64_t used_inodes = 0, used_blocks = 0;
};
bool MarkScratch(const std::string& path, ScratchMark* mark, std::string* err);
// True when the tmpfs at `path` is as `mark` found it: no entry, its root's
// mode, owner, times (ctime changes with any entry made or removed, any
// chmod, utimes or xattr) and link count the same, no xattr, no inode or
// block in use beyond the root's. Anything else is reason to replace it.
bool ScratchUntouched(const std::string& path, const ScratchMark& mark);
// Replaces the tmpfs at `path` (nothing may use it) by a fresh one of at
// most `bytes`, and marks it.
bool RenewScratch(const std::string& path, uint64_t bytes, ScratchMark* mark, std::string* err);

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
