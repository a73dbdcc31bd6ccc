#include "sandbox/network/egress_tunnel.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "sandbox/network/egress_proxy.h"

namespace paddock {

using init::FrameType;

namespace {

// Each socketpair end's buffers: with the window, all one connection can
// hold in the daemon.
constexpr int kPairBuffer = 64 << 10;
// Control frames waiting for the channel. Only a guest that floods bad opens
// while not reading its channel could fill this; it loses the excess.
constexpr size_t kMaxNotices = 4 * init::kEgressMaxConnections;
// Credit goes back in batches of this much, or once all received is written.
constexpr uint32_t kCreditBatch = init::kEgressWindow / 4;

std::string U32(uint32_t v) {
  init::WireWriter w;
  w.U32(v);
  return w.Take();
}

}  // namespace

EgressTunnel::EgressTunnel(EgressProxy* proxy, SendFrame send)
    : proxy_(proxy), send_(std::move(send)), wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!wake_.valid()) {
    spdlog::error("egress tunnel: eventfd: {}; the guest's connections are refused", std::strerror(errno));
    stopping_ = true;
    return;
  }
  thread_ = std::thread([this] { Loop(); });
}

EgressTunnel::~EgressTunnel() { Stop(); }

void EgressTunnel::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  conns_.clear();  // closes our ends: the proxy sees each connection end
  notices_.clear();
}

size_t EgressTunnel::open_connections() const {
  std::lock_guard lock(mu_);
  return conns_.size();
}

void EgressTunnel::Wake() {
  uint64_t one = 1;
  if (wake_.valid() && write(wake_.get(), &one, sizeof one) < 0) {
  }
}

void EgressTunnel::Notify(FrameType type, uint32_t id, std::string payload) {
  if (notices_.size() < kMaxNotices) notices_.push_back({type, id, std::move(payload)});
}

void EgressTunnel::CloseLocked(uint32_t id) {
  conns_.erase(id);
  Notify(FrameType::kEgressClose, id, "");
}

void EgressTunnel::OnFrame(init::Frame&& f) {
  std::lock_guard lock(mu_);
  if (stopping_) return;
  auto it = conns_.find(f.id);
  switch (f.type) {
    case FrameType::kEgressOpen: {
      if (it != conns_.end()) {
        // A second open of a live id: the guest broke the protocol; that
        // connection ends (and the new one is not made).
        CloseLocked(f.id);
        break;
      }
      if (conns_.size() >= init::kEgressMaxConnections) {
        Notify(FrameType::kEgressClose, f.id, "");
        break;
      }
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        Notify(FrameType::kEgressClose, f.id, "");
        break;
      }
      for (int fd : sv) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kPairBuffer, sizeof kPairBuffer);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kPairBuffer, sizeof kPairBuffer);
      }
      fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
      conns_[f.id].fd.reset(sv[0]);
      // Served like an accepted connection (or answered 503 beyond the cap).
      proxy_->ServeConnected(UniqueFd(sv[1]));
      break;
    }
    case FrameType::kEgressData: {
      if (it == conns_.end()) break;  // crossed our close in flight
      Conn& c = it->second;
      if (f.payload.size() > init::kEgressMaxData || f.payload.size() > c.recv_room || c.guest_closed) {
        CloseLocked(f.id);  // beyond its credit, oversized, or after its own close
        break;
      }
      c.recv_room -= static_cast<uint32_t>(f.payload.size());
      if (c.write_dead) c.to_credit += static_cast<uint32_t>(f.payload.size());  // nobody reads it any more
      else c.in.append(f.payload);
      break;
    }
    case FrameType::kEgressCredit: {
      if (it == conns_.end()) break;
      Conn& c = it->second;
      init::WireReader r(f.payload);
      uint32_t n = 0;
      // The guest can only give back what we sent it.
      if (!r.U32(&n) || !r.done() || n > init::kEgressWindow - c.send_credit) {
        CloseLocked(f.id);
        break;
      }
      c.send_credit += n;
      break;
    }
    case FrameType::kEgressClose:
      if (it != conns_.end()) it->second.guest_closed = true;
      break;
    default: return;
  }
  Wake();
}

void EgressTunnel::Loop() {
  std::vector<pollfd> fds;
  std::vector<uint32_t> ids;
  std::vector<Out> out;
  std::string buf(init::kEgressMaxData, '\0');
  for (;;) {
    fds.assign(1, pollfd{wake_.get(), POLLIN, 0});
    ids.clear();
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      for (auto& [id, c] : conns_) {
        short ev = 0;
        if (!c.guest_closed && c.send_credit > 0) ev |= POLLIN;
        if (!c.in.empty()) ev |= POLLOUT;
        if (!ev) continue;  // waiting on the guest (a closed end would wake us for nothing)
        fds.push_back(pollfd{c.fd.get(), ev, 0});
        ids.push_back(id);
      }
    }
    if (poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) {
      spdlog::error("egress tunnel: poll: {}", std::strerror(errno));
      return;
    }
    uint64_t drained;
    while (read(wake_.get(), &drained, sizeof drained) > 0) {
    }
    out.clear();
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      out.swap(notices_);
      for (size_t i = 0; i < ids.size(); ++i) {
        const short re = fds[i + 1].revents;
        auto it = conns_.find(ids[i]);
        if (!re || it == conns_.end() || it->second.fd.get() != fds[i + 1].fd) continue;
        Conn& c = it->second;
        // Reads first: what the proxy wrote before it closed still reaches the guest.
        if ((re & (POLLIN | POLLHUP | POLLERR)) && !c.guest_closed && c.send_credit > 0) {
          size_t want = std::min<size_t>(init::kEgressMaxData, c.send_credit);
          ssize_t r = recv(c.fd.get(), buf.data(), want, MSG_DONTWAIT);
          if (r > 0) {
            out.push_back({FrameType::kEgressData, ids[i], buf.substr(0, static_cast<size_t>(r))});
            c.send_credit -= static_cast<uint32_t>(r);
          } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            // The proxy is done: the guest gets everything before the close.
            out.push_back({FrameType::kEgressClose, ids[i], ""});
            conns_.erase(it);
            continue;
          }
        }
        if ((re & (POLLOUT | POLLHUP | POLLERR)) && !c.in.empty()) {
          ssize_t w = send(c.fd.get(), c.in.data(), c.in.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
          if (w > 0) {
            c.in.erase(0, static_cast<size_t>(w));
            c.to_credit += static_cast<uint32_t>(w);
          } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            // The proxy stopped reading (a refusal, or the upstream ended):
            // the guest's further bytes are dropped; the read side still drains.
            c.to_credit += static_cast<uint32_t>(c.in.size());
            c.in.clear();
            c.write_dead = true;
          }
        }
      }
      for (auto it = conns_.begin(); it != conns_.end();) {
        Conn& c = it->second;
        if (c.to_credit >= kCreditBatch || (c.to_credit > 0 && c.in.empty() && !c.guest_closed)) {
          out.push_back({FrameType::kEgressCredit, it->first, U32(c.to_credit)});
          c.recv_room += c.to_credit;
          c.to_credit = 0;
        }
        if (c.guest_closed && c.in.empty()) {
          it = conns_.erase(it);  // flushed: the proxy sees the end
          continue;
        }
        ++it;
      }
    }
    for (const Out& o : out) {
      if (send_(o.type, o.id, o.payload)) continue;
      std::lock_guard lock(mu_);  // the channel is gone: so is every connection
      stopping_ = true;
      return;
    }
  }
}

}  // namespace paddock
