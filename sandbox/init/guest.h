// paddock-init as PID 1 of a microVM guest (the microvm substrate). The
// kernel runs it from the project's initramfs; it loads the few modules the
// boot path needs, mounts the image's read-only layer disks under an overlay
// with a tmpfs upper, switches root, and starts the sandbox's init (the
// container sequence, in fresh namespaces inside the guest) on the
// virtio-serial port the host listens on.
//
// The kernel command line carries what the guest needs before the channel
// exists: paddock.layers=N (layer disks, serials "layer0".."layerN-1",
// bottom first), paddock.fs=erofs|ext4, paddock.disk=BYTES (the upper's size).
#pragma once

#include <cstdint>
#include <string>

#include "sandbox/init/protocol.h"
#include "sandbox/types.h"

namespace paddock::init {

// Whether this process is PID 1 of a guest started by the microvm substrate.
bool IsGuestPid1();

// Boots the guest; never returns (powers the VM off when the sandbox's init
// is gone, or exits with a message on the console so the kernel panics and
// the host reads why).
[[noreturn]] void RunGuest();

// In the sandbox's init inside a guest: the cgroup every exec runs in.
// -1 outside a guest.
int GuestCgroupFd();
// Applies the spec's limits to that cgroup (memory.max, pids.max, cpu.max).
bool ApplyGuestLimits(const Limits& limits, std::string* err);
// OOM kills in that cgroup so far (0 outside a guest).
uint64_t GuestOomKills();
// memory.current, cpu usage and pids.current of that cgroup.
Usage GuestUsage();

// In the sandbox's init inside a guest, before the container sequence drops
// its capabilities: applies the setup's identity (SetupConfig::entropy,
// realtime_ns, machine_id under `rootfs`). The same step for a cold-booted VM
// and a clone of a template. A no-op outside a guest.
bool ApplyGuestIdentity(const SetupConfig& c, std::string* err);

}  // namespace paddock::init
