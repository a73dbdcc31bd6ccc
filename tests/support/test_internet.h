// A stand-in for the internet in egress tests: a network namespace made by
// the test, joined to the host by a veth pair (host side .1, namespace side
// .2 of a /30), serving files over HTTP on ports 8080 and 8081 (busybox
// httpd). Only this namespace and loopback are ever reached. Needs root and
// iproute2.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace paddock::testing {

class TestInternet {
 public:
  // Serves hello.txt ("hello-egress\n") and whatever AddFile puts beside it.
  TestInternet();
  ~TestInternet();
  TestInternet(const TestInternet&) = delete;
  TestInternet& operator=(const TestInternet&) = delete;

  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  const std::string& host_ip() const { return host_ip_; }
  const std::string& server_ip() const { return server_ip_; }
  // Serves `bytes` pseudo-random bytes as /NAME; returns their md5 (hex).
  std::string AddRandomFile(const std::string& name, size_t bytes);
  // TCP connections established to the servers (as the server side sees them).
  int EstablishedConnections() const;
  // A TCP socket listening on server_ip():port inside the namespace, for a
  // test that plays the far end itself; -1 on failure. The caller closes it.
  int Listen(int port) const;
  // Cuts the namespace off (every TCP segment arriving in it dropped,
  // connections left open on both sides: a partition) or joins it again.
  // True on success; needs iptables.
  bool Partition(bool cut) const;

 private:
  std::string ns_, host_if_, ns_if_, host_ip_, server_ip_, www_, why_;
  bool ok_ = false;
  std::vector<pid_t> servers_;
};

}  // namespace paddock::testing
