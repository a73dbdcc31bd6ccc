#include "sandbox/init/setup.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace paddock::init {

bool Fail(std::string* err, const std::string& what) {
  *err = what + ": " + std::strerror(errno);
  return false;
}

namespace {

bool MkdirAll(const std::string& path, mode_t mode) {
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (mkdir(cur.c_str(), mode) != 0 && errno != EEXIST) return false;
  }
  return true;
}

bool MakeRootPrivate(std::string* err) {
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return Fail(err, "making mounts private");
  return true;
}

bool BindRootOntoItself(const std::string& root, std::string* err) {
  if (mount(root.c_str(), root.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0)
    return Fail(err, "bind-mounting root " + root);
  return true;
}

}  // namespace

// Docker's lists (moby's oci/defaults.go): the kernel-wide knobs stay
// readable but not writable, the kernel's memory, keys and timers are hidden.
// Without a user namespace (a microVM guest's sandbox: root there is root of
// the guest kernel) a writable /proc/sys would let a command rewrite
// kernel.core_pattern or kernel.modprobe, i.e. run a program of its choosing
// as the guest's real root outside the sandbox.
bool MaskProc(const std::string& proc, std::string* err) {
  constexpr unsigned long kProcFlags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  for (const char* name : {"bus", "fs", "irq", "sys", "sysrq-trigger"}) {
    std::string p = proc + "/" + name;
    if (access(p.c_str(), F_OK) != 0) continue;
    if (mount(p.c_str(), p.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0 ||
        mount(nullptr, p.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | kProcFlags, nullptr) != 0)
      return Fail(err, "making " + p + " read-only");
  }
  for (const char* name : {"kcore", "keys", "latency_stats", "timer_list", "timer_stats", "sched_debug"}) {
    std::string p = proc + "/" + name;
    struct stat st {};
    if (lstat(p.c_str(), &st) != 0 || S_ISDIR(st.st_mode)) continue;
    if (mount("/dev/null", p.c_str(), nullptr, MS_BIND, nullptr) != 0) return Fail(err, "masking " + p);
  }
  for (const char* name : {"acpi", "asound", "scsi"}) {
    std::string p = proc + "/" + name;
    struct stat st {};
    if (lstat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    if (mount("tmpfs", p.c_str(), "tmpfs", MS_RDONLY | kProcFlags, "size=0") != 0)
      return Fail(err, "masking " + p);
  }
  return true;
}

namespace {

bool MountProc(const std::string& root, std::string* err) {
  std::string p = root + "/proc";
  mkdir(p.c_str(), 0555);
  if (mount("proc", p.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    return Fail(err, "mounting /proc");
  if (!MaskProc(p, err)) return false;
  return true;
}

// A tmpfs /dev holding only null, zero, full, random, urandom and tty (bind
// mounts of the host's nodes: mknod is not allowed in a user namespace), a
// private devpts instance, and /dev/shm.
bool MountMinimalDev(const std::string& root, std::string* err) {
  std::string dev = root + "/dev";
  mkdir(dev.c_str(), 0755);
  if (mount("tmpfs", dev.c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC | MS_STRICTATIME,
            "mode=755,size=1m") != 0)
    return Fail(err, "mounting /dev");
  for (const char* node : {"null", "zero", "full", "random", "urandom", "tty"}) {
    std::string target = dev + "/" + node;
    int fd = open(target.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
    if (fd < 0) return Fail(err, "creating " + target);
    close(fd);
    std::string source = std::string("/dev/") + node;
    if (mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0)
      return Fail(err, "binding " + source);
  }
  std::string pts = dev + "/pts";
  mkdir(pts.c_str(), 0755);
  if (mount("devpts", pts.c_str(), "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620") != 0)
    return Fail(err, "mounting /dev/pts");
  symlink("pts/ptmx", (dev + "/ptmx").c_str());
  std::string shm = dev + "/shm";
  mkdir(shm.c_str(), 01777);
  if (mount("tmpfs", shm.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m") != 0)
    return Fail(err, "mounting /dev/shm");
  symlink("/proc/self/fd", (dev + "/fd").c_str());
  symlink("/proc/self/fd/0", (dev + "/stdin").c_str());
  symlink("/proc/self/fd/1", (dev + "/stdout").c_str());
  symlink("/proc/self/fd/2", (dev + "/stderr").c_str());
  return true;
}

bool MountTmp(const std::string& path, uint64_t bytes, std::string* err) {
  mkdir(path.c_str(), 01777);
  std::string opts = "mode=1777,size=" + std::to_string(bytes);
  if (mount("tmpfs", path.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0)
    return Fail(err, "mounting tmpfs at " + path);
  return true;
}

bool SetHostname(const std::string& name, std::string* err) {
  if (sethostname(name.data(), name.size()) != 0) return Fail(err, "setting hostname");
  return true;
}

// The network namespace is private: loopback is its only interface.
bool BringLoopbackUp(std::string* err) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return Fail(err, "socket for loopback");
  struct ifreq ifr {};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  if (ok) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    ok = ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  int saved = errno;
  close(s);
  errno = saved;
  if (!ok) return Fail(err, "bringing loopback up");
  return true;
}

bool PivotInto(const std::string& root, std::string* err) {
  if (chdir(root.c_str()) != 0) return Fail(err, "chdir to new root");
  if (syscall(SYS_pivot_root, ".", ".") != 0) return Fail(err, "pivot_root");
  if (umount2(".", MNT_DETACH) != 0) return Fail(err, "detaching old root");
  if (chdir("/") != 0) return Fail(err, "chdir /");
  return true;
}

}  // namespace

uint64_t ContainerCapabilities() {
  uint64_t m = 0;
  for (int c : {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID,
                CAP_SETUID, CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_AUDIT_WRITE,
                CAP_SETFCAP})
    m |= 1ull << c;
  return m;
}

bool DropCapabilities(uint64_t keep, std::string* err) {
  for (int cap = 0; cap <= 63; ++cap) {
    if (keep & (1ull << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
      return Fail(err, "dropping capability " + std::to_string(cap));
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  struct __user_cap_header_struct hdr {};
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  struct __user_cap_data_struct data[2] {};
  for (int i = 0; i < 2; ++i) {
    uint32_t part = static_cast<uint32_t>(keep >> (32 * i));
    data[i].effective = part;
    data[i].permitted = part;
    data[i].inheritable = 0;
  }
  if (syscall(SYS_capset, &hdr, data) != 0) return Fail(err, "capset");
  return true;
}

bool InstallSeccomp(const std::string& bpf, std::string* err) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Fail(err, "setting no_new_privs");
  if (bpf.empty()) return true;
  struct sock_fprog prog {};
  prog.len = static_cast<unsigned short>(bpf.size() / sizeof(struct sock_filter));
  prog.filter = reinterpret_cast<struct sock_filter*>(const_cast<char*>(bpf.data()));
  // TSYNC: every thread of the process gets the filter, not only this one.
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
    return Fail(err, "installing seccomp filter");
  return true;
}

bool SetupContainer(const SetupConfig& c, std::string* err) {
  const std::string& root = c.rootfs;
  if (!MakeRootPrivate(err) || !BindRootOntoItself(root, err) || !MountProc(root, err) ||
      !MountMinimalDev(root, err) || !MountTmp(root + "/tmp", c.tmp_bytes, err) ||
      !SetHostname(c.hostname, err) || !BringLoopbackUp(err) || !PivotInto(root, err))
    return false;
  if (!c.workdir.empty() && !MkdirAll(c.workdir, 0755))
    return Fail(err, "creating workdir " + c.workdir);
  if (unshare(CLONE_NEWCGROUP) != 0) return Fail(err, "entering a cgroup namespace");
  return DropCapabilities(ContainerCapabilities(), err) && InstallSeccomp(c.seccomp_bpf, err);
}

bool SetupFunctionZygote(const SetupConfig& c, std::string* err) {
  const std::string& root = c.rootfs;
  if (!MakeRootPrivate(err) || !BindRootOntoItself(root, err) || !MountProc(root, err) ||
      !MountMinimalDev(root, err) || !SetHostname(c.hostname, err) || !BringLoopbackUp(err) ||
      !PivotInto(root, err))
    return false;
  if (unshare(CLONE_NEWCGROUP) != 0) return Fail(err, "entering a cgroup namespace");
  return true;
}

uint64_t ShmBytes(uint64_t scratch_bytes) { return std::min<uint64_t>(scratch_bytes, 64ull << 20); }

bool MountFreshProcAndScratch(uint64_t scratch_bytes, std::string* err) {
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    return Fail(err, "mounting /proc");
  if (!MaskProc("/proc", err)) return false;
  // Nothing one exec leaves in /tmp or /dev/shm is seen by another.
  return MountTmp("/tmp", scratch_bytes, err) && MountTmp("/dev/shm", ShmBytes(scratch_bytes), err) &&
         BringLoopbackUp(err);
}

bool RenewExecNamespaces(bool network, std::string* err) {
  if (unshare(CLONE_NEWIPC | (network ? CLONE_NEWNET : 0)) != 0)
    return Fail(err, "making the next exec's namespaces");
  return !network || BringLoopbackUp(err);
}

namespace {
bool ReadScratch(const std::string& path, ScratchMark* m) {
  struct statfs fs {};
  if (lstat(path.c_str(), &m->root) != 0 || statfs(path.c_str(), &fs) != 0) return false;
  m->used_inodes = fs.f_files - fs.f_ffree;
  m->used_blocks = fs.f_blocks - fs.f_bfree;
  return true;
}
bool SameTime(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}
}  // namespace

bool MarkScratch(const std::string& path, ScratchMark* mark, std::string* err) {
  if (!ReadScratch(path, mark)) return Fail(err, "reading scratch " + path);
  return true;
}

bool ScratchUntouched(const std::string& path, const ScratchMark& mark) {
  ScratchMark now;
  if (!ReadScratch(path, &now)) return false;
  const struct stat& a = now.root;
  const struct stat& b = mark.root;
  if (a.st_dev != b.st_dev || a.st_ino != b.st_ino || a.st_mode != b.st_mode || a.st_uid != b.st_uid ||
      a.st_gid != b.st_gid || a.st_nlink != b.st_nlink || a.st_size != b.st_size ||
      !SameTime(a.st_ctim, b.st_ctim) || !SameTime(a.st_mtim, b.st_mtim) || !SameTime(a.st_atim, b.st_atim) ||
      now.used_inodes != mark.used_inodes || now.used_blocks != mark.used_blocks)
    return false;
  // An xattr set within the clock tick of the mount leaves ctime as it was.
  if (llistxattr(path.c_str(), nullptr, 0) != 0) return false;
  // A directory's times tick coarsely: an entry made and removed within one
  // tick leaves them as they were, so look for entries too.
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return false;
  DIR* d = fdopendir(fd);
  if (!d) {
    close(fd);
    return false;
  }
  bool only_dots = true;
  while (const struct dirent* e = readdir(d))
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      only_dots = false;
      break;
    }
  closedir(d);
  return only_dots;
}

bool RenewScratch(const std::string& path, uint64_t bytes, ScratchMark* mark, std::string* err) {
  if (umount2(path.c_str(), MNT_DETACH) != 0) return Fail(err, "unmounting scratch " + path);
  return MountTmp(path, bytes, err) && MarkScratch(path, mark, err);
}

}  // namespace paddock::init
