#include "sandbox/init/guest.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/random.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "sandbox/init/protocol.h"
#include "sandbox/init/setup.h"
#include "sandbox/init/spawner.h"

namespace paddock::init {

namespace {

int g_cgroup_fd = -1;  // the sandbox cgroup, in the sandbox's init only

// Says why on the console (the host keeps it and reports its tail) and
// exits: PID 1 exiting panics the kernel, and with panic=-1 and QEMU's
// -no-reboot the VM is gone at once.
[[noreturn]] void Die(const std::string& what) {
  // The kernel's own recent messages first (the command line asks for a
  // quiet console), so the host's copy of the console shows the cause.
  std::string klog(16384, '\0');
  int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, klog.data(), static_cast<int>(klog.size()));
  if (n > 0) {
    klog.resize(static_cast<size_t>(n));
    if (klog.size() > 3000) klog = klog.substr(klog.size() - 3000);
    if (write(2, klog.data(), klog.size()) < 0) {
    }
  }
  std::string line = "paddock-init(guest): " + what + "\n";
  if (write(2, line.data(), line.size()) < 0) {
  }
  _exit(1);
}
[[noreturn]] void DieErrno(const std::string& what) { Die(what + ": " + std::strerror(errno)); }

std::string ReadSmall(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return "";
  std::string s(buf, static_cast<size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool WriteSmall(int dirfd, const char* name, const std::string& value) {
  int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = write(fd, value.data(), value.size());
  close(fd);
  return n == static_cast<ssize_t>(value.size());
}

void MountOrDie(const char* src, const std::string& target, const char* type, unsigned long flags,
                const std::string& data) {
  mkdir(target.c_str(), 0755);
  if (mount(src, target.c_str(), type, flags, data.empty() ? nullptr : data.c_str()) != 0)
    DieErrno(std::string("mounting ") + type + " at " + target);
}

std::vector<std::string> CmdlineWords() {
  std::string all = ReadSmall("/proc/cmdline");
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t end = all.find(' ', pos);
    if (end == std::string::npos) end = all.size();
    if (end > pos) out.push_back(all.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

// The last value given for `key` (later words override earlier ones).
std::string CmdlineValue(const std::vector<std::string>& words, const std::string& key) {
  std::string v;
  for (const auto& w : words)
    if (w.rfind(key + "=", 0) == 0) v = w.substr(key.size() + 1);
  return v;
}

// Loads /modules/<name>.ko in the order of /modules/order (dependencies
// first, written by the host when it built the initramfs). Parameters for a
// module come from the kernel command line ("virtio_mmio.device=..."), the
// way modprobe would pass them.
void LoadModules(const std::vector<std::string>& words) {
  std::string order = ReadSmall("/modules/order");
  size_t pos = 0;
  while (pos < order.size()) {
    size_t end = order.find('\n', pos);
    if (end == std::string::npos) end = order.size();
    std::string name = order.substr(pos, end - pos);
    pos = end + 1;
    if (name.empty()) continue;
    std::string params;
    for (const auto& w : words) {
      if (w.rfind(name + ".", 0) != 0) continue;
      if (!params.empty()) params += ' ';
      params += w.substr(name.size() + 1);
    }
    std::string path = "/modules/" + name + ".ko";
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) DieErrno("opening kernel module " + path);
    if (syscall(SYS_finit_module, fd, params.c_str(), 0) != 0 && errno != EEXIST)
      DieErrno("loading kernel module " + name);
    close(fd);
  }
}

// The block device whose virtio serial is `serial` ("layer0", ...), waiting
// for the driver to have probed it (up to 5 s).
std::string FindDisk(const std::string& serial) {
  for (int tries = 0; tries < 1000; ++tries) {
    if (DIR* d = opendir("/sys/block")) {
      while (struct dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (name.rfind("vd", 0) != 0) continue;
        if (ReadSmall("/sys/block/" + name + "/serial") != serial) continue;
        std::string dev = "/dev/" + name;
        closedir(d);
        struct stat st;
        // devtmpfs creates the node asynchronously.
        for (int i = 0; i < 200 && stat(dev.c_str(), &st) != 0; ++i) usleep(5000);
        return dev;
      }
      closedir(d);
    }
    usleep(5000);
  }
  std::string seen;
  if (DIR* d = opendir("/sys/bus/virtio/devices")) {
    while (struct dirent* e = readdir(d))
      if (e->d_name[0] != '.') seen += std::string(" ") + e->d_name;
    closedir(d);
  }
  Die("no virtio disk with serial " + serial +
      " (is virtio_blk missing from the kernel, or the disk from QEMU's command line?) virtio devices:" +
      (seen.empty() ? " none" : seen) + "; cmdline: " + ReadSmall("/proc/cmdline"));
}

// The virtio-serial port named "paddock" (the host's channel).
// The virtio-serial port the host named `name` ("paddock": the sandbox's
// channel; "paddock-ctl": the guest's control port).
int OpenPort(const char* name) {
  for (int tries = 0; tries < 1000; ++tries) {
    if (DIR* d = opendir("/sys/class/virtio-ports")) {
      while (struct dirent* e = readdir(d)) {
        std::string entry = e->d_name;
        if (entry[0] == '.') continue;
        if (ReadSmall("/sys/class/virtio-ports/" + entry + "/name") != name) continue;
        closedir(d);
        std::string dev = "/dev/" + entry;
        for (int i = 0; i < 400; ++i) {
          int fd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
          if (fd >= 0) return fd;
          usleep(5000);
        }
        DieErrno("opening " + dev);
      }
      closedir(d);
    }
    usleep(5000);
  }
  Die(std::string("no virtio-serial port named ") + name + " (virtio_console missing?)");
}

void MakeNode(const std::string& path, mode_t mode, unsigned maj, unsigned min) {
  if (mknod(path.c_str(), mode, makedev(maj, min)) != 0 && errno != EEXIST) DieErrno("mknod " + path);
}

}  // namespace

// The kernel starts us with no channel on fd 3; a container's or function
// zygote's paddock-init always has one.
bool IsGuestPid1() { return getpid() == 1 && fcntl(3, F_GETFD) < 0; }

int GuestCgroupFd() { return g_cgroup_fd; }

bool ApplyGuestLimits(const Limits& limits, std::string* err) {
  if (g_cgroup_fd < 0) return true;
  uint64_t mem = limits.memory_bytes ? limits.memory_bytes : kDefaultMemoryBytes;
  uint32_t pids = limits.pids ? limits.pids : kDefaultPids;
  bool ok = WriteSmall(g_cgroup_fd, "memory.max", std::to_string(mem)) &&
            WriteSmall(g_cgroup_fd, "pids.max", std::to_string(pids));
  if (ok && limits.cpu_millicores)
    ok = WriteSmall(g_cgroup_fd, "cpu.max", std::to_string(limits.cpu_millicores * 100) + " 100000");
  if (!ok) *err = std::string("applying limits in the guest cgroup: ") + std::strerror(errno);
  return ok;
}

namespace {
uint64_t KeyedValue(const std::string& file, const std::string& key) {
  int fd = openat(g_cgroup_fd, file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[2048];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  std::string s(buf, static_cast<size_t>(n));
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find('\n', pos);
    if (end == std::string::npos) end = s.size();
    std::string line = s.substr(pos, end - pos);
    if (line.rfind(key + " ", 0) == 0) return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10);
    pos = end + 1;
  }
  return 0;
}
uint64_t PlainValue(const char* file) {
  int fd = openat(g_cgroup_fd, file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[64];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  return std::strtoull(buf, nullptr, 10);
}
}  // namespace

uint64_t GuestOomKills() { return g_cgroup_fd < 0 ? 0 : KeyedValue("memory.events", "oom_kill"); }

Usage GuestUsage() {
  Usage u;
  if (g_cgroup_fd < 0) return u;
  u.memory_bytes = PlainValue("memory.current");
  u.cpu_time_us = KeyedValue("cpu.stat", "usage_usec");
  u.pids = static_cast<uint32_t>(PlainValue("pids.current"));
  return u;
}

namespace {

// Mixes `entropy` into the guest kernel's pool, credited (RNDADDENTROPY),
// then reseeds the CRNG from it at once (RNDRESEEDCRNG): every read after
// this, in this guest's kernel and its processes, depends on the host's
// bytes, never only on state a template's other clones (or a fork's
// siblings) share. Sets the wall clock to `realtime_ns` when not 0.
bool ApplyEntropyAndClock(const std::string& entropy, uint64_t realtime_ns, std::string* err) {
  if (!entropy.empty()) {
    if (entropy.size() > 4096) {
      errno = EINVAL;
      return Fail(err, "the entropy given is larger than 4096 bytes");
    }
    int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (fd < 0) return Fail(err, "opening /dev/urandom");
    std::vector<char> buf(sizeof(struct rand_pool_info) + entropy.size());
    auto* info = reinterpret_cast<struct rand_pool_info*>(buf.data());
    info->entropy_count = static_cast<int>(entropy.size() * 8);
    info->buf_size = static_cast<int>(entropy.size());
    std::memcpy(info->buf, entropy.data(), entropy.size());
    bool ok = ioctl(fd, RNDADDENTROPY, info) == 0 && ioctl(fd, RNDRESEEDCRNG) == 0;
    int saved = errno;
    close(fd);
    errno = saved;
    if (!ok) return Fail(err, "reseeding the guest's random number generator");
  }
  if (realtime_ns) {
    struct timespec ts {};
    ts.tv_sec = static_cast<time_t>(realtime_ns / 1'000'000'000ull);
    ts.tv_nsec = static_cast<long>(realtime_ns % 1'000'000'000ull);
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) return Fail(err, "setting the guest's clock");
  }
  return true;
}

// Writes `id` as /etc/machine-id of the sandbox root `rootfs` (an overlay
// whose upper is this guest's), never through a link the image may have put
// at /etc or at the file; an image whose /etc is a link or no directory, or
// has a directory there, keeps what it has.
bool WriteMachineId(const std::string& rootfs, const std::string& id, std::string* err) {
  int root = open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return Fail(err, "opening the sandbox root " + rootfs);
  mkdirat(root, "etc", 0755);
  int etc = openat(root, "etc", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  close(root);
  if (etc < 0 && (errno == ELOOP || errno == ENOTDIR)) return true;
  if (etc < 0) return Fail(err, "opening the sandbox's /etc");
  unlinkat(etc, "machine-id", 0);
  int fd = openat(etc, "machine-id", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
  close(etc);
  if (fd < 0 && errno == EEXIST) return true;
  if (fd < 0) return Fail(err, "creating the sandbox's /etc/machine-id");
  std::string line = id + "\n";
  bool ok = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  close(fd);
  if (!ok) return Fail(err, "writing the sandbox's /etc/machine-id");
  return true;
}

}  // namespace

bool ApplyGuestIdentity(const SetupConfig& c, std::string* err) {
  if (g_cgroup_fd < 0) return true;
  if (!ApplyEntropyAndClock(c.entropy, c.realtime_ns, err)) return false;
  return c.machine_id.empty() || WriteMachineId(c.rootfs, c.machine_id, err);
}

namespace {

// A clone's identity (kIdentity): the hostname of the sandbox's UTS
// namespace (that of its init, `sandbox_init`) and its machine-id.
bool ApplyCloneIdentity(pid_t sandbox_init, const std::string& hostname, const std::string& machine_id,
                        std::string* err) {
  const std::string uts = "/proc/" + std::to_string(sandbox_init) + "/ns/uts";
  int ns = open(uts.c_str(), O_RDONLY | O_CLOEXEC);
  if (ns < 0) return Fail(err, "opening the sandbox's UTS namespace");
  // This server stays in the sandbox's UTS namespace from here on: it is the
  // only one whose name it ever sets.
  bool joined = setns(ns, CLONE_NEWUTS) == 0;
  close(ns);
  if (!joined) return Fail(err, "joining the sandbox's UTS namespace");
  if (sethostname(hostname.data(), hostname.size()) != 0) return Fail(err, "setting the sandbox's hostname");
  return WriteMachineId("/rootfs", machine_id, err);
}

bool ValidCloneIdentity(const std::string& hostname, const std::string& machine_id) {
  if (hostname.empty() || hostname.size() > 64 || machine_id.size() != 32) return false;
  for (char c : hostname)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') return false;
  for (char c : machine_id)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// The guest's control port: the host is its only peer (QEMU's chardev), and
// only the host's daemon writes it. A frame that cannot be read (the host's
// end not connected: a template or a paused VM's saved state is restored
// with a new one) is waited out, never a reason to stop.
[[noreturn]] void ServeControl(int fd, pid_t sandbox_init) {
  for (;;) {
    Frame f;
    if (!ReadFrame(fd, &f)) {
      usleep(50'000);
      continue;
    }
    WireReader r(f.payload);
    std::string err;
    int32_t code = 0;
    if (f.type == FrameType::kReseed) {
      std::string entropy;
      uint64_t realtime_ns = 0;
      if (!r.Str(&entropy) || !r.U64(&realtime_ns) || !r.done()) {
        code = EINVAL;
        err = "malformed reseed request";
      } else if (!ApplyEntropyAndClock(entropy, realtime_ns, &err)) {
        code = EIO;
      }
    } else if (f.type == FrameType::kIdentity) {
      std::string entropy, hostname, machine_id;
      uint64_t realtime_ns = 0;
      if (!r.Str(&entropy) || !r.U64(&realtime_ns) || !r.Str(&hostname) || !r.Str(&machine_id) || !r.done() ||
          !ValidCloneIdentity(hostname, machine_id)) {
        code = EINVAL;
        err = "malformed identity request";
      } else if (!ApplyEntropyAndClock(entropy, realtime_ns, &err) ||
                 !ApplyCloneIdentity(sandbox_init, hostname, machine_id, &err)) {
        code = EIO;
      }
    } else {
      code = EINVAL;
      err = "unknown control request";
    }
    WriteFrame(fd, FrameType::kReply, f.id, EncodeReply(code, err, ""));
  }
}

}  // namespace

void RunGuest() {
  // 1. The kernel's world: devices, processes, sysfs.
  MountOrDie("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "");
  MountOrDie("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
  MountOrDie("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
  std::vector<std::string> words = CmdlineWords();
  LoadModules(words);
  int layers = std::atoi(CmdlineValue(words, "paddock.layers").c_str());
  std::string fstype = CmdlineValue(words, "paddock.fs");
  std::string disk = CmdlineValue(words, "paddock.disk");
  if (layers <= 0 || layers > 64) Die("paddock.layers missing from the kernel command line");
  if (fstype != "erofs" && fstype != "ext4") Die("paddock.fs must be erofs or ext4");
  if (disk.empty()) disk = std::to_string(kDefaultDiskBytes);

  // 2. The new root: a tmpfs holding the layer mounts, the overlay's upper
  //    (sized by the disk limit), the overlay itself and the cgroup tree.
  const std::string nr = "/newroot";
  MountOrDie("tmpfs", nr, "tmpfs", MS_NOSUID, "mode=755,size=4m");
  std::string lower;
  for (int i = 0; i < layers; ++i) {
    std::string dev = FindDisk("layer" + std::to_string(i));
    std::string at = nr + "/layers/" + std::to_string(i);
    mkdir((nr + "/layers").c_str(), 0755);
    MountOrDie(dev.c_str(), at, fstype.c_str(), MS_RDONLY | MS_NODEV, "");
    lower = lower.empty() ? at : at + ":" + lower;  // top first
  }
  MountOrDie("tmpfs", nr + "/changes", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=" + disk);
  mkdir((nr + "/changes/upper").c_str(), 0755);
  mkdir((nr + "/changes/work").c_str(), 0755);
  MountOrDie("overlay", nr + "/rootfs", "overlay", 0,
             "lowerdir=" + lower + ",upperdir=" + nr + "/changes/upper,workdir=" + nr + "/changes/work");
  // The sandbox's init binds these nodes into the sandbox's own /dev.
  mkdir((nr + "/dev").c_str(), 0755);
  MakeNode(nr + "/dev/null", S_IFCHR | 0666, 1, 3);
  MakeNode(nr + "/dev/zero", S_IFCHR | 0666, 1, 5);
  MakeNode(nr + "/dev/full", S_IFCHR | 0666, 1, 7);
  MakeNode(nr + "/dev/random", S_IFCHR | 0666, 1, 8);
  MakeNode(nr + "/dev/urandom", S_IFCHR | 0666, 1, 9);
  MakeNode(nr + "/dev/tty", S_IFCHR | 0666, 5, 0);
  MountOrDie("cgroup2", nr + "/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
  int root_cg = open((nr + "/cgroup").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_cg < 0 || !WriteSmall(root_cg, "cgroup.subtree_control", "+memory +pids +cpu"))
    DieErrno("enabling cgroup controllers in the guest");
  if (mkdirat(root_cg, "sandbox", 0755) != 0) DieErrno("creating the guest's sandbox cgroup");
  close(root_cg);
  MountOrDie("proc", nr + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
  int channel = OpenPort("paddock");
  int control = OpenPort("paddock-ctl");

  // 3. Switch root (pivot_root cannot leave the initramfs): the new root is
  //    moved over "/" and becomes our root directory.
  if (chdir(nr.c_str()) != 0) DieErrno("chdir " + nr);
  if (mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) DieErrno("moving the new root over /");
  if (chroot(".") != 0 || chdir("/") != 0) DieErrno("chroot into the new root");

  // 4. The sandbox's init: the container sequence, in its own namespaces
  //    (its /proc shows only the sandbox), in the sandbox cgroup, never an
  //    OOM victim itself (its execs reset their score to 0).
  pid_t child = static_cast<pid_t>(syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
                                                          CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD,
                                           nullptr, nullptr, nullptr, nullptr));
  if (child < 0) DieErrno("starting the sandbox's init");
  if (child == 0) {
    g_cgroup_fd = open("/cgroup/sandbox", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g_cgroup_fd < 0 || !WriteSmall(g_cgroup_fd, "cgroup.procs", "0"))
      DieErrno("joining the guest's sandbox cgroup");
    int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (adj >= 0) {
      if (write(adj, "-1000", 5) < 0) {
      }
      close(adj);
    }
    // The console stays PID 1's: the sandbox's init (reachable by its
    // commands as /proc/1/fd/*) holds /dev/null, so nothing in the sandbox
    // can write the serial console the host keeps a log of.
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0)
      DieErrno("giving the sandbox's init /dev/null as stdio");
    close(devnull);
    // Not dumpable: its commands (root of the guest, without CAP_SYS_PTRACE)
    // cannot open /proc/1/fd/* (the channel, its stdio) or /proc/1/mem.
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) DieErrno("making the sandbox's init non-dumpable");
    if (channel != 3) {
      if (dup2(channel, 3) < 0) DieErrno("dup2");
      close(channel);
    } else {
      fcntl(3, F_SETFD, 0);
    }
    // The host waits for this before it sends the setup (a template VM is
    // saved here; a clone of it resumes in RunInit's read of the setup).
    if (!WriteFrame(3, FrameType::kReady, 0, "")) DieErrno("telling the host the guest is ready");
    _exit(RunInit(3));
  }
  close(channel);
  // 5. The control port, served by a child of PID 1 that keeps the
  //    privileges the sandbox's init gives up (outside its namespaces, out of
  //    its reach): the host reseeds a restored VM, and gives a clone its
  //    identity, through it.
  pid_t ctl = fork();
  if (ctl < 0) DieErrno("starting the guest's control server");
  if (ctl == 0) ServeControl(control, child);
  close(control);
  // 6. Reap orphans until the sandbox's init is gone, then power off.
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid == child || (pid < 0 && errno == ECHILD)) break;
  }
  sync();
  reboot(RB_POWER_OFF);
  Die("power off failed");
}

}  // namespace paddock::init
