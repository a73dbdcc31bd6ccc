#include "sandbox/linux/seccomp_profile.h"

#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>

#include "sandbox/base/unique_fd.h"

namespace paddock {

const std::vector<std::string>& DeniedSyscalls() {
  static const std::vector<std::string> kDenied = {
      // filesystems and mounts
      "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
      "open_tree", "mount_setattr", "open_by_handle_at", "name_to_handle_at", "quotactl",
      "swapon", "swapoff",
      // namespaces
      "unshare", "setns",
      // the kernel itself
      "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
      "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie", "syslog", "acct", "iopl",
      "ioperm", "uselib", "personality",
      // other processes
      "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
      // keyrings
      "keyctl", "add_key", "request_key",
      // clocks
      "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
      // io_uring bypasses the filter for the calls it submits
      "io_uring_setup", "io_uring_enter", "io_uring_register",
  };
  return kDenied;
}

Result<std::string> DefaultSeccompBpf() {
  static std::once_flag once;
  static Result<std::string> cached = Status(Code::kInternal, "not built");
  std::call_once(once, [] {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
      cached = Status(Code::kInternal, "seccomp_init failed");
      return;
    }
    auto fail = [&](const std::string& what, int rc) {
      seccomp_release(ctx);
      cached = Status(Code::kInternal, fmt::format("building seccomp profile: {}: {}", what, rc));
    };
    // A system call of another ABI (32-bit `int 0x80`, x32) kills the whole
    // process, not just the calling thread: the filter inspects x86_64
    // numbers only, so another ABI's numbers must never run.
    if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc != 0)
      return fail("bad-architecture action", rc);
    for (const auto& name : DeniedSyscalls()) {
      int nr = seccomp_syscall_resolve_name(name.c_str());
      if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
      int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
      if (rc != 0) return fail(name, rc);
    }
    // clone: no new namespaces.
    const uint64_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                              CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWTIME;
    for (uint64_t bit = 1; bit; bit <<= 1) {
      if (!(ns_flags & bit)) continue;
      int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                SCMP_A0(SCMP_CMP_MASKED_EQ, bit, bit));
      if (rc != 0) return fail("clone", rc);
    }
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc != 0) return fail("clone3", rc);
    // Sockets of AF_UNIX, AF_INET and AF_INET6 only: every other family
    // (packet, netlink, key, vsock, alg, tipc, rds, can, bluetooth, ...) is
    // kernel surface a sandbox has no use for. libseccomp has no "not in"
    // comparison, so the complement is spelled out: 0, 3..9 and above 10.
    static_assert(AF_UNIX == 1 && AF_INET == 2 && AF_INET6 == 10);
    for (uint64_t family : {0, 3, 4, 5, 6, 7, 8, 9}) {
      rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                            SCMP_A0(SCMP_CMP_EQ, family));
      if (rc != 0) return fail("socket family", rc);
    }
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                          SCMP_A0(SCMP_CMP_GT, static_cast<uint64_t>(AF_INET6)));
    if (rc != 0) return fail("socket families above AF_INET6", rc);
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socket), 1,
                          SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_RAW));
    if (rc != 0) return fail("raw sockets", rc);
    UniqueFd mem(memfd_create("seccomp-bpf", MFD_CLOEXEC));
    if (!mem.valid()) return fail("memfd_create", errno);
    rc = seccomp_export_bpf(ctx, mem.get());
    seccomp_release(ctx);
    if (rc != 0) {
      cached = Status(Code::kInternal, fmt::format("exporting seccomp profile: {}", rc));
      return;
    }
    off_t size = lseek(mem.get(), 0, SEEK_END);
    std::string bpf(static_cast<size_t>(size), '\0');
    if (pread(mem.get(), bpf.data(), bpf.size(), 0) != size) {
      cached = Status(Code::kInternal, "reading exported seccomp profile");
      return;
    }
    cached = std::move(bpf);
  });
  return cached;
}

}  // namespace paddock
