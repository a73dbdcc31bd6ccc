#include "sandbox/init/egress_listener.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace paddock::init {

namespace {
constexpr uint32_t kCreditBatch = kEgressWindow / 4;
}  // namespace

EgressListener::~EgressListener() {
  for (auto& [id, c] : conns_) close(c.fd);
  if (listener_ >= 0) close(listener_);
}

int EgressListener::Listen() {
  if (listener_ >= 0) return 0;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return errno;
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(kEgressProxyPort);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(s, 64) != 0) {
    int e = errno;
    close(s);
    return e;
  }
  listener_ = s;
  return 0;
}

void EgressListener::Send(FrameType type, uint32_t id, const std::string& payload) {
  WriteFrame(ch_, type, id, payload);
}

void EgressListener::AddPollFds(std::vector<pollfd>* fds) {
  polled_.clear();
  // At the cap, new connections wait in the backlog.
  polled_listener_ = listener_ >= 0 && conns_.size() < kEgressMaxConnections;
  if (polled_listener_) fds->push_back({listener_, POLLIN, 0});
  for (auto& [id, c] : conns_) {
    short ev = 0;
    if (!c.daemon_closed && c.send_credit > 0) ev |= POLLIN;
    if (!c.out.empty()) ev |= POLLOUT;
    if (!ev) continue;
    fds->push_back({c.fd, ev, 0});
    polled_.emplace_back(id, c.fd);
  }
}

void EgressListener::Accept() {
  while (conns_.size() < kEgressMaxConnections) {
    int c = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) return;  // EAGAIN: none waiting (or a transient error)
    uint32_t id = next_id_++;
    conns_[id].fd = c;
    Send(FrameType::kEgressOpen, id, "");
  }
}

void EgressListener::Drop(uint32_t id, bool tell) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  close(it->second.fd);
  conns_.erase(it);
  if (tell) Send(FrameType::kEgressClose, id, "");
}

void EgressListener::HandlePoll(const pollfd* fds, size_t n) {
  size_t at = 0;
  if (polled_listener_ && n > 0) {
    if (fds[0].revents & POLLIN) Accept();
    at = 1;
  }
  char buf[kEgressMaxData];
  for (size_t i = 0; i < polled_.size() && at + i < n; ++i) {
    const short re = fds[at + i].revents;
    auto it = conns_.find(polled_[i].first);
    // Gone (or replaced) while the channel's frames were handled.
    if (!re || it == conns_.end() || it->second.fd != polled_[i].second) continue;
    Conn& c = it->second;
    if ((re & (POLLIN | POLLHUP | POLLERR)) && !c.daemon_closed && c.send_credit > 0) {
      size_t want = std::min<size_t>(sizeof buf, c.send_credit);
      ssize_t r = recv(c.fd, buf, want, 0);
      if (r > 0) {
        c.send_credit -= static_cast<uint32_t>(r);
        Send(FrameType::kEgressData, it->first, std::string(buf, static_cast<size_t>(r)));
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        Drop(it->first, true);  // the command closed its end
        continue;
      }
    }
    if ((re & (POLLOUT | POLLHUP | POLLERR)) && !c.out.empty()) {
      ssize_t w = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (w > 0) {
        c.out.erase(0, static_cast<size_t>(w));
        c.to_credit += static_cast<uint32_t>(w);
      } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        Drop(it->first, !c.daemon_closed);
        continue;
      }
    }
  }
  for (auto it = conns_.begin(); it != conns_.end();) {
    Conn& c = it->second;
    if (c.daemon_closed && c.out.empty()) {
      close(c.fd);
      it = conns_.erase(it);
      continue;
    }
    if (c.to_credit >= kCreditBatch || (c.to_credit > 0 && c.out.empty())) {
      WireWriter w;
      w.U32(c.to_credit);
      c.to_credit = 0;
      Send(FrameType::kEgressCredit, it->first, w.Take());
    }
    ++it;
  }
}

void EgressListener::OnFrame(const Frame& f) {
  auto it = conns_.find(f.id);
  if (it == conns_.end()) return;  // closed here while the frame was in flight
  Conn& c = it->second;
  switch (f.type) {
    case FrameType::kEgressData:
      // The daemon sends only within the credit we gave.
      if (c.daemon_closed || c.out.size() + c.to_credit + f.payload.size() > kEgressWindow)
        return Drop(f.id, !c.daemon_closed);
      c.out.append(f.payload);
      return;
    case FrameType::kEgressCredit: {
      WireReader r(f.payload);
      uint32_t n = 0;
      if (!r.U32(&n)) return Drop(f.id, true);
      c.send_credit = static_cast<uint32_t>(std::min<uint64_t>(kEgressWindow, uint64_t{c.send_credit} + n));
      return;
    }
    case FrameType::kEgressClose:
      c.daemon_closed = true;
      if (c.out.empty()) Drop(f.id, false);
      return;
    default: return;
  }
}

}  // namespace paddock::init
