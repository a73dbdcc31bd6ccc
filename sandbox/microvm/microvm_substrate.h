// The microvm substrate: one KVM guest per sandbox under QEMU's microvm
// machine (no PCI, no firmware option ROMs, virtio-mmio devices only), booted
// straight into the project's initramfs; the image's layers are read-only
// virtio disks stacked by overlayfs in the guest with a tmpfs upper; the
// channel to paddock-init is a virtio-serial port backed by a unix socket.
// QEMU runs confined: its own seccomp sandbox, an unprivileged uid, its own
// mount/pid/net/ipc/uts namespaces and a cgroup bounding memory and cpu.
// docs/microvm.md has the boot path and the reason for every QEMU option.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "sandbox/microvm/boot_assets.h"
#include "sandbox/sandbox.h"

namespace paddock {

struct MicrovmOptions {
  std::string qemu = "/usr/bin/qemu-system-x86_64";
  std::string kvm_device = "/dev/kvm";
  // "kvm" (the substrate's purpose) or "tcg" (QEMU's emulator: for machines
  // whose KVM cannot run guests; far slower, never the measured path).
  std::string accel = "kvm";
  // TCG is not a security boundary (QEMU's security policy: only KVM guests
  // are treated as untrusted-code containment), so a microVM under TCG is
  // refused unless this is set (paddockd's --allow-tcg-microvms;
  // PADDOCK_MICROVM_ALLOW_TCG=1 for tests and benches, never read by paddockd).
  bool allow_tcg = false;
  microvm::BootSource boot;  // guest kernel, its modules, layer filesystem
  uint32_t vcpus = 1;        // when the spec sets no cpu limit
  // Guest RAM = the spec's memory limit (what the sandbox's cgroup in the
  // guest gets) + this, for the guest kernel, init and the tmpfs upper's
  // metadata.
  uint64_t guest_overhead_bytes = 192ull << 20;
  uint64_t guest_memory_override = 0;  // fixed guest RAM (tests of a starved guest)
  int boot_timeout_ms = 0;              // 0: 15 s with kvm, 180 s with tcg
  std::string extra_cmdline;            // appended to the kernel command line
  // The most of a VM's console (<vm dir>/console.log) kept on the host; the
  // newest half is kept when a guest writes more (sandbox/microvm/console_log.h).
  uint64_t console_log_cap = 1ull << 20;
  // The unprivileged host ids QEMU runs as, one uid (and gid) per VM from
  // [qemu_uid, qemu_uid + qemu_uid_count) (outside the container and function
  // ranges of sandbox/linux/userns.h).
  uint32_t qemu_uid = 400000, qemu_uid_count = 65536;
  // Template clones (docs/microvm.md, "Templates and clones"): per shape of
  // VM (layers, RAM, vCPUs, fs, disk) one template is booted and saved; each
  // VM after it is restored from it (copy-on-write RAM, device state
  // migrated in) with a fresh identity instead of booting. A template that
  // cannot be made or restored falls back to a cold boot (logged).
  // paddockd's --microvm-templates; PADDOCK_MICROVM_TEMPLATES=on|off.
  bool templates = true;
  // Templates kept at once (each holds its guest's RAM as written by its boot
  // and setup, ~110 MiB for a default VM): one more key (shape, workdir,
  // limits) evicts the one used longest ago; VMs cloned from it run on.
  size_t max_templates = 16;
};

// What a microvm substrate did so far (tests and benches).
struct MicrovmCounters {
  std::atomic<uint64_t> cold_boots{0};
  std::atomic<uint64_t> clones{0};
  std::atomic<uint64_t> template_builds{0};
  std::atomic<uint64_t> template_evictions{0};
  std::atomic<uint64_t> clone_failures{0};  // each followed by a cold boot
  std::atomic<uint64_t> pauses{0};
  std::atomic<uint64_t> resumes{0};
  std::atomic<uint64_t> forks{0};  // copies made
  std::atomic<uint64_t> snapshots{0};           // memory snapshots taken
  std::atomic<uint64_t> snapshot_creates{0};    // VMs created from one
};
// The counters of `substrate` if it is a microvm substrate, else null.
const MicrovmCounters* MicrovmCountersOf(const Substrate* substrate);

// Options from the environment: PADDOCK_MICROVM_ACCEL, PADDOCK_MICROVM_KERNEL,
// PADDOCK_MICROVM_FS, PADDOCK_MICROVM_ALLOW_TCG, PADDOCK_MICROVM_TEMPLATES (what tests, benches and
// paddockd's defaults use; paddockd sets allow_tcg from its flag only).
MicrovmOptions MicrovmOptionsFromEnvironment();

std::unique_ptr<Substrate> MakeMicrovmSubstrate(const SubstrateEnv& env,
                                                MicrovmOptions options = MicrovmOptionsFromEnvironment());

// Whether `accel` can run guests here; a clear FAILED_PRECONDITION otherwise.
Status CheckAccelerator(const MicrovmOptions& options);

// QEMU processes whose command line names `state_dir`'s VM directory
// (strays of a daemon that died); used by the start-up reaper.
std::vector<pid_t> StrayQemuProcesses(const std::string& state_dir);

}  // namespace paddock
