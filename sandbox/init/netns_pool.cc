#include "sandbox/init/netns_pool.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "sandbox/init/setup.h"

namespace paddock::init {

namespace {

// The helper's loop: one namespace per request byte, until the zygote's end
// closes. Each is made by unshare, its fd opened, and the helper goes back
// to its own namespace before passing it on (so that it holds none of them).
[[noreturn]] void HelperMain(int sock) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct sched_param idle {};
  sched_setscheduler(0, SCHED_IDLE, &idle);
  int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) _exit(1);
  for (;;) {
    char req;
    ssize_t r = read(sock, &req, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) _exit(0);
    std::string err;
    if (unshare(CLONE_NEWNET) != 0 || !BringLoopbackUp(&err)) _exit(1);
    int ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(home, CLONE_NEWNET) != 0) _exit(1);
    char byte = 'n';
    struct iovec iov {&byte, 1};
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &ns, sizeof ns);
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
      if (errno != EINTR) _exit(0);
    close(ns);
  }
}

}  // namespace

NetnsPool::~NetnsPool() {
  if (sock_ >= 0) close(sock_);  // the helper reads EOF and exits
}

bool NetnsPool::Start(size_t depth) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return false;
  pid_t pid = fork();
  if (pid < 0) {
    close(sv[0]);
    close(sv[1]);
    return false;
  }
  if (pid == 0) {
    // Nothing of the zygote's but its socket (and stdio, /dev/null).
    int sock = fcntl(sv[1], F_DUPFD, 3);
    if (sock != 3) {
      dup2(sock, 3);
      sock = 3;
    }
    syscall(SYS_close_range, 4, ~0U, 0);
    HelperMain(sock);
  }
  close(sv[1]);
  sock_ = sv[0];
  pid_ = pid;
  for (size_t i = 0; i < depth; ++i) (void)!write(sock_, "n", 1);
  return true;
}

int NetnsPool::Take() {
  if (sock_ < 0) return -1;
  char byte;
  struct iovec iov {&byte, 1};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t r = recvmsg(sock_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (r <= 0) {
    if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
      close(sock_);  // the helper is gone: stubs make their own from now on
      sock_ = -1;
    }
    return -1;
  }
  int fd = -1;
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  (void)!write(sock_, "n", 1);  // the next one
  return fd;
}

}  // namespace paddock::init
