#include "tests/support/test_internet.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tests/support/daemon_process.h"

namespace paddock::testing {

namespace fs = std::filesystem;

TestInternet::TestInternet() {
  const int tag = getpid() % 200 + 20;
  ns_ = "pdk-inet-" + std::to_string(getpid());
  host_if_ = "pdkh" + std::to_string(getpid() % 100000);
  ns_if_ = "pdkn" + std::to_string(getpid() % 100000);
  host_ip_ = "10.231." + std::to_string(tag) + ".1";
  server_ip_ = "10.231." + std::to_string(tag) + ".2";
  www_ = "/tmp/" + ns_ + "-www";
  fs::create_directories(www_);
  std::ofstream(www_ + "/hello.txt") << "hello-egress\n";
  std::string script = "set -e; ip netns add " + ns_ + "; ip link add " + host_if_ + " type veth peer name " + ns_if_ +
                       "; ip link set " + ns_if_ + " netns " + ns_ + "; ip addr add " + host_ip_ + "/30 dev " +
                       host_if_ + "; ip link set " + host_if_ + " up; ip netns exec " + ns_ + " ip addr add " +
                       server_ip_ + "/30 dev " + ns_if_ + "; ip netns exec " + ns_ + " ip link set " + ns_if_ +
                       " up; ip netns exec " + ns_ + " ip link set lo up";
  auto r = RunProgram({"/bin/sh", "-c", script});
  ok_ = r.code == 0;
  why_ = r.out + r.err;
  for (const char* port : {"8080", "8081"})
    servers_.push_back(SpawnProgram(
        {"/usr/sbin/ip", "netns", "exec", ns_, "/bin/busybox", "httpd", "-f", "-p", port, "-h", www_},
        www_ + "/../" + ns_ + "-httpd.log"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
}

TestInternet::~TestInternet() {
  for (pid_t p : servers_)
    if (p > 0) {
      kill(p, SIGKILL);
      waitpid(p, nullptr, 0);
    }
  RunProgram({"/bin/sh", "-c", "ip netns del " + ns_ + " 2>/dev/null; ip link del " + host_if_ + " 2>/dev/null; true"});
  fs::remove_all(www_);
}

std::string TestInternet::AddRandomFile(const std::string& name, size_t bytes) {
  std::mt19937_64 rng(bytes);
  std::string data(bytes, '\0');
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v = rng();
    data.replace(i, 8, reinterpret_cast<const char*>(&v), 8);
  }
  std::ofstream(www_ + "/" + name, std::ios::binary) << data;
  auto sum = RunProgram({"/usr/bin/md5sum", www_ + "/" + name});
  return sum.out.substr(0, 32);
}

int TestInternet::EstablishedConnections() const {
  auto r = RunProgram({"/bin/sh", "-c", "ip netns exec " + ns_ + " ss -Htn state established '( sport = :8080 or sport = :8081 )' | wc -l"});
  return r.code == 0 ? std::stoi(r.out) : -1;
}

}  // namespace paddock::testing
