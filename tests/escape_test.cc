// What a hostile agent inside a sandbox, or a remote client, must not reach:
// each case tries one attack through the real paddockd (DaemonProcess) and
// the C++ SDK, and fails if the attack works.
//   * setuid files made by an image or a sandbox: never usable by another
//     host user (a snapshot's `chmod u+s` binary in the layer cache), and
//     image mounts are nosuid,nodev;
//   * the daemon's stdio and terminal: paddock-init holds /dev/null and a
//     session of its own, so /proc/1/fd/2 is not the daemon's log;
//   * the file API: FIFOs, devices and /proc magic links are refused with a
//     clear error instead of blocking init or leaving the root; many FIFO
//     reads at once stall nothing;
//   * host directories as images: refused unless the daemon was started with
//     --allow-dir-images, then only over the unix socket, never from TCP or a
//     task file, and never `/` or a system directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <sstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "paddock/client.h"
#include "sandbox/sandbox.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_internet.h"
#include "tests/support/test_rootfs.h"

namespace paddock {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr uid_t kNobody = 65534;

// Runs `probe` in a child process that has become the unprivileged host
// user nobody (no supplementary groups); returns its exit status.
int AsNobody(const std::function<int()>& probe) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) != 0 ||
        setresuid(kNobody, kNobody, kNobody) != 0)
      _exit(90);
    _exit(probe());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

client::Client Connect(const testing::DaemonProcess& d) {
  client::ClientOptions o;
  o.socket_path = d.socket_path();
  auto c = client::Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return std::move(*c);
}

std::string Sh(client::Client& c, const std::string& id, const std::string& script) {
  ExecRequest r;
  r.shell = script;
  auto res = c.Exec(id, r);
  EXPECT_TRUE(res.ok()) << res.status().message();
  if (!res.ok()) return "";
  EXPECT_EQ(res->exit_code, 0) << script << "\n" << res->stdout_data << res->stderr_data;
  return res->stdout_data;
}

// The mount options of the mount at `mountpoint` in a mountinfo text.
std::string MountOptions(const std::string& mountinfo, const std::string& mountpoint) {
  std::istringstream in(mountinfo);
  std::string line, options;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, mp, opts;
    f >> id >> parent >> dev >> root >> mp >> opts;
    if (mp == mountpoint) options = opts;  // the last one is on top
  }
  return options;
}

class EscapeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rootfs_ = testing::EnsureBusyboxRootfs();
    ASSERT_EQ(daemon_.Start(), "");
    client_.emplace(Connect(daemon_));
    auto imported = daemon_.Cli({"image", "import-dir", rootfs_, "--name", "busybox:escape"});
    ASSERT_EQ(imported.code, 0) << imported.out << imported.err;
  }
  std::string Create(const std::string& substrate, const std::string& image = "busybox:escape",
                     const Limits& limits = {}) {
    SandboxSpec spec;
    spec.substrate = substrate;
    spec.image = image;
    spec.limits = limits;
    auto sb = client_->Create(spec);
    EXPECT_TRUE(sb.ok()) << sb.status().message() << daemon_.LogTail();
    return sb.ok() ? sb->id : "";
  }

  testing::DaemonProcess daemon_;
  std::optional<client::Client> client_;
  std::string rootfs_;
};

TEST_F(EscapeTest, SetuidBinaryFromASnapshotIsUnreachableByHostUsers) {
  std::string id = Create("container");
  ASSERT_FALSE(id.empty());
  Sh(*client_, id, "cp /bin/busybox /suid && chmod 4755 /suid && ls -l /suid");
  auto snap = client_->SnapshotImage(id, "escape:suid");
  ASSERT_TRUE(snap.ok()) << snap.status().message();
  // A sandbox from the snapshot materializes its layer in the cache.
  std::string fork = Create("container", "escape:suid");
  ASSERT_FALSE(fork.empty());
  Sh(*client_, fork, "test -u /suid");

  const std::string hex = snap->layer.substr(snap->layer.find(':') + 1);
  const std::string cached = daemon_.state_dir() + "/layer-cache/" + hex + "/root/suid";
  struct stat st {};
  ASSERT_EQ(stat(cached.c_str(), &st), 0) << cached;
  // Host root sees what an unprotected cache would hand out: setuid root.
  ASSERT_TRUE(st.st_mode & S_ISUID);
  ASSERT_EQ(st.st_uid, 0u);

  // Host user nobody can neither reach nor run it...
  EXPECT_EQ(AsNobody([&] {
              struct stat s {};
              if (stat(cached.c_str(), &s) == 0) return 1;
              return errno == EACCES ? 0 : 2;
            }),
            0)
      << "an unprivileged host user reached " << cached;
  EXPECT_EQ(AsNobody([&] {
              char* argv[] = {const_cast<char*>("suid"), const_cast<char*>("id"), nullptr};
              execv(cached.c_str(), argv);
              return errno == EACCES ? 0 : 3;
            }),
            0);
  // ...nor list the state dir, nor enter the store, the cache, the views or the log.
  EXPECT_EQ(AsNobody([&] { return opendir(daemon_.state_dir().c_str()) ? 1 : 0; }), 0);
  for (const char* sub : {"/layer-cache", "/images", "/views", "/log"}) {
    std::string p = daemon_.state_dir() + sub;
    if (!fs::exists(p)) continue;
    EXPECT_EQ(AsNobody([&] {
                struct stat s {};
                if (stat((p + "/.").c_str(), &s) == 0 && access(p.c_str(), X_OK) == 0) return 1;
                return 0;
              }),
              0)
        << p << " is open to other host users";
  }
}

// A field of /proc/self/status ("CapEff:\t000..." -> "000...").
std::string StatusField(const std::string& status, const std::string& key) {
  std::istringstream in(status);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) {
      size_t v = line.find_first_not_of(" \t", key.size() + 1);
      return v == std::string::npos ? "" : line.substr(v);
    }
  return "";
}

TEST_F(EscapeTest, CapabilitiesNoNewPrivsSeccompAndIdMap) {
  // Docker's default set less NET_RAW and MKNOD: CHOWN DAC_OVERRIDE FOWNER
  // FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT AUDIT_WRITE SETFCAP.
  const std::string kContainerCaps = "00000000a00405fb";
  struct Want {
    const char* substrate;
    std::string caps;
    std::string uid_map;
  };
  for (const Want& w : {Want{"container", kContainerCaps, "0 200000 65536"}, Want{"function", "0000000000000000", "0 300000 65536"}}) {
    std::string id = Create(w.substrate);
    ASSERT_FALSE(id.empty());
    std::string status = Sh(*client_, id, "cat /proc/self/status");
    SCOPED_TRACE(std::string(w.substrate) + "\n" + status);
    for (const char* set : {"CapEff", "CapPrm", "CapBnd"}) EXPECT_EQ(StatusField(status, set), w.caps) << set;
    EXPECT_EQ(StatusField(status, "CapInh"), "0000000000000000");
    EXPECT_EQ(StatusField(status, "CapAmb"), "0000000000000000");
    EXPECT_EQ(StatusField(status, "NoNewPrivs"), "1");
    EXPECT_EQ(StatusField(status, "Seccomp"), "2");
    std::string uid_map = Sh(*client_, id, "cat /proc/self/uid_map");
    std::istringstream m(uid_map);
    std::string inside, outside, count;
    m >> inside >> outside >> count;
    EXPECT_EQ(inside + " " + outside + " " + count, w.uid_map) << uid_map;
    // Sandbox root is not host root: a file it creates is owned by the mapped
    // uid as seen from the host's side of the map.
    EXPECT_EQ(Sh(*client_, id, "id -u"), "0\n");
  }
}

TEST_F(EscapeTest, ImageMountsAreNosuidAndNodev) {
  for (const char* substrate : {"container", "function"}) {
    std::string id = Create(substrate);
    ASSERT_FALSE(id.empty());
    std::string opts = MountOptions(Sh(*client_, id, "cat /proc/self/mountinfo"), "/");
    EXPECT_THAT(opts, HasSubstr("nosuid")) << substrate << ": " << opts;
    EXPECT_THAT(opts, HasSubstr("nodev")) << substrate << ": " << opts;
  }
}

// The pids of every process below `root` (its children, theirs, ...).
std::vector<pid_t> Descendants(pid_t root) {
  std::map<pid_t, pid_t> parent;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = testing::ReadWholeFile(e.path().string() + "/stat");
    size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream f(stat.substr(close + 2));
    std::string state;
    pid_t ppid = 0;
    f >> state >> ppid;
    parent[std::stoi(name)] = ppid;
  }
  std::vector<pid_t> out;
  for (const auto& [pid, _] : parent) {
    for (pid_t p = parent[pid]; p > 1; p = parent.count(p) ? parent[p] : 0)
      if (p == root) {
        out.push_back(pid);
        break;
      }
  }
  return out;
}

TEST_F(EscapeTest, InitHoldsNoneOfTheDaemonsStdioOrTerminal) {
  const std::string marker = "ESCAPE-MARKER-" + std::to_string(getpid());
  std::string ct = Create("container"), fn = Create("function");
  ASSERT_FALSE(ct.empty());
  ASSERT_FALSE(fn.empty());
  // From the host: every paddock-init the daemon started (spawner, container
  // inits, function zygotes and their stubs) holds none of the daemon's fds
  // 0-2 (its log here) and is in a session of its own, away from the
  // daemon's terminal.
  const std::string log = fs::canonical(daemon_.log_path()).string();
  auto session_of = [](pid_t pid) {
    std::string stat = testing::ReadWholeFile("/proc/" + std::to_string(pid) + "/stat");
    std::istringstream f(stat.substr(stat.rfind(')') + 2));
    std::string state, ppid, pgrp, session;
    f >> state >> ppid >> pgrp >> session;
    return session;
  };
  const std::string daemon_session = session_of(daemon_.pid());
  int inits = 0;
  for (pid_t pid : Descendants(daemon_.pid())) {
    std::string comm = testing::ReadWholeFile("/proc/" + std::to_string(pid) + "/comm");
    if (comm != "paddock-init\n") continue;
    ++inits;
    for (int fd = 0; fd <= 2; ++fd) {
      std::error_code ec;
      std::string target = fs::read_symlink("/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd), ec).string();
      EXPECT_NE(target, log) << "paddock-init " << pid << " holds the daemon's log on fd " << fd;
      EXPECT_EQ(target.rfind("/dev/pts", 0), std::string::npos) << pid << " fd " << fd << ": " << target;
      EXPECT_EQ(target.rfind("/dev/tty", 0), std::string::npos) << pid << " fd " << fd << ": " << target;
    }
    EXPECT_NE(session_of(pid), daemon_session) << "paddock-init " << pid << " shares the daemon's session";
  }
  EXPECT_GE(inits, 3) << "expected the spawner, a container init and a function zygote";

  // From inside: init's descriptors are out of reach, there is no terminal to
  // write to, and whatever an agent writes reaches nothing of the daemon's.
  for (const std::string& id : {ct, fn}) {
    ExecRequest r;
    r.shell = "readlink /proc/1/fd/2; echo " + marker + " > /proc/1/fd/2; echo " + marker + " > /dev/tty; true";
    auto res = client_->Exec(id, r);
    ASSERT_TRUE(res.ok()) << res.status().message();
    EXPECT_THAT(res->stdout_data, Not(HasSubstr("paddockd.log"))) << id;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_THAT(testing::ReadWholeFile(daemon_.log_path()), Not(HasSubstr(marker)));
}

// Runs `call` with a deadline: a call that blocks (init stuck on a FIFO) is
// a failure here, not a hung test. Destroying the sandbox unblocks it.
template <typename F>
auto WithDeadline(F call, std::chrono::seconds limit, client::Client& c, const std::string& id)
    -> std::optional<decltype(call())> {
  auto fut = std::async(std::launch::async, call);
  if (fut.wait_for(limit) == std::future_status::ready) return fut.get();
  (void)c.Destroy(id);
  fut.wait();
  return std::nullopt;
}

TEST_F(EscapeTest, FileApiRefusesFifosDevicesAndMagicLinks) {
  std::string id = Create("container");
  ASSERT_FALSE(id.empty());
  Sh(*client_, id, "mkfifo /tmp/fifo && echo secret > /root-only");
  auto read = WithDeadline([&] { return client_->ReadFile(id, "/tmp/fifo"); }, std::chrono::seconds(20),
                           *client_, id);
  ASSERT_TRUE(read.has_value()) << "ReadFile of a FIFO blocked";
  EXPECT_EQ(read->status().code(), Code::kInvalidArgument) << read->status().message();
  EXPECT_THAT(read->status().message(), HasSubstr("FIFO"));
  auto write = WithDeadline([&] { return client_->WriteFile(id, "/tmp/fifo", "x").status(); }, std::chrono::seconds(20),
                            *client_, id);
  ASSERT_TRUE(write.has_value()) << "WriteFile of a FIFO blocked";
  EXPECT_EQ(write->code(), Code::kInvalidArgument) << write->message();

  for (const char* dev : {"/dev/tty", "/dev/zero", "/dev/null"}) {
    auto r = WithDeadline([&] { return client_->ReadFile(id, dev); }, std::chrono::seconds(20), *client_, id);
    ASSERT_TRUE(r.has_value()) << dev << " blocked";
    EXPECT_EQ(r->status().code(), Code::kInvalidArgument) << dev << ": " << r->status().message();
  }
  EXPECT_EQ(client_->WriteFile(id, "/dev/null", "x").status().code(), Code::kInvalidArgument);
  // Magic links: init's own descriptors and roots are not reachable by name.
  EXPECT_EQ(client_->ReadFile(id, "/proc/self/root/root-only").status().code(), Code::kInvalidArgument);
  EXPECT_THAT(client_->ReadFile(id, "/proc/self/root/root-only").status().message(), HasSubstr("magic link"));
  for (const char* magic : {"/proc/1/root/root-only", "/proc/self/fd/3", "/proc/1/cwd/root-only", "/proc/self/cwd/root-only"}) {
    auto r = client_->ReadFile(id, magic);
    EXPECT_FALSE(r.ok()) << magic << " was read: " << *r;
  }
  for (const char* magic : {"/proc/self/fd/0", "/proc/self/fd/1", "/proc/self/cwd/x"})
    EXPECT_FALSE(client_->WriteFile(id, magic, "garbage").ok()) << magic;
  // The ordinary calls still work, symlinks inside the root included.
  Sh(*client_, id, "ln -s /root-only /tmp/link");
  auto ok = client_->ReadFile(id, "/tmp/link");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(*ok, "secret\n");
  ASSERT_TRUE(client_->WriteFile(id, "/tmp/deep/er/file", "hi", 0644, /*make_parents=*/true).ok());
  EXPECT_EQ(Sh(*client_, id, "cat /tmp/deep/er/file"), "hi");

  // /proc and /sys are not the file API's: a function zygote's /proc would
  // show the command lines and environments of other sandboxes' execs.
  // (cmdline and status are world-readable: only the check refuses them.)
  for (const char* pseudo : {"/proc/1/cmdline", "/proc/self/status", "/proc/cpuinfo"}) {
    auto r = client_->ReadFile(id, pseudo);
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << pseudo << ": " << r.status().message();
    EXPECT_THAT(r.status().message(), HasSubstr("/proc or /sys")) << pseudo;
  }
  EXPECT_EQ(client_->ListDir(id, "/proc").status().code(), Code::kInvalidArgument);

  // A function sandbox: the same refusals, and no sight of other execs.
  std::string fn = Create("function");
  ASSERT_FALSE(fn.empty());
  auto other = std::async(std::launch::async, [&] {
    ExecRequest r;
    r.shell = "SECRET_VERIFIER_TOKEN=1 sleep 3";
    r.env["SECRET_ENV"] = "verifier-secret";
    return client_->Exec(fn, r);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  auto listing = client_->ListDir(fn, "/proc");
  EXPECT_FALSE(listing.ok()) << "the file API listed the zygote's /proc";
  for (int pid = 1; pid < 40; ++pid) {
    auto env = client_->ReadFile(fn, "/proc/" + std::to_string(pid) + "/environ");
    EXPECT_FALSE(env.ok() && env->find("verifier-secret") != std::string::npos)
        << "read another exec's environment through /proc/" << pid;
  }
  ASSERT_TRUE(other.get().ok());
  EXPECT_EQ(client_->ReadFile(fn, "/dev/zero").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(client_->ReadFile(fn, "/proc/self/root/etc/passwd").status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(client_->ReadFile(fn, "/etc/passwd").ok());
}

TEST_F(EscapeTest, SeccompDeniesEachFamilyAndOtherAbisKillTheProcess) {
  const std::string probe = testing::ReadWholeFile(PADDOCK_SECCOMP_PROBE);
  ASSERT_GT(probe.size(), 10000u);
  for (const char* substrate : {"container", "function"}) {
    std::string id = Create(substrate);
    ASSERT_FALSE(id.empty());
    ExecRequest r;
    r.shell = "cat > /tmp/probe && chmod 755 /tmp/probe && /tmp/probe";
    r.stdin_data = probe;
    auto res = client_->Exec(id, r);
    ASSERT_TRUE(res.ok()) << res.status().message();
    ASSERT_EQ(res->exit_code, 0) << res->stderr_data;
    const std::string& out = res->stdout_data;
    SCOPED_TRACE(std::string(substrate) + ":\n" + out);
    EXPECT_THAT(out, HasSubstr("getpid=ok\n"));
    EXPECT_THAT(out, HasSubstr("socket_inet=ok\n"));
    for (const char* denied : {"mount", "unshare", "clone_newuser", "io_uring_setup", "bpf", "userfaultfd",
                               "perf_event_open", "keyctl", "add_key", "kexec_load", "open_by_handle_at",
                               "ptrace_traceme", "socket_raw"})
      EXPECT_THAT(out, HasSubstr(std::string(denied) + "=EPERM\n"));
    EXPECT_THAT(out, HasSubstr("clone3=ENOSYS\n"));
    for (const char* family : {"socket_packet", "socket_netlink", "socket_vsock", "socket_alg"})
      EXPECT_THAT(out, HasSubstr(std::string(family) + "=EAFNOSUPPORT\n"));
    EXPECT_THAT(out, HasSubstr("x32_getpid=signal=" + std::to_string(SIGSYS) + "\n"));
    // A kernel built without ia32 emulation refuses `int 0x80` itself (SIGSEGV).
    EXPECT_THAT(out, ::testing::AnyOf(HasSubstr("ia32_getpid=signal=" + std::to_string(SIGSYS) + "\n"),
                                      HasSubstr("ia32_getpid=signal=" + std::to_string(SIGSEGV) + "\n")));
  }
}

TEST_F(EscapeTest, FunctionExecsShareNoScratchShmOrLoopback) {
  // Two function sandboxes of one image and limits share a zygote: what one
  // exec leaves running or written must reach no other exec, of the same
  // sandbox or the other one.
  std::string a = Create("function"), b = Create("function");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  auto holder = std::async(std::launch::async, [&] {
    ExecRequest r;
    // Two listeners: 5555 for the others to try, 5556 to prove (from inside
    // this exec) that a listener here does accept.
    r.shell = "echo a > /dev/shm/left && echo a > /tmp/left && (nc -l -p 5555 > /dev/null &) && "
              "(nc -l -p 5556 > /dev/null &) && sleep 0.5 && "
              "if echo x | nc -w 1 127.0.0.1 5556; then echo SELF-CONNECTED; fi; sleep 4; ls /dev/shm";
    r.timeout_ms = 20000;
    return client_->Exec(a, r);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const std::string probe =
      "ls /dev/shm /tmp; if echo hi | nc -w 1 127.0.0.1 5555; then echo CONNECTED; else echo REFUSED; fi";
  for (const std::string& id : {a, b}) {
    ExecRequest r;
    r.shell = probe;
    auto res = client_->Exec(id, r);
    ASSERT_TRUE(res.ok()) << res.status().message();
    EXPECT_THAT(res->stdout_data, Not(HasSubstr("left"))) << id << ": " << res->stdout_data;
    EXPECT_THAT(res->stdout_data, HasSubstr("REFUSED")) << id << ": " << res->stdout_data;
  }
  auto held = holder.get();
  ASSERT_TRUE(held.ok()) << held.status().message();
  EXPECT_THAT(held->stdout_data, HasSubstr("left")) << "the holding exec did not write its file";
  EXPECT_THAT(held->stdout_data, HasSubstr("SELF-CONNECTED")) << "its own listener did not accept";
}

TEST_F(EscapeTest, EachFunctionExecHasANewNetworkNamespaceWithLoopbackUp) {
  // Each exec has a network namespace no other exec has, with loopback up
  // (a zygote's first exec takes the zygote's own, unused one; every later
  // stub makes its own): no socket an earlier exec left (its loopback
  // connection's TIME_WAIT entries) is seen by the next, of this sandbox or
  // of another sharing the zygote, and execs running at once are in
  // different namespaces. (A namespace's inode number is reused once it is
  // freed, so only execs alive together can be compared by it.)
  std::string a = Create("function"), b = Create("function");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  for (int i = 0; i < 6; ++i) {
    ExecRequest r;
    // TCP sockets of the namespace, v4 and v6 (nc's listener is dual-stack).
    r.shell = "count() { cat /proc/net/tcp /proc/net/tcp6 | grep -vc local_address; }; echo sockets=$(count); "
              "(nc -l -p 7000 > /dev/null &) ; sleep 0.2; "
              "if echo x | nc -w 1 127.0.0.1 7000; then echo LOOPBACK-UP; fi; echo left=$(count)";
    auto res = client_->Exec(i % 2 ? b : a, r);
    ASSERT_TRUE(res.ok()) << res.status().message();
    const std::string& out = res->stdout_data;
    EXPECT_THAT(out, HasSubstr("sockets=0\n")) << "exec " << i << " saw an earlier exec's sockets: " << out;
    EXPECT_THAT(out, HasSubstr("LOOPBACK-UP")) << "exec " << i << ": " << out;
    EXPECT_THAT(out, Not(HasSubstr("left=0\n"))) << "exec " << i << " left no TIME_WAIT socket to look for: " << out;
  }
  auto holder = std::async(std::launch::async, [&] {
    ExecRequest r;
    r.shell = "readlink /proc/self/ns/net; sleep 3";
    r.timeout_ms = 20000;
    return client_->Exec(a, r);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  std::set<std::string> alive;
  for (const std::string& id : {a, b}) {
    ExecRequest r;
    r.shell = "readlink /proc/self/ns/net";
    auto res = client_->Exec(id, r);
    ASSERT_TRUE(res.ok()) << res.status().message();
    EXPECT_THAT(res->stdout_data, ::testing::StartsWith("net:[")) << res->stdout_data;
    alive.insert(res->stdout_data);
  }
  auto held = holder.get();
  ASSERT_TRUE(held.ok()) << held.status().message();
  alive.insert(held->stdout_data);
  EXPECT_EQ(alive.size(), 3u) << "two execs running at once shared a network namespace";
}

TEST_F(EscapeTest, FunctionSandboxesSharingAZygoteAreAccountedApart) {
  // Same image and limits: one zygote. Sandbox a fills its process limit and
  // holds it; b's execs must still fork all they need, and each sandbox's
  // usage shows its own processes only.
  Limits limits;
  limits.pids = 24;
  std::string a = Create("function", "busybox:escape", limits), b = Create("function", "busybox:escape", limits);
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  auto holder = std::async(std::launch::async, [&] {
    ExecRequest r;
    // The subshell forks until the limit refuses it (ash then exits; its
    // sleeps stay); counting /proc is a glob, no fork.
    r.shell = "(for i in $(seq 40); do sleep 6 & done) 2>/dev/null; sleep 3; set -- /proc/[0-9]*; echo started $#";
    r.timeout_ms = 20000;
    return client_->Exec(a, r);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto usage_a = client_->Stats(a);
  ASSERT_TRUE(usage_a.ok()) << usage_a.status().message();
  ASSERT_TRUE(usage_a->has_usage);
  EXPECT_GE(usage_a->usage.pids, 20u) << "a's processes are not counted in a's own cgroup";
  EXPECT_LE(usage_a->usage.pids, 24u) << "a ran past its pids limit";
  ExecRequest r;
  r.shell = "for i in $(seq 12); do sleep 1 & done; wait; echo b-forked";
  r.timeout_ms = 20000;
  auto res = client_->Exec(b, r);
  ASSERT_TRUE(res.ok()) << res.status().message();
  EXPECT_EQ(res->exit_code, 0) << res->stderr_data;
  EXPECT_THAT(res->stdout_data, HasSubstr("b-forked"));
  EXPECT_THAT(res->stderr_data, Not(HasSubstr("fork"))) << "b was refused processes a holds";
  auto usage_b = client_->Stats(b);
  ASSERT_TRUE(usage_b.ok()) << usage_b.status().message();
  EXPECT_LT(usage_b->usage.pids, 5u) << "b's usage counts a's processes";
  auto held = holder.get();
  ASSERT_TRUE(held.ok()) << held.status().message();
  // a itself was held to its limit: the shell, its sleeps and the probe fit in 24.
  ASSERT_THAT(held->stdout_data, HasSubstr("started")) << held->exit_code << " " << held->stderr_data;
  int started = std::atoi(held->stdout_data.substr(held->stdout_data.find("started") + 8).c_str());
  EXPECT_LE(started, 24) << held->stdout_data;
  EXPECT_GE(started, 15) << held->stdout_data;
}

TEST_F(EscapeTest, DestroyingAFunctionSandboxKillsItsRunningExec) {
  std::string a = Create("function");
  ASSERT_FALSE(a.empty());
  auto running = std::async(std::launch::async, [&] {
    ExecRequest r;
    r.shell = "sleep 30";
    r.timeout_ms = 60000;
    auto t0 = std::chrono::steady_clock::now();
    auto res = client_->Exec(a, r);
    return std::make_pair(res.ok() ? res->signal : -1, std::chrono::steady_clock::now() - t0);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  ASSERT_TRUE(client_->Destroy(a).ok());
  auto [signal, took] = running.get();
  EXPECT_LT(took, std::chrono::seconds(15)) << "the exec outlived its sandbox";
  (void)signal;
}

// A function sandbox's execs run one after another on one stub, their PID 1
// (sandbox/function/stub_exec.h). Nothing one exec leaves reaches the next
// (files, xattrs, modes and times of the scratch mounts, System V and POSIX
// IPC, abstract and loopback listeners, processes), and no command reaches
// the stub, which keeps the capabilities it needs between execs.
TEST_F(EscapeTest, ExecsOnOneStubLeaveNothingToEachOther) {
  const std::string probe = testing::ReadWholeFile(PADDOCK_RESIDUE_PROBE);
  ASSERT_GT(probe.size(), 10000u);
  std::string id = Create("function");
  ASSERT_FALSE(id.empty());
  auto run = [&](const std::string& mode) {
    ExecRequest r;
    r.shell = "cat > /tmp/probe && chmod 755 /tmp/probe && /tmp/probe " + mode +
              "; echo stub=$(cut -d' ' -f22 /proc/1/stat)";
    r.stdin_data = probe;
    auto res = client_->Exec(id, r);
    EXPECT_TRUE(res.ok()) << res.status().message();
    return res.ok() ? res->stdout_data : std::string();
  };
  auto stub_of = [](const std::string& out) {
    size_t at = out.rfind("stub=");
    return at == std::string::npos ? std::string("?") : out.substr(at);
  };
  const std::string first = run("look");
  const std::string left = run("leave");
  SCOPED_TRACE("leave:\n" + left);
  for (const char* tried : {"tmp_file", "shm_file", "tmp_xattr", "shm_xattr", "shm_chmod", "tmp_atime", "shmget",
                            "msgget", "semget", "mq_open", "listeners"})
    EXPECT_THAT(left, HasSubstr(std::string(tried) + "=ok\n")) << "the probe could not even try " << tried;
  for (const char* denied : {"stub_environ", "stub_mem", "stub_exe", "stub_fds", "stub_ptrace"}) {
    EXPECT_THAT(left, HasSubstr(std::string(denied) + "=")) << denied;
    EXPECT_THAT(left, Not(HasSubstr(std::string(denied) + "=ok\n"))) << "a command reached the stub: " << denied;
  }
  const std::string looked = run("look");
  EXPECT_EQ(looked.substr(0, looked.find("stub=")), "end\n") << "the next exec found what the last one left";
  // All three ran on one stub (its start time), so this is the reused path.
  EXPECT_EQ(stub_of(first), stub_of(left));
  EXPECT_EQ(stub_of(left), stub_of(looked));
  EXPECT_NE(stub_of(looked), "stub=") << looked;
  // Each command has no capability at all, on a reused stub as on a new one.
  std::string status = Sh(*client_, id, "cat /proc/self/status");
  for (const char* set : {"CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"})
    EXPECT_EQ(StatusField(status, set), "0000000000000000") << set << "\n" << status;
  EXPECT_EQ(StatusField(status, "NoNewPrivs"), "1");
  EXPECT_EQ(StatusField(status, "Seccomp"), "2");
}

// After its first exec, a function sandbox holds that exec's stub for the
// next one, in its own cgroup. One that dies while it waits (killed from the
// host here) costs nothing but a fresh stub.
TEST_F(EscapeTest, AHeldStubThatDiesIsReplaced) {
  std::string id = Create("function");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Sh(*client_, id, "echo one"), "one\n");
  EXPECT_EQ(Sh(*client_, id, "echo two"), "two\n");
  SubstrateEnv env;
  env.state_dir = daemon_.state_dir();
  const std::string procs = "/sys/fs/cgroup/pids/" + env.cgroup_root() + "/fs-" + id + "/cgroup.procs";
  std::string held;
  for (int i = 0; i < 100 && held.empty(); ++i) {
    std::ifstream in(procs);
    std::getline(in, held, '\0');
    if (held.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(held.empty()) << "no stub held in " << procs;
  std::istringstream pids(held);
  int killed = 0;
  for (pid_t pid; pids >> pid;) killed += kill(pid, SIGKILL) == 0;
  EXPECT_GE(killed, 1) << held;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(Sh(*client_, id, "echo three"), "three\n");
}

TEST_F(EscapeTest, ManyFifoReadsAtOnceStallNothing) {
  std::string id = Create("container");
  ASSERT_FALSE(id.empty());
  Sh(*client_, id, "for i in $(seq 64); do mkfifo /tmp/f$i; done");
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<Result<std::string>>> reads;
  for (int i = 1; i <= 64; ++i)
    reads.push_back(std::async(std::launch::async, [&, i] { return client_->ReadFile(id, "/tmp/f" + std::to_string(i)); }));
  auto echo = WithDeadline([&] { return Sh(*client_, id, "echo alive"); }, std::chrono::seconds(30), *client_, id);
  ASSERT_TRUE(echo.has_value()) << "an exec stalled behind FIFO reads";
  EXPECT_EQ(*echo, "alive\n");
  for (auto& r : reads) {
    ASSERT_EQ(r.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "a FIFO read blocked";
    EXPECT_EQ(r.get().status().code(), Code::kInvalidArgument);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
}

// MicroVM sandboxes: the same checks in tests/microvm_daemon_test.cc.
TEST_F(EscapeTest, EgressReachesOnlyWhatTheAllowListNames) {
  testing::TestInternet inet;
  ASSERT_TRUE(inet.ok()) << inet.why();
  const std::string server = inet.server_ip();
  for (const std::string substrate : {"container", "function"}) {
    SCOPED_TRACE(substrate);
    SandboxSpec spec;
    spec.substrate = substrate;
    spec.image = "busybox:escape";
    spec.network_allow = {server + ":8080", inet.host_ip() + "/32", "169.254.169.254", "127.0.0.1"};
    auto sb = client_->Create(spec);
    ASSERT_TRUE(sb.ok()) << sb.status().message() << daemon_.LogTail();
    auto sh = [&](const std::string& script) {
      ExecRequest r;
      r.shell = script + " 2>&1; echo rc=$?";
      r.timeout_ms = 30000;
      auto res = client_->Exec(sb->id, r);
      EXPECT_TRUE(res.ok()) << res.status().message();
      return res.ok() ? res->stdout_data : std::string();
    };
    // Allowed: plain HTTP through the proxy (wget honours http_proxy)...
    EXPECT_THAT(sh("wget -q -O- http://" + server + ":8080/hello.txt"), HasSubstr("hello-egress\nrc=0"));
    // ...and CONNECT, the way HTTPS and other TCP go.
    // (stdin stays open a moment: busybox nc stops reading at its EOF)
    EXPECT_THAT(sh("(printf 'CONNECT " + server + ":8080 HTTP/1.1\\r\\n\\r\\nGET /hello.txt HTTP/1.0\\r\\n\\r\\n'; "
                   "sleep 1) | nc -w 3 127.0.0.1 3128"),
                ::testing::AllOf(HasSubstr("200 Connection established"), HasSubstr("hello-egress")));
    // Not on the list: another port of the same server. A clear error in the sandbox.
    std::string other = sh("wget -q -O- http://" + server + ":8081/hello.txt");
    EXPECT_THAT(other, Not(HasSubstr("hello-egress")));
    EXPECT_THAT(other, HasSubstr("403"));
    // Never the host, nor link-local metadata, nor loopback, though the list names them.
    for (const std::string& target : {inet.host_ip() + ":8080", std::string("169.254.169.254:80"), std::string("127.0.0.1:22")}) {
      std::string out = sh("(printf 'CONNECT " + target + " HTTP/1.1\\r\\n\\r\\n'; sleep 1) | nc -w 3 127.0.0.1 3128");
      EXPECT_THAT(out, HasSubstr("403")) << target;
      EXPECT_THAT(out, Not(HasSubstr("200 Connection established"))) << target;
    }
    // No way around the proxy: the sandbox has no route.
    EXPECT_THAT(sh("echo x | nc -w 2 " + server + " 8080"), Not(HasSubstr("rc=0")));

    // Without an allow list: nothing leaves (no proxy, no route).
    std::string plain = Create(substrate);
    ExecRequest r;
    r.shell = "wget -q -T 3 -O- http://" + server + ":8080/hello.txt 2>&1; echo rc=$?";
    auto res = client_->Exec(plain, r);
    ASSERT_TRUE(res.ok());
    EXPECT_THAT(res->stdout_data, Not(HasSubstr("hello-egress")));
    EXPECT_THAT(res->stdout_data, Not(HasSubstr("rc=0")));
    // The proxy goes with its sandbox.
    ASSERT_TRUE(client_->Destroy(sb->id).ok());
  }

  // A malformed entry is refused naming it.
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = "busybox:escape";
  spec.network_allow = {"bad host!"};
  auto bad = client_->Create(spec);
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("bad host!"));
}

TEST(ImageSources, HostDirectoriesAreRefusedWithoutTheDevelopmentFlag) {
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d(testing::DaemonOptions{.allow_dir_images = false});
  ASSERT_EQ(d.Start(), "");
  auto c = Connect(d);
  for (const std::string& image : {rootfs, std::string("/")}) {
    for (const char* substrate : {"container", "function"}) {
      SandboxSpec spec;
      spec.substrate = substrate;
      spec.image = image;
      auto sb = c.Create(spec);
      ASSERT_FALSE(sb.ok()) << image << " was accepted as an image";
      EXPECT_EQ(sb.status().code(), Code::kPermissionDenied) << sb.status().message();
    }
  }
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = rootfs;
  EXPECT_THAT(c.Create(spec).status().message(), HasSubstr("import-dir"));
  // The way in: import, then use the name.
  auto imported = d.Cli({"image", "import-dir", rootfs, "--name", "busybox:src"});
  ASSERT_EQ(imported.code, 0) << imported.err;
  spec.image = "busybox:src";
  EXPECT_TRUE(c.Create(spec).ok());
}

TEST(ImageSources, WithTheFlagOnlyUnixClientsAndNeverSystemDirectories) {
  std::string rootfs = testing::EnsureBusyboxRootfs();
  testing::DaemonProcess d;  // --allow-dir-images
  const std::string token = "escape-test-token-" + std::to_string(getpid());
  const std::string token_file = d.dir() + "/token";
  {
    std::ofstream(token_file) << token;
  }
  chmod(token_file.c_str(), 0600);
  const int port = testing::FreeLoopbackPort();
  ASSERT_EQ(d.Start({"--listen-tcp", "127.0.0.1:" + std::to_string(port), "--token-file", token_file}), "");
  auto unix_client = Connect(d);

  for (const char* system : {"/", "/etc", "/usr", "/root", "/proc/1/root", "/var/lib", "/dev"}) {
    SandboxSpec spec;
    spec.substrate = "container";
    spec.image = system;
    auto sb = unix_client.Create(spec);
    ASSERT_FALSE(sb.ok()) << system << " was accepted as an image";
    EXPECT_EQ(sb.status().code(), Code::kPermissionDenied) << system << ": " << sb.status().message();
  }
  auto import_root = d.Cli({"image", "import-dir", "/etc", "--name", "etc:x"});
  EXPECT_NE(import_root.code, 0);
  EXPECT_THAT(import_root.err + import_root.out, HasSubstr("system directory"));

  SandboxSpec spec;
  spec.substrate = "function";
  spec.image = rootfs;
  EXPECT_TRUE(unix_client.Create(spec).ok());

  client::ClientOptions o;
  o.tcp_target = "127.0.0.1:" + std::to_string(port);
  o.token = token;
  auto tcp = client::Client::Connect(o);
  ASSERT_TRUE(tcp.ok()) << tcp.status().message();
  auto remote = tcp->Create(spec);
  ASSERT_FALSE(remote.ok()) << "a TCP client used a host directory as its image";
  EXPECT_EQ(remote.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(remote.status().message(), HasSubstr("unix"));

  // A task file never names a host directory, even on this daemon.
  const std::string work = d.dir() + "/work";
  fs::create_directories(work);
  std::ofstream(work + "/tasks.jsonl")
      << R"({"id":"dir-task","image":")" << rootfs
      << R"(","substrate":"function","instruction":"x","tools":["bash","submit"],"max_turns":2,"verifier":"true"})"
      << "\n";
  std::ofstream(work + "/script.json") << R"(["\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"submit\">\n<｜DSML｜parameter name=\"answer\" string=\"true\">x</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"])";
  auto run = d.Cli({"run", work + "/tasks.jsonl", "--policy", "scripted", "--policy-script", work + "/script.json",
                    "--id", "dir-run", "--out", work + "/out"});
  std::string exported = testing::ReadWholeFile(work + "/out/dir-run/episodes.jsonl");
  EXPECT_THAT(run.out + run.err + exported, HasSubstr("host directory")) << run.out << run.err;
  EXPECT_THAT(exported, Not(HasSubstr("\"reward\":1")));
}

TEST(UnixListener, SocketIs0660RootAndThePaddockGroup) {
  testing::DaemonProcess d;
  ASSERT_EQ(d.Start(), "");
  struct stat st {};
  ASSERT_EQ(stat(d.socket_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_uid, 0u);
  struct group* g = getgrnam("paddock");
  ASSERT_NE(g, nullptr) << "no group 'paddock': scripts/install-deps.sh creates it";
  EXPECT_EQ(st.st_gid, g->gr_gid);
}

TEST(TcpListener, ClientsNeverSendTheTokenInClearTextOffLoopback) {
  // Refused before any connection is attempted (no packet leaves).
  client::ClientOptions far;
  far.tcp_target = "paddock.invalid:7443";
  far.token = "secret";
  far.tls_ca_file.clear();
  auto c = client::Client::Connect(far);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("clear text"));
  // --tls-client-ca without a certificate of the daemon's own is refused at start.
  testing::DaemonProcess d(testing::DaemonOptions{.start_timeout_ms = 5000});
  const std::string token_file = d.dir() + "/token";
  std::ofstream(token_file) << "t";
  chmod(token_file.c_str(), 0600);
  EXPECT_NE(d.Start({"--listen-tcp", "127.0.0.1:" + std::to_string(testing::FreeLoopbackPort()), "--token-file", token_file,
                     "--tls-client-ca", token_file}),
            "");
  EXPECT_THAT(testing::ReadWholeFile(d.log_path()), HasSubstr("--tls-client-ca needs TLS"));
}

TEST(TcpListener, RefusesATokenFileOthersCanRead) {
  testing::DaemonProcess d(testing::DaemonOptions{.start_timeout_ms = 5000});
  const std::string token_file = d.dir() + "/token";
  std::ofstream(token_file) << "secret-token-value";
  chmod(token_file.c_str(), 0644);
  std::string why = d.Start({"--listen-tcp", "127.0.0.1:" + std::to_string(testing::FreeLoopbackPort()), "--token-file", token_file});
  EXPECT_NE(why, "") << "paddockd served TCP with a world-readable token file";
  EXPECT_THAT(testing::ReadWholeFile(d.log_path()), HasSubstr("chmod 600"));
}

// A CA, a server certificate for 127.0.0.1 and a client certificate, made
// with the openssl command line in `dir`.
bool MakeCertificates(const std::string& dir) {
  const std::string script =
      "set -e; cd '" + dir + "'; "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=paddock-test-ca 2>/dev/null; "
      "for who in server client; do "
      "  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null; "
      "  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > $who.ext; "
      "  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 "
      "    -extfile $who.ext 2>/dev/null; "
      "done; chmod 600 *.key";
  return testing::RunProgram({"/bin/sh", "-c", script}).code == 0;
}

TEST(TcpListener, NonLoopbackNeedsTlsAndTlsClientsConnect) {
  testing::DaemonProcess d(testing::DaemonOptions{.start_timeout_ms = 8000});
  const std::string token_file = d.dir() + "/token";
  std::ofstream(token_file) << "tls-test-token";
  chmod(token_file.c_str(), 0600);
  ASSERT_TRUE(MakeCertificates(d.dir()));

  // Off loopback without TLS: refused at start.
  EXPECT_NE(d.Start({"--listen-tcp", "0.0.0.0:" + std::to_string(testing::FreeLoopbackPort()), "--allow-remote", "--token-file",
                     token_file}),
            "");
  EXPECT_THAT(testing::ReadWholeFile(d.log_path()), HasSubstr("--tls-cert"));

  // Mutual TLS on loopback.
  const int port = testing::FreeLoopbackPort();
  ASSERT_EQ(d.Start({"--listen-tcp", "127.0.0.1:" + std::to_string(port), "--token-file", token_file, "--tls-cert",
                     d.dir() + "/server.pem", "--tls-key", d.dir() + "/server.key", "--tls-client-ca",
                     d.dir() + "/ca.pem"}),
            "");
  client::ClientOptions o;
  o.tcp_target = "127.0.0.1:" + std::to_string(port);
  o.token = "tls-test-token";
  o.connect_timeout = std::chrono::milliseconds(3000);
  o.tls_ca_file = d.dir() + "/ca.pem";
  o.tls_cert_file = d.dir() + "/client.pem";
  o.tls_key_file = d.dir() + "/client.key";
  auto good = client::Client::Connect(o);
  ASSERT_TRUE(good.ok()) << good.status().message() << d.LogTail();
  EXPECT_TRUE(good->List().ok());

  client::ClientOptions plain = o;
  plain.tls_ca_file.clear();
  plain.tls_cert_file.clear();
  plain.tls_key_file.clear();
  auto p = client::Client::Connect(plain);
  EXPECT_TRUE(!p.ok() || !p->List().ok()) << "a plain-text client was served by a TLS listener";

  client::ClientOptions no_cert = o;
  no_cert.tls_cert_file.clear();
  no_cert.tls_key_file.clear();
  auto nc = client::Client::Connect(no_cert);
  EXPECT_TRUE(!nc.ok() || !nc->List().ok()) << "a client without a certificate passed mutual TLS";

  // Nothing on the daemon's host is named by a TCP client: not a log backup.
  auto backup = good->LogBackup(d.dir() + "/remote-backup");
  EXPECT_EQ(backup.status().code(), Code::kPermissionDenied) << backup.status().message();
  EXPECT_FALSE(fs::exists(d.dir() + "/remote-backup"));

  // The CLI over TLS.
  auto cli = testing::RunProgram({testing::BuiltBinary("paddock"), "--tcp", o.tcp_target, "--token-file", token_file,
                                  "--tls-ca", o.tls_ca_file, "--tls-cert", o.tls_cert_file, "--tls-key",
                                  o.tls_key_file, "sandbox", "ls"});
  EXPECT_EQ(cli.code, 0) << cli.out << cli.err;
}

}  // namespace
}  // namespace paddock
