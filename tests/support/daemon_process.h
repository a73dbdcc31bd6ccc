// A real paddockd for tests: spawned on its own state dir and socket, stopped
// with any signal (SIGTERM for a clean shutdown, SIGKILL for a crash), and
// restarted on the same state. Also runs other built programs (the paddock
// CLI) to completion with captured output. No mocks: the daemon is the
// binary a user runs.
#pragma once

#include <sys/types.h>

#include <csignal>
#include <string>
#include <vector>

namespace paddock::testing {

struct ProgramResult {
  int code = -1;  // exit status; 128+N when killed by signal N; -1 when it could not start
  std::string out, err;
};

// Runs argv[0] (a path) with stdin fed from `input`, the current environment
// plus `extra_env` ("K=V"), and returns its status and output.
ProgramResult RunProgram(std::vector<std::string> argv, const std::string& input = "",
                         const std::vector<std::string>& extra_env = {});

// Spawns argv[0] in the background, stdin from /dev/null, stdout and stderr
// appended to `output_file`. Returns the pid or -1.
pid_t SpawnProgram(std::vector<std::string> argv, const std::string& output_file,
                   const std::vector<std::string>& extra_env = {});

// A TCP port on 127.0.0.1 that was free a moment ago (bound, read, released).
int FreeLoopbackPort();
// A listening TCP socket on a free 127.0.0.1 port (backlog 16), for servers
// made by tests; sets *port.
int ListenOnLoopback(int* port);

// Contents of `path`, or "" when it cannot be read.
std::string ReadWholeFile(const std::string& path);

struct DaemonOptions {
  // Directory holding state/, paddockd.sock and paddockd.log. Empty: a fresh
  // temp dir, removed again by the destructor.
  std::string dir;
  std::vector<std::string> args;  // more paddockd flags, for every start
  std::string log_level = "info";
  // Passes --allow-dir-images: most suites use the busybox test rootfs, a
  // host directory, as their image over the unix socket (the development
  // form). Suites about image sources turn it off.
  bool allow_dir_images = true;
  int start_timeout_ms = 15000;
};

class DaemonProcess {
 public:
  explicit DaemonProcess(DaemonOptions options = {});
  // SIGTERM and wait if still running; reaps what a crashed daemon left;
  // removes a temp dir it made.
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // Starts paddockd (with options.args plus `more_args`) and waits until its
  // socket accepts connections. Returns "" on success, else why, with the
  // tail of the daemon's log. Use as: ASSERT_EQ(d.Start(), "");
  std::string Start(const std::vector<std::string>& more_args = {});
  // Sends `sig`, waits, returns the exit status (128+N if killed by N); -1
  // when not running.
  int Stop(int sig = SIGTERM);
  // SIGKILL then Start() on the same state dir.
  std::string Restart(const std::vector<std::string>& more_args = {});

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& dir() const { return dir_; }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& socket_path() const { return socket_; }
  std::string grpc_target() const { return "unix:" + socket_; }
  const std::string& log_path() const { return log_; }
  std::string LogTail(size_t bytes = 8192) const;

  // Runs the built `paddock` CLI against this daemon (PADDOCK_SOCKET set).
  ProgramResult Cli(std::vector<std::string> args, const std::string& input = "") const;

 private:
  DaemonOptions options_;
  bool owns_dir_ = false;
  std::string dir_, state_dir_, socket_, log_;
  pid_t pid_ = 0;
  // The last stop was a crash (a signal other than SIGTERM): the destructor
  // reaps what the daemon left (cgroups, mounts, processes), as the next
  // daemon on the same state dir would, so a suite leaves nothing behind.
  bool crashed_ = false;
};

}  // namespace paddock::testing
