// The daemon's end of a microVM guest's egress. The guest has no network
// device: paddock-init listens on 127.0.0.1:3128 inside it and carries each
// accepted connection over the init channel (kEgressOpen / kEgressData /
// kEgressCredit / kEgressClose, sandbox/init/protocol.h). Here each one
// becomes one end of a socketpair whose other end the sandbox's EgressProxy
// serves as if it had accepted it, under the same rules and caps.
//
// The guest is hostile, so everything is bounded:
//   * credit: each direction of a connection may have at most kEgressWindow
//     bytes in flight; the daemon sends only what the guest granted and grants
//     only what it has written on, so a connection holds at most a window
//     here (plus its socketpair buffers);
//   * a data frame over kEgressMaxData, data beyond the credit granted, or a
//     second open of a live id closes that connection (the daemon tells the
//     guest); frames for unknown or closed ids are dropped (they cross a
//     close in flight);
//   * at most kEgressMaxConnections at once; an open beyond is refused;
//   * the channel's reader thread (InitClient's) only queues and wakes: the
//     tunnel's own thread does every write, on non-blocking sockets.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sandbox/base/unique_fd.h"
#include "sandbox/init/protocol.h"

namespace paddock {

class EgressProxy;

class EgressTunnel {
 public:
  // Writes one frame on the channel (blocking; false once the channel is gone).
  using SendFrame = std::function<bool(init::FrameType, uint32_t id, std::string_view payload)>;

  // `proxy` outlives the tunnel.
  EgressTunnel(EgressProxy* proxy, SendFrame send);
  // Closes every connection.
  ~EgressTunnel();
  EgressTunnel(const EgressTunnel&) = delete;
  EgressTunnel& operator=(const EgressTunnel&) = delete;

  // A frame of the egress types from the guest (the channel's reader thread).
  // Never blocks on a connection or on the channel.
  void OnFrame(init::Frame&& f);
  // Stops the thread and closes every connection. Idempotent.
  void Stop();

  size_t open_connections() const;

 private:
  struct Conn {
    UniqueFd fd;                             // ours; the proxy serves the other end
    uint32_t send_credit = init::kEgressWindow;  // bytes the guest still accepts from us
    uint32_t recv_room = init::kEgressWindow;    // bytes the guest may still send us
    std::string in;                          // from the guest, not yet written to fd
    uint32_t to_credit = 0;                  // written to fd, not yet granted back
    bool guest_closed = false;               // flush `in`, then close
    bool write_dead = false;                 // the proxy's end stopped reading
  };
  struct Out {
    init::FrameType type;
    uint32_t id;
    std::string payload;
  };
  void Loop();
  void Wake();
  // Drops a connection and tells the guest. With mu_ held.
  void CloseLocked(uint32_t id);
  void Notify(init::FrameType type, uint32_t id, std::string payload);

  EgressProxy* const proxy_;
  const SendFrame send_;
  UniqueFd wake_;  // eventfd: the reader queued something
  mutable std::mutex mu_;
  std::map<uint32_t, Conn> conns_;
  std::vector<Out> notices_;  // control frames the reader decided on, sent by Loop
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace paddock
