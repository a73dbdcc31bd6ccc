#include "sandbox/microvm/qmp.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace paddock::microvm {

namespace {

int MillisLeft(QmpClient::Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return left.count() <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left.count(), 1 << 30));
}

// QEMU's description of an error reply ({"error": {"class": ..., "desc": "..."}}).
std::string ErrorDesc(const std::string& line) {
  size_t p = line.find("\"desc\"");
  if (p == std::string::npos) return line;
  p = line.find('"', line.find(':', p) + 1);
  if (p == std::string::npos) return line;
  std::string out;
  for (size_t i = p + 1; i < line.size() && line[i] != '"'; ++i) {
    if (line[i] == '\\' && i + 1 < line.size()) ++i;
    out += line[i];
  }
  return out;
}

bool StartsWithKey(const std::string& line, std::string_view key) {
  size_t p = line.find_first_not_of(" \t{");
  return p != std::string::npos && line.compare(p, key.size(), key) == 0;
}

}  // namespace

Result<QmpClient> QmpClient::Open(UniqueFd socket, Deadline deadline) {
  QmpClient c(std::move(socket));
  PADDOCK_ASSIGN_OR_RETURN(std::string greeting, c.ReadLine(deadline));
  if (!StartsWithKey(greeting, "\"QMP\""))
    return Error(Code::kInternal, "QEMU's monitor did not greet with QMP: {}", greeting.substr(0, 200));
  PADDOCK_ASSIGN_OR_RETURN(std::string ignored, c.Execute(R"({"execute": "qmp_capabilities"})", deadline));
  (void)ignored;
  return c;
}

Result<std::string> QmpClient::ReadLine(Deadline deadline) {
  for (;;) {
    size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      while (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    if (buffer_.size() > kMaxLine)
      return Error(Code::kInternal, "QEMU's monitor sent a line longer than {} bytes", kMaxLine);
    struct pollfd p {socket_.get(), POLLIN, 0};
    int left = MillisLeft(deadline);
    int r = poll(&p, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("waiting for QEMU's monitor");
    if (r == 0) return Error(Code::kDeadlineExceeded, "QEMU's monitor did not answer in time");
    char buf[4096];
    ssize_t n = recv(socket_.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return ErrnoError("reading QEMU's monitor");
    if (n == 0) return Error(Code::kUnavailable, "QEMU closed its monitor (did it exit?)");
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> QmpClient::Execute(std::string_view command_json, Deadline deadline, const std::vector<int>& fds) {
  std::string out(command_json);
  out += '\n';
  size_t sent = 0;
  while (sent < out.size()) {
    struct iovec iov {out.data() + sent, out.size() - sent};
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)] = {};
    if (sent == 0 && !fds.empty()) {
      if (fds.size() > 8) return Error(Code::kInvalidArgument, "at most 8 fds per QMP command");
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = sendmsg(socket_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      struct pollfd p {socket_.get(), POLLOUT, 0};
      if (poll(&p, 1, MillisLeft(deadline)) == 0)
        return Error(Code::kDeadlineExceeded, "QEMU's monitor did not read a command in time");
      continue;
    }
    if (n < 0) return ErrnoError("writing QEMU's monitor");
    sent += static_cast<size_t>(n);
  }
  for (;;) {
    PADDOCK_ASSIGN_OR_RETURN(std::string line, ReadLine(deadline));
    if (StartsWithKey(line, "\"return\"")) return line;
    if (StartsWithKey(line, "\"error\""))
      return Error(Code::kInternal, "QEMU refused {}: {}", command_json.substr(0, 80), ErrorDesc(line));
    // An event ({"timestamp": ..., "event": "STOP", ...}) on the way.
    if (line.find("\"event\"") != std::string::npos) continue;
    return Error(Code::kInternal, "QEMU's monitor sent an unexpected line: {}", line.substr(0, 200));
  }
}

Result<std::string> QmpClient::WaitFor(std::string_view query, const std::vector<std::string>& done,
                                       const std::vector<std::string>& failed, Deadline deadline,
                                       std::chrono::milliseconds interval) {
  for (;;) {
    PADDOCK_ASSIGN_OR_RETURN(std::string reply, Execute(query, deadline));
    std::string compact;  // the patterns are written without QEMU's spaces
    for (char ch : reply)
      if (ch != ' ') compact += ch;
    for (const auto& d : done)
      if (compact.find(d) != std::string::npos) return reply;
    for (const auto& f : failed)
      if (compact.find(f) != std::string::npos) return Error(Code::kInternal, "QEMU: {}", reply.substr(0, 400));
    if (std::chrono::steady_clock::now() + interval > deadline)
      return Error(Code::kDeadlineExceeded, "QEMU did not reach the state in time (last: {})", reply.substr(0, 200));
    std::this_thread::sleep_for(interval);
  }
}

}  // namespace paddock::microvm
