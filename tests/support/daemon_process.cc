#include "tests/support/daemon_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "sandbox/linux/cgroup.h"
#include "sandbox/reaper.h"
#include "tests/support/test_rootfs.h"

extern char** environ;

namespace paddock::testing {
namespace {

namespace fs = std::filesystem;

struct CStrings {
  std::vector<std::string> owned;
  std::vector<char*> ptrs;
  explicit CStrings(std::vector<std::string> v) : owned(std::move(v)) {
    for (auto& s : owned) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
  }
};

std::vector<std::string> EnvironmentWith(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.push_back(*e);
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
            posix_spawn_file_actions_t* fa) {
  CStrings cargv(argv), cenv(EnvironmentWith(extra_env));
  pid_t pid = 0;
  int rc = posix_spawn(&pid, cargv.ptrs[0], fa, nullptr, cargv.ptrs.data(), cenv.ptrs.data());
  return rc == 0 ? pid : -1;
}

int WaitStatus(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool SocketAccepts(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

namespace {
// A TCP socket bound to a free port on 127.0.0.1; sets *port.
int BindLoopback(int* port, bool reuse_address) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (reuse_address) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}
}  // namespace

int FreeLoopbackPort() {
  int port = 0;
  close(BindLoopback(&port, /*reuse_address=*/false));
  return port;
}

int ListenOnLoopback(int* port) {
  int fd = BindLoopback(port, /*reuse_address=*/true);
  listen(fd, 16);
  return fd;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ProgramResult RunProgram(std::vector<std::string> argv, const std::string& input,
                         const std::vector<std::string>& extra_env) {
  static std::atomic<int> seq{0};
  char tmpl[] = "/tmp/paddock-run-XXXXXX";
  ProgramResult r;
  if (!mkdtemp(tmpl)) return r;
  const std::string base = std::string(tmpl) + "/" + std::to_string(++seq);
  std::ofstream(base + ".in", std::ios::binary) << input;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, (base + ".in").c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, (base + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, (base + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = Spawn(argv, extra_env, &fa);
  posix_spawn_file_actions_destroy(&fa);
  if (pid > 0) {
    r.code = WaitStatus(pid);
    r.out = ReadWholeFile(base + ".out");
    r.err = ReadWholeFile(base + ".err");
  }
  std::error_code ec;
  fs::remove_all(tmpl, ec);
  return r;
}

pid_t SpawnProgram(std::vector<std::string> argv, const std::string& output_file,
                   const std::vector<std::string>& extra_env) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = Spawn(argv, extra_env, &fa);
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

DaemonProcess::DaemonProcess(DaemonOptions options) : options_(std::move(options)) {
  dir_ = options_.dir;
  if (dir_.empty()) {
    char tmpl[] = "/tmp/paddock-daemon-XXXXXX";
    dir_ = mkdtemp(tmpl) ? tmpl : "/tmp/paddock-daemon-fallback";
    owns_dir_ = true;
  }
  fs::create_directories(dir_);
  // Sandbox uids must traverse the state dir's parents (mkdtemp makes 0700).
  fs::permissions(dir_, fs::perms(0755));
  state_dir_ = dir_ + "/state";
  socket_ = dir_ + "/paddockd.sock";
  log_ = dir_ + "/paddockd.log";
}

DaemonProcess::~DaemonProcess() {
  if (running()) Stop(SIGTERM);
  if (crashed_) {
    SubstrateEnv env;
    env.state_dir = state_dir_;
    ReapReport reaped = ReapLeftovers(env);
    for (const auto& e : reaped.errors) std::fprintf(stderr, "reaping a killed paddockd's leftovers: %s\n", e.c_str());
    RemoveCgroupRootIfEmpty(env.cgroup_root());
  }
  if (owns_dir_) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

std::string DaemonProcess::Start(const std::vector<std::string>& more_args) {
  if (running()) return "paddockd is already running (pid " + std::to_string(pid_) + ")";
  std::vector<std::string> argv = {BuiltBinary("paddockd"), "--state-dir", state_dir_, "--socket",
                                   socket_, "--log-level", options_.log_level};
  if (options_.allow_dir_images) argv.push_back("--allow-dir-images");
  argv.insert(argv.end(), options_.args.begin(), options_.args.end());
  argv.insert(argv.end(), more_args.begin(), more_args.end());
  pid_ = SpawnProgram(argv, log_);
  if (pid_ <= 0) {
    pid_ = 0;
    return "cannot spawn " + argv[0];
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.start_timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (SocketAccepts(socket_)) return "";
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = 0;
      return "paddockd exited during start-up:\n" + LogTail();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return "paddockd did not answer within " + std::to_string(options_.start_timeout_ms) + " ms:\n" + LogTail();
}

int DaemonProcess::Stop(int sig) {
  if (!running()) return -1;
  kill(pid_, sig);
  int code = WaitStatus(pid_);
  pid_ = 0;
  crashed_ = sig != SIGTERM && sig != SIGINT;
  return code;
}

std::string DaemonProcess::Restart(const std::vector<std::string>& more_args) {
  Stop(SIGKILL);
  return Start(more_args);
}

std::string DaemonProcess::LogTail(size_t bytes) const {
  std::string log = ReadWholeFile(log_);
  return log.size() > bytes ? log.substr(log.size() - bytes) : log;
}

ProgramResult DaemonProcess::Cli(std::vector<std::string> args, const std::string& input) const {
  args.insert(args.begin(), BuiltBinary("paddock"));
  return RunProgram(std::move(args), input, {"PADDOCK_SOCKET=" + socket_});
}

}  // namespace paddock::testing
