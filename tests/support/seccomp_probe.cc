// A static program run inside a sandbox by tests/escape_test.cc: tries one
// call of each family the seccomp profile denies and prints `name=result`
// per line, where result is "ok", an errno name, or "signal=N" for a call
// made in a child that the kernel killed. Each probe picks a call that would
// succeed for sandbox root without the profile, so "ok" means the profile
// let it through.
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <thread>

namespace {

const char* ErrnoName(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    default: return strerrorname_np(e) ? strerrorname_np(e) : "E?";
  }
}

void Report(const char* name, long rc) { printf("%s=%s\n", name, rc >= 0 ? "ok" : ErrnoName(errno)); }

// Runs `call` in a child: "ok"/errno from its exit, or the signal that killed it.
void InChild(const char* name, const std::function<long()>& call) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    long rc = call();
    _exit(rc >= 0 ? 0 : (errno & 0x7f) + 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) printf("%s=signal=%d\n", name, WTERMSIG(status));
  else if (WEXITSTATUS(status) == 0) printf("%s=ok\n", name);
  else printf("%s=%s\n", name, ErrnoName(WEXITSTATUS(status) - 1));
}

}  // namespace

int main() {
  Report("getpid", syscall(SYS_getpid));  // control: allowed
  Report("mount", mount("none", "/tmp", "tmpfs", 0, nullptr));
  Report("unshare", unshare(CLONE_NEWUSER));
  InChild("clone_newuser", [] { return syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0) < 0 ? -1 : 0; });
  Report("clone3", syscall(SYS_clone3, nullptr, 0));
  struct io_uring_params p {};
  Report("io_uring_setup", syscall(SYS_io_uring_setup, 4, &p));
  Report("bpf", syscall(SYS_bpf, 0, nullptr, 0));
  Report("userfaultfd", syscall(SYS_userfaultfd, 0));
  struct perf_event_attr pe {};
  pe.size = sizeof pe;
  pe.type = PERF_TYPE_SOFTWARE;
  pe.config = PERF_COUNT_SW_CPU_CLOCK;
  pe.exclude_kernel = 1;
  Report("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
  Report("keyctl", syscall(SYS_keyctl, 0 /*KEYCTL_GET_KEYRING_ID*/, -3 /*session*/, 1));
  Report("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -3));
  Report("kexec_load", syscall(SYS_kexec_load, 0, 0, nullptr, 0));
  Report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, nullptr, 0));
  InChild("ptrace_traceme", [] { return ptrace(PTRACE_TRACEME, 0, nullptr, nullptr); });
  Report("socket_packet", socket(AF_PACKET, SOCK_DGRAM, 0));
  Report("socket_netlink", socket(AF_NETLINK, SOCK_DGRAM, 0));
  Report("socket_vsock", socket(AF_VSOCK, SOCK_STREAM, 0));
  Report("socket_alg", socket(AF_ALG, SOCK_SEQPACKET, 0));
  Report("socket_raw", socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, 1 /*ICMP*/));
  Report("socket_inet", socket(AF_INET, SOCK_STREAM, 0));  // control: allowed
  // Other ABIs: x32 numbers and the 32-bit entry point, each made by a
  // second thread while the first waits: the whole process must die (a
  // filter that killed only the calling thread would let the child exit 0).
  auto from_thread = [](long (*call)()) {
    return [call]() -> long {
      std::thread t([call] { call(); });
      t.detach();
      struct timespec wait {1, 0};
      nanosleep(&wait, nullptr);
      return 0;
    };
  };
  InChild("x32_getpid", from_thread([]() -> long { return syscall(0x40000000 | SYS_getpid); }));
  InChild("ia32_getpid", from_thread([]() -> long {
    long rc;
    asm volatile("int $0x80" : "=a"(rc) : "a"(20) : "memory");  // i386 getpid
    return rc;
  }));
  return 0;
}
