#include "sandbox/init/spawner.h"

#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "sandbox/init/exec_server.h"
#include "sandbox/init/guest.h"
#include "sandbox/init/protocol.h"
#include "sandbox/init/setup.h"

namespace paddock::init {

int RunInit(int channel) {
  // A session of its own, apart from the spawner's (nothing of the daemon's).
  setsid();
  Frame f;
  if (!ReadFrame(channel, &f) || f.type != FrameType::kSetup) {
    std::fputs("paddock-init: no setup frame on fd 3 (run by paddockd only)\n", stderr);
    return 2;
  }
  SetupConfig config;
  if (!DecodeSetup(f.payload, &config)) {
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EINVAL, "malformed setup frame", ""));
    return 2;
  }
  // The daemon wrote our id maps before sending setup: become root of the
  // user namespace (a no-op when the exec path already did).
  if (syscall(SYS_setresgid, 0, 0, 0) != 0 || syscall(SYS_setgroups, 0, nullptr) != 0 ||
      syscall(SYS_setresuid, 0, 0, 0) != 0) {
    std::string err = std::string("becoming sandbox root: ") + std::strerror(errno);
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EPERM, err, ""));
    return 1;
  }
  std::string err;
  if (!ApplyGuestLimits(config.limits, &err)) {
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EIO, err, ""));
    return 1;
  }
  if (!ApplyGuestIdentity(config, &err)) {
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EIO, err, ""));
    return 1;
  }
  bool ok = config.mode == Mode::kFunction ? SetupFunctionZygote(config, &err)
                                           : SetupContainer(config, &err);
  if (!ok) {
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EIO, err, ""));
    return 1;
  }
  config.rootfs = "/";
  if (!WriteFrame(channel, FrameType::kHello, 0, EncodeReply(0, "", ""))) return 1;
  return ServeChannel(channel, config);
}

int RunSpawner(int control) {
  // Children are reaped by the kernel; the daemon learns of their exit
  // through pidfds.
  signal(SIGCHLD, SIG_IGN);
  for (;;) {
    uint64_t flags = 0;
    std::vector<int> fds;
    bool truncated = false;
    ssize_t n = ReceiveWithFds(control, &flags, sizeof flags, 0, &fds, &truncated);
    if (n == 0) return 0;  // the daemon went away
    if (n < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    // One channel per request; anything more is closed.
    int channel = fds.empty() ? -1 : fds[0];
    for (size_t i = 1; i < fds.size(); ++i) close(fds[i]);
    int32_t reply;
    if (n != sizeof flags || channel < 0) {
      reply = -EINVAL;
    } else {
      pid_t pid = static_cast<pid_t>(
          syscall(SYS_clone, static_cast<unsigned long>(flags) | SIGCHLD, nullptr, nullptr, nullptr, nullptr));
      if (pid == 0) {
        signal(SIGCHLD, SIG_DFL);
        if (dup2(channel, 3) != 3) _exit(124);
        syscall(SYS_close_range, 4, ~0U, 0);
        _exit(RunInit(3));
      }
      reply = pid > 0 ? pid : -errno;
    }
    if (channel >= 0) close(channel);
    if (send(control, &reply, sizeof reply, MSG_NOSIGNAL) != sizeof reply) return 1;
  }
}

}  // namespace paddock::init
