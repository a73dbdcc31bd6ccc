// A static program run inside a function sandbox by tests/escape_test.cc, in
// two execs of one sandbox, which run on the same stub (its PID 1):
//   exec_residue_probe leave   tries to leave state for the next exec by
//                              every means a command without capabilities
//                              has, and to reach the stub; prints
//                              `name=result` per try ("ok" or an errno name)
//   exec_residue_probe look    prints `residue=WHAT` for each thing an
//                              earlier exec left that it finds, then `end`
// The program itself arrives in /tmp as `probe` (the test pipes it in), so
// `look` ignores that one entry.
#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/ptrace.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace {

constexpr key_t kKey = 0x50414444;  // "PADD"
constexpr const char* kQueue = "/paddock-residue";
constexpr const char* kAbstract = "paddock-residue";
constexpr int kPort = 7100;
constexpr time_t kMarkTime = 123456789;

void Report(const char* name, long rc) {
  printf("%s=%s\n", name, rc >= 0 ? "ok" : (strerrorname_np(errno) ? strerrorname_np(errno) : "E?"));
}

int AbstractSocket(bool listen_on) {
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a {};
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path + 1, kAbstract, strlen(kAbstract));
  socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(kAbstract));
  if (listen_on) return bind(s, reinterpret_cast<sockaddr*>(&a), len) == 0 && listen(s, 4) == 0 ? s : -1;
  return connect(s, reinterpret_cast<sockaddr*>(&a), len) == 0 ? 0 : -1;
}

int Loopback(bool listen_on) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a {};
  a.sin_family = AF_INET;
  a.sin_port = htons(kPort);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (listen_on) return bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && listen(s, 4) == 0 ? s : -1;
  return connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 ? 0 : -1;
}

int Leave() {
  // Scratch: a file each, xattrs, a changed mode, a planted access time.
  Report("tmp_file", open("/tmp/left", O_CREAT | O_WRONLY, 0644));
  Report("shm_file", open("/dev/shm/left", O_CREAT | O_WRONLY, 0644));
  Report("tmp_xattr", setxattr("/tmp", "user.left", "1", 1, 0));
  Report("shm_xattr", setxattr("/dev/shm", "user.left", "1", 1, 0));
  Report("shm_chmod", chmod("/dev/shm", 0701));
  struct timespec times[2] = {{kMarkTime, 0}, {0, UTIME_OMIT}};
  Report("tmp_atime", utimensat(AT_FDCWD, "/tmp", times, 0));
  // System V and POSIX IPC.
  Report("shmget", shmget(kKey, 4096, IPC_CREAT | 0666));
  Report("msgget", msgget(kKey, IPC_CREAT | 0666));
  Report("semget", semget(kKey, 1, IPC_CREAT | 0666));
  struct mq_attr attr {};
  attr.mq_maxmsg = 1;
  attr.mq_msgsize = 8;
  Report("mq_open", mq_open(kQueue, O_CREAT | O_RDWR, 0666, &attr));
  // A listener on an abstract socket and one on loopback, held by a process
  // that leaves the command's session and ignores what it can.
  fflush(stdout);
  int ready[2];
  if (pipe(ready) != 0) return 1;
  pid_t child = fork();
  if (child == 0) {
    setsid();
    if (fork() != 0) _exit(0);  // orphaned: re-parented to the stub
    for (int sig : {SIGTERM, SIGHUP, SIGINT}) signal(sig, SIG_IGN);
    int a = AbstractSocket(true), l = Loopback(true);
    char ok = a >= 0 && l >= 0 ? 'y' : 'n';
    if (write(ready[1], &ok, 1) != 1) _exit(1);
    for (;;) pause();
  }
  close(ready[1]);
  char ok = 0;
  Report("listeners", read(ready[0], &ok, 1) == 1 && ok == 'y' ? 0 : (errno = EIO, -1));
  // The stub: signals, its /proc files, ptrace.
  Report("kill_stub", kill(1, SIGKILL));
  Report("stub_environ", open("/proc/1/environ", O_RDONLY));
  Report("stub_mem", open("/proc/1/mem", O_RDONLY));
  char buf[256];
  Report("stub_exe", readlink("/proc/1/exe", buf, sizeof buf));
  Report("stub_fds", opendir("/proc/1/fd") ? 0 : -1);
  Report("stub_ptrace", ptrace(PTRACE_ATTACH, 1, nullptr, nullptr));
  return 0;
}

int Look() {
  auto residue = [](const std::string& what) { printf("residue=%s\n", what.c_str()); };
  for (const char* dir : {"/tmp", "/dev/shm"}) {
    // Its root's metadata first: listing it would update its access time.
    char v[8];
    if (getxattr(dir, "user.left", v, sizeof v) >= 0) residue(std::string("xattr on ") + dir);
    struct stat st {};
    if (stat(dir, &st) != 0 || (st.st_mode & 07777) != 01777) residue(std::string("mode of ") + dir);
    if (st.st_atim.tv_sec == kMarkTime) residue(std::string("atime of ") + dir);
    DIR* d = opendir(dir);
    if (!d) {
      residue(std::string("unreadable ") + dir);
      continue;
    }
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == ".." || (std::string(dir) == "/tmp" && name == "probe")) continue;
      residue(std::string(dir) + "/" + name);
    }
    closedir(d);
  }
  if (shmget(kKey, 0, 0) >= 0) residue("shm segment");
  if (msgget(kKey, 0) >= 0) residue("message queue");
  if (semget(kKey, 0, 0) >= 0) residue("semaphore set");
  if (mq_open(kQueue, O_RDONLY) != static_cast<mqd_t>(-1)) residue("POSIX message queue");
  if (AbstractSocket(false) == 0) residue("abstract socket listener");
  if (Loopback(false) == 0) residue("loopback listener");
  // Processes: only the stub (1), the shell that runs us, and us.
  DIR* proc = opendir("/proc");
  while (struct dirent* e = proc ? readdir(proc) : nullptr) {
    pid_t pid = atoi(e->d_name);
    if (pid <= 1 || pid == getpid() || pid == getppid()) continue;
    residue("process " + std::to_string(pid));
  }
  if (proc) closedir(proc);
  printf("end\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "leave") return Leave();
  if (mode == "look") return Look();
  fprintf(stderr, "usage: exec_residue_probe leave|look\n");
  return 2;
}
