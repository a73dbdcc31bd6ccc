#include "tests/support/test_internet.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
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

bool TestInternet::Partition(bool cut) const {
  // A filter, not the link: with the link down the host would hold the
  // packets in its neighbour queue and send them all when it came back up.
  auto r = RunProgram({"/usr/sbin/ip", "netns", "exec", ns_, "iptables", cut ? "-I" : "-D", "INPUT", "-p", "tcp", "-j",
                       "DROP"});
  return r.code == 0;
}

int TestInternet::Listen(int port) const {
  // A socket belongs to the network namespace it was made in: make it on a
  // thread of its own that joins the namespace (and ends with it).
  int fd = -1;
  std::thread([&] {
    int ns = open(("/run/netns/" + ns_).c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0) return;
    int s = setns(ns, CLONE_NEWNET) == 0 ? socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    if (s >= 0) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      inet_pton(AF_INET, server_ip_.c_str(), &a.sin_addr);
      int one = 1;
      setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && listen(s, 8) == 0) {
        fd = s;
      } else {
        close(s);
      }
    }
    close(ns);
  }).join();
  return fd;
}

}  // namespace paddock::testing
