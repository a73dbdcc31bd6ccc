#include "tests/support/docker_registry.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "tests/support/daemon_process.h"

namespace paddock::testing {

int StartDockerRegistry(const std::string& work, const std::string& tag, const std::string& http_yaml, pid_t* pid) {
  // Callers spell line breaks as the two characters \n (the form printf took).
  std::string http;
  for (size_t i = 0; i < http_yaml.size(); ++i) {
    if (http_yaml[i] == '\\' && i + 1 < http_yaml.size() && http_yaml[i + 1] == 'n') {
      http.push_back('\n');
      ++i;
    } else {
      http.push_back(http_yaml[i]);
    }
  }
  const int port = FreeLoopbackPort();
  const std::string cfg = work + "/registry-" + tag + ".yml";
  std::ofstream(cfg) << "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: " << work
                     << "/registry-" << tag << "\nhttp:\n  addr: 127.0.0.1:" << port << "\n"
                     << http;
  const std::string log = work + "/registry-" + tag + ".log";
  *pid = SpawnProgram({"/usr/bin/docker-registry", "serve", cfg}, log);
  for (int i = 0; i < 100; ++i) {
    if (RunProgram({"/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port)}).code == 0) return port;
    usleep(100 * 1000);
  }
  std::fprintf(stderr, "docker-registry did not start: %s\n", ReadWholeFile(log).c_str());
  return 0;
}

void StopDockerRegistry(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
}

}  // namespace paddock::testing
