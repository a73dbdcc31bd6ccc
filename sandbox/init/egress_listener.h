// paddock-init's end of a microVM guest's egress. The guest has no network
// device: when the daemon asks (kEgressListen), paddock-init listens on
// 127.0.0.1:3128 in the sandbox's network namespace (where its commands run,
// HTTP_PROXY pointing there) and carries each connection it accepts over
// the init channel to the daemon's proxy (sandbox/network/egress_tunnel.h
// for the daemon's end and the flow control). Part of paddock-init's poll
// loop: every socket is non-blocking, and each connection holds at most a
// window of the daemon's bytes, so a command that stops reading stalls only
// its own connection.
#pragma once

#include <poll.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sandbox/init/protocol.h"

namespace paddock::init {

class EgressListener {
 public:
  explicit EgressListener(int channel) : ch_(channel) {}
  ~EgressListener();
  EgressListener(const EgressListener&) = delete;
  EgressListener& operator=(const EgressListener&) = delete;

  // Starts listening; 0 or the errno of the failed step.
  int Listen();
  // Appends what to poll; HandlePoll takes back the same slice after poll.
  void AddPollFds(std::vector<pollfd>* fds);
  void HandlePoll(const pollfd* fds, size_t n);
  // kEgressData, kEgressCredit or kEgressClose from the daemon.
  void OnFrame(const Frame& f);

 private:
  struct Conn {
    int fd = -1;
    uint32_t send_credit = kEgressWindow;  // bytes the daemon still accepts from us
    std::string out;                       // from the daemon, not yet written to fd
    uint32_t to_credit = 0;                // written to fd, not yet granted back
    bool daemon_closed = false;            // flush `out`, then close
  };
  void Accept();
  // Closes a connection; tells the daemon unless it closed it.
  void Drop(uint32_t id, bool tell);
  void Send(FrameType type, uint32_t id, const std::string& payload);

  const int ch_;
  int listener_ = -1;
  uint32_t next_id_ = 1;  // never reused: a close in flight names only its own connection
  std::map<uint32_t, Conn> conns_;
  // What the last AddPollFds put after the listener's entry (if any).
  bool polled_listener_ = false;
  std::vector<std::pair<uint32_t, int>> polled_;
};

}  // namespace paddock::init
