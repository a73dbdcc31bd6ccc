#include "sandbox/linux/spawner.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace paddock {

Status Spawner::StartLocked() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
  UniqueFd ours(sv[0]), theirs(sv[1]);
  SpawnOptions so;
  so.program = init_path_;
  so.argv = {"paddock-init", "--spawner"};
  so.channel_fd = theirs.get();
  auto child = SpawnInNamespaces(so);
  if (!child.ok()) return child.status().Prefix("starting the sandbox spawner");
  process_ = std::move(child).value();
  control_ = std::move(ours);
  return Status::Ok();
}

Result<pid_t> Spawner::RequestLocked(unsigned long clone_flags, int channel_fd) {
  uint64_t flags = clone_flags;
  struct iovec iov {&flags, sizeof flags};
  alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &channel_fd, sizeof channel_fd);
  if (sendmsg(control_.get(), &msg, MSG_NOSIGNAL) != sizeof flags)
    return Error(Code::kUnavailable, "sandbox spawner is gone: {}", std::strerror(errno));
  int32_t reply = 0;
  ssize_t n;
  do {
    n = recv(control_.get(), &reply, sizeof reply, 0);
  } while (n < 0 && errno == EINTR);
  if (n != sizeof reply) return Error(Code::kUnavailable, "sandbox spawner did not answer");
  if (reply < 0) return ErrnoError("cloning a sandbox process", -reply);
  return static_cast<pid_t>(reply);
}

Result<ChildProcess> Spawner::Spawn(unsigned long clone_flags, int channel_fd) {
  std::lock_guard lock(mu_);
  if (!control_.valid()) PADDOCK_RETURN_IF_ERROR(StartLocked());
  auto pid = RequestLocked(clone_flags, channel_fd);
  if (!pid.ok() && pid.status().code() == Code::kUnavailable) {
    // The spawner died (it is restarted once; a second failure is reported).
    control_.reset();
    process_.KillAndReap();
    PADDOCK_RETURN_IF_ERROR(StartLocked());
    pid = RequestLocked(clone_flags, channel_fd);
  }
  if (!pid.ok()) return pid.status();
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid.value(), 0)));
  if (!pidfd.valid()) return ErrnoError("pidfd_open of a new sandbox process");
  return ChildProcess(pid.value(), std::move(pidfd), /*ours=*/false);
}

}  // namespace paddock
