#include "sandbox/microvm/console_log.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "sandbox/linux/fs_util.h"

namespace paddock::microvm {

Result<std::unique_ptr<ConsoleLog>> ConsoleLog::Start(const std::string& path, uint64_t cap, UniqueFd* writer) {
  auto log = std::unique_ptr<ConsoleLog>(new ConsoleLog(path, std::max<uint64_t>(cap, 4096)));
  log->file_ = UniqueFd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!log->file_.valid()) return ErrnoError("creating " + path);
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return ErrnoError("pipe for the console");
  log->pipe_ = UniqueFd(p[0]);
  *writer = UniqueFd(p[1]);
  log->stop_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!log->stop_.valid()) return ErrnoError("eventfd");
  fcntl(log->pipe_.get(), F_SETFL, O_NONBLOCK);
  log->thread_ = std::thread([l = log.get()] { l->Drain(); });
  return log;
}

ConsoleLog::~ConsoleLog() { Stop(); }

void ConsoleLog::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  if (write(stop_.get(), &one, sizeof one) < 0) {
  }
  thread_.join();
}

void ConsoleLog::Drain() {
  std::vector<char> buf(64 << 10);
  bool stopping = false;
  for (;;) {
    ssize_t n = read(pipe_.get(), buf.data(), buf.size());
    if (n > 0) {
      Append(buf.data(), static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return;  // every writer (QEMU) is gone
    if (errno == EINTR) continue;
    if (errno != EAGAIN || stopping) return;
    struct pollfd p[2] = {{pipe_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0 && errno != EINTR) return;
    // Asked to stop: one more pass over what is already in the pipe.
    if (p[1].revents & POLLIN) stopping = true;
  }
}

void ConsoleLog::Append(const char* data, size_t n) {
  // A single write larger than the cap keeps only its own tail.
  if (n > cap_ / 2) {
    dropped_ += n - cap_ / 2;
    data += n - cap_ / 2;
    n = cap_ / 2;
  }
  if (size_ + n > cap_) {
    // Keep the newest half of the file: read it back, start the file over.
    uint64_t keep = std::min<uint64_t>(size_, cap_ / 2 - std::min<uint64_t>(n, cap_ / 2));
    std::string tail(keep, '\0');
    ssize_t got = pread(file_.get(), tail.data(), keep, static_cast<off_t>(size_ - keep));
    tail.resize(got > 0 ? static_cast<size_t>(got) : 0);
    dropped_ += size_ - tail.size();
    std::string head = fmt::format("[paddock: {} bytes of earlier console output dropped (log capped at {} bytes)]\n",
                                   dropped_.load(), cap_);
    if (ftruncate(file_.get(), 0) != 0) return;
    size_ = 0;
    for (std::string_view part : {std::string_view(head), std::string_view(tail)}) {
      if (pwrite(file_.get(), part.data(), part.size(), static_cast<off_t>(size_)) == static_cast<ssize_t>(part.size()))
        size_ += part.size();
    }
  }
  ssize_t w = pwrite(file_.get(), data, n, static_cast<off_t>(size_));
  if (w > 0) size_ += static_cast<uint64_t>(w);
}

std::string ConsoleLog::Text() const {
  auto r = ReadSmallFile(path_);
  if (!r.ok()) return "";
  std::string s = std::move(r).value();
  if (s.size() > cap_) s.erase(0, s.size() - cap_);
  return s;
}

}  // namespace paddock::microvm
