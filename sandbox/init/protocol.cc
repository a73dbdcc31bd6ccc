#include "sandbox/init/protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace paddock::init {

void WireWriter::U32(uint32_t v) { buf_.append(reinterpret_cast<const char*>(&v), 4); }
void WireWriter::U64(uint64_t v) { buf_.append(reinterpret_cast<const char*>(&v), 8); }
void WireWriter::Str(std::string_view s) {
  U32(static_cast<uint32_t>(s.size()));
  buf_.append(s);
}

bool WireReader::U32(uint32_t* v) {
  if (buf_.size() - pos_ < 4) return false;
  std::memcpy(v, buf_.data() + pos_, 4);
  pos_ += 4;
  return true;
}
bool WireReader::U64(uint64_t* v) {
  if (buf_.size() - pos_ < 8) return false;
  std::memcpy(v, buf_.data() + pos_, 8);
  pos_ += 8;
  return true;
}
bool WireReader::Str(std::string* s) {
  uint32_t n;
  if (!U32(&n) || buf_.size() - pos_ < n) return false;
  s->assign(buf_.data() + pos_, n);
  pos_ += n;
  return true;
}

namespace {
void PutStrings(WireWriter& w, const std::vector<std::string>& v) {
  w.U32(static_cast<uint32_t>(v.size()));
  for (const auto& s : v) w.Str(s);
}
bool GetStrings(WireReader& r, std::vector<std::string>* v) {
  uint32_t n;
  if (!r.U32(&n)) return false;
  v->clear();
  for (uint32_t i = 0; i < n; ++i) {
    std::string s;
    if (!r.Str(&s)) return false;
    v->push_back(std::move(s));
  }
  return true;
}
template <typename Map>
void PutMap(WireWriter& w, const Map& m) {
  w.U32(static_cast<uint32_t>(m.size()));
  for (const auto& [k, v] : m) {
    w.Str(k);
    w.Str(v);
  }
}
bool GetPairs(WireReader& r, std::vector<std::pair<std::string, std::string>>* out) {
  uint32_t n;
  if (!r.U32(&n)) return false;
  for (uint32_t i = 0; i < n; ++i) {
    std::string k, v;
    if (!r.Str(&k) || !r.Str(&v)) return false;
    out->emplace_back(std::move(k), std::move(v));
  }
  return true;
}
}  // namespace

std::string EncodeSetup(const SetupConfig& c) {
  WireWriter w;
  w.U32(static_cast<uint32_t>(c.mode));
  w.Str(c.rootfs);
  w.Str(c.hostname);
  w.Str(c.workdir);
  w.U64(c.tmp_bytes);
  w.U32(c.limits.cpu_millicores);
  w.U64(c.limits.memory_bytes);
  w.U32(c.limits.pids);
  w.U64(c.limits.disk_bytes);
  w.Str(c.seccomp_bpf);
  PutMap(w, c.env);
  w.U32(c.network_per_exec ? 1 : 0);
  w.Str(c.entropy);
  w.Str(c.machine_id);
  w.U64(c.realtime_ns);
  return w.Take();
}

bool DecodeSetup(std::string_view buf, SetupConfig* c) {
  WireReader r(buf);
  uint32_t mode = 0;
  bool ok = r.U32(&mode) && r.Str(&c->rootfs) && r.Str(&c->hostname) && r.Str(&c->workdir) &&
            r.U64(&c->tmp_bytes) && r.U32(&c->limits.cpu_millicores) &&
            r.U64(&c->limits.memory_bytes) && r.U32(&c->limits.pids) &&
            r.U64(&c->limits.disk_bytes) && r.Str(&c->seccomp_bpf) && GetPairs(r, &c->env);
  uint32_t per_exec = 1;
  ok = ok && r.U32(&per_exec) && r.Str(&c->entropy) && r.Str(&c->machine_id) && r.U64(&c->realtime_ns);
  c->network_per_exec = per_exec != 0;
  c->mode = static_cast<Mode>(mode);
  return ok && r.done();
}

std::string EncodeExec(const ExecRequest& e) {
  WireWriter w;
  PutStrings(w, e.argv);
  w.Str(e.shell);
  w.Str(e.stdin_data);
  PutMap(w, e.env);
  w.Str(e.cwd);
  w.U32(e.timeout_ms);
  w.U64(e.output_cap);
  w.U32(e.stream ? 1 : 0);
  w.Str(e.trusted_program);
  return w.Take();
}

bool DecodeExec(std::string_view buf, ExecRequest* e) {
  WireReader r(buf);
  std::vector<std::pair<std::string, std::string>> env;
  uint32_t stream = 0;
  bool ok = GetStrings(r, &e->argv) && r.Str(&e->shell) && r.Str(&e->stdin_data) &&
            GetPairs(r, &env) && r.Str(&e->cwd) && r.U32(&e->timeout_ms) &&
            r.U64(&e->output_cap) && r.U32(&stream) && r.Str(&e->trusted_program);
  e->env.clear();
  for (auto& [k, v] : env) e->env[k] = v;
  e->stream = stream != 0;
  return ok && r.done();
}

std::string EncodeResult(const ExecResult& x) {
  WireWriter w;
  w.U32(static_cast<uint32_t>(x.exit_code));
  w.U32(static_cast<uint32_t>(x.signal));
  w.Str(x.stdout_data);
  w.Str(x.stderr_data);
  w.U32((x.stdout_truncated ? 1 : 0) | (x.stderr_truncated ? 2 : 0) | (x.timed_out ? 4 : 0) |
        (x.oom_killed ? 8 : 0));
  w.U64(x.wall_time_us);
  w.U64(x.cpu_time_us);
  w.U64(x.peak_memory_bytes);
  return w.Take();
}

bool DecodeResult(std::string_view buf, ExecResult* x) {
  WireReader r(buf);
  uint32_t code = 0, sig = 0, flags = 0;
  bool ok = r.U32(&code) && r.U32(&sig) && r.Str(&x->stdout_data) && r.Str(&x->stderr_data) &&
            r.U32(&flags) && r.U64(&x->wall_time_us) && r.U64(&x->cpu_time_us) &&
            r.U64(&x->peak_memory_bytes);
  x->exit_code = static_cast<int32_t>(code);
  x->signal = static_cast<int32_t>(sig);
  x->stdout_truncated = flags & 1;
  x->stderr_truncated = flags & 2;
  x->timed_out = flags & 4;
  x->oom_killed = flags & 8;
  return ok && r.done();
}

std::string EncodeFileInfo(const FileInfo& f) {
  WireWriter w;
  w.Str(f.name);
  w.U32(static_cast<uint32_t>(f.type));
  w.U64(f.size);
  w.U32(f.mode);
  w.U64(static_cast<uint64_t>(f.mtime_unix_ms));
  return w.Take();
}

bool DecodeFileInfo(WireReader& r, FileInfo* f) {
  uint32_t type = 0;
  uint64_t mtime = 0;
  bool ok = r.Str(&f->name) && r.U32(&type) && r.U64(&f->size) && r.U32(&f->mode) && r.U64(&mtime);
  f->type = static_cast<FileType>(type);
  f->mtime_unix_ms = static_cast<int64_t>(mtime);
  return ok;
}

std::string EncodeReply(int32_t err, std::string_view message, std::string_view payload) {
  WireWriter w;
  w.U32(static_cast<uint32_t>(err));
  w.Str(message);
  w.Str(payload);
  return w.Take();
}

bool DecodeReply(std::string_view buf, int32_t* err, std::string* message, std::string* payload) {
  WireReader r(buf);
  uint32_t e = 0;
  bool ok = r.U32(&e) && r.Str(message) && r.Str(payload);
  *err = static_cast<int32_t>(e);
  return ok && r.done();
}

namespace {
bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    // A microVM guest's channel is a virtio-serial port, not a socket.
    if (w < 0 && errno == ENOTSOCK) w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
bool ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (r == 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}
}  // namespace

namespace {
// One sendmsg of a frame header with `fds` (1..kMaxFrameFds) attached as
// SCM_RIGHTS: the fds travel with the header's first byte. Returns sendmsg's.
ssize_t SendHeaderWithFds(int fd, uint32_t (&hdr)[3], const std::vector<int>& fds, int flags) {
  struct iovec iov {hdr, sizeof hdr};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFrameFds)] = {};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  return sendmsg(fd, &msg, flags);
}
}  // namespace

bool WriteFrame(int fd, FrameType type, uint32_t id, std::string_view payload) {
  if (payload.size() > kMaxFrame) {
    errno = EMSGSIZE;
    return false;
  }
  uint32_t hdr[3] = {static_cast<uint32_t>(payload.size()), static_cast<uint32_t>(type), id};
  if (payload.size() < 64 * 1024) {
    // One syscall for small frames: header and payload together.
    std::string buf(reinterpret_cast<const char*>(hdr), sizeof hdr);
    buf.append(payload);
    return WriteAll(fd, buf.data(), buf.size());
  }
  return WriteAll(fd, hdr, sizeof hdr) && WriteAll(fd, payload.data(), payload.size());
}

bool WriteFrameWithFds(int fd, FrameType type, uint32_t id, std::string_view payload,
                       const std::vector<int>& fds) {
  if (fds.empty()) return WriteFrame(fd, type, id, payload);
  if (fds.size() > kMaxFrameFds) return false;
  if (payload.size() > kMaxFrame) {
    errno = EMSGSIZE;
    return false;
  }
  uint32_t hdr[3] = {static_cast<uint32_t>(payload.size()), static_cast<uint32_t>(type), id};
  ssize_t w;
  do w = SendHeaderWithFds(fd, hdr, fds, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w <= 0) return false;
  // The fds went with the first byte; the rest is an ordinary write.
  const char* rest = reinterpret_cast<const char*>(hdr) + w;
  if (static_cast<size_t>(w) < sizeof hdr && !WriteAll(fd, rest, sizeof hdr - static_cast<size_t>(w))) return false;
  return payload.empty() || WriteAll(fd, payload.data(), payload.size());
}

ssize_t ReceiveWithFds(int fd, void* buf, size_t size, int flags, std::vector<int>* fds, bool* truncated) {
  struct iovec iov {buf, size};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFrameFds)];
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t r = recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC);
  if (r < 0) return r;
  if (msg.msg_flags & MSG_CTRUNC) *truncated = true;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int passed;
      std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
      fds->push_back(passed);
    }
  }
  return r;
}

bool ReadFrameWithFds(int fd, Frame* f, std::vector<int>* fds) {
  // ReadFrameLimited with no bound but the protocol's own.
  uint32_t claimed = 0;
  return ReadFrameLimited(fd, f, fds, [](FrameType, uint32_t) -> uint64_t { return kMaxFrame; }, &claimed) ==
         FrameRead::kOk;
}

bool ReadFrame(int fd, Frame* f) {
  uint32_t hdr[3];
  if (!ReadAll(fd, hdr, sizeof hdr)) return false;
  if (hdr[0] > kMaxFrame) return false;
  f->type = static_cast<FrameType>(hdr[1]);
  f->id = hdr[2];
  f->payload.resize(hdr[0]);
  return hdr[0] == 0 || ReadAll(fd, f->payload.data(), hdr[0]);
}

}  // namespace paddock::init

namespace paddock::init {

namespace {

int MsLeft(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
  if (left <= 0) return 0;
  return left > 60'000 ? 60'000 : static_cast<int>(left);
}

// Waits for `events` on fd until the deadline: false (errno ETIMEDOUT) when it passes.
bool WaitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    int left = MsLeft(deadline);
    if (left == 0) {
      errno = ETIMEDOUT;
      return false;
    }
    struct pollfd p {fd, events, 0};
    int n = poll(&p, 1, left);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

bool SendAllBy(int fd, const char* p, size_t n, std::chrono::steady_clock::time_point deadline) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN && WaitFor(fd, POLLOUT, deadline)) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Appends n bytes read from fd to *out, growing it as they come.
bool ReadGrowing(int fd, size_t n, std::string* out) {
  constexpr size_t kStep = 1 << 20;
  out->clear();
  while (out->size() < n) {
    size_t want = std::min(kStep, n - out->size());
    size_t old = out->size();
    out->resize(old + want);
    if (!ReadAll(fd, out->data() + old, want)) return false;
  }
  return true;
}

}  // namespace

FrameRead ReadFrameLimited(int fd, Frame* f, std::vector<int>* fds,
                           const std::function<uint64_t(FrameType, uint32_t)>& limit, uint32_t* claimed) {
  uint32_t hdr[3];
  char* p = reinterpret_cast<char*>(hdr);
  size_t got = 0;
  bool truncated = false;
  while (got < sizeof hdr) {
    ssize_t r = ReceiveWithFds(fd, p + got, sizeof hdr - got, 0, fds, &truncated);
    if (r < 0 && errno == ENOTSOCK) r = read(fd, p + got, sizeof hdr - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  auto fail = [fds](FrameRead why) {
    for (int passed : *fds) close(passed);
    fds->clear();
    return why;
  };
  if (got < sizeof hdr || truncated || fds->size() > kMaxFrameFds) return fail(FrameRead::kClosed);
  *claimed = hdr[0];
  f->type = static_cast<FrameType>(hdr[1]);
  f->id = hdr[2];
  uint64_t max = limit(f->type, f->id);
  if (hdr[0] > kMaxFrame || hdr[0] > max) return fail(FrameRead::kTooLarge);
  if (!ReadGrowing(fd, hdr[0], &f->payload)) return fail(FrameRead::kClosed);
  return FrameRead::kOk;
}

bool WriteFrameBy(int fd, FrameType type, uint32_t id, std::string_view payload, const std::vector<int>& fds,
                  std::chrono::steady_clock::time_point deadline) {
  if (payload.size() > kMaxFrame) {
    errno = EMSGSIZE;
    return false;
  }
  if (fds.size() > kMaxFrameFds) {
    errno = EINVAL;
    return false;
  }
  uint32_t hdr[3] = {static_cast<uint32_t>(payload.size()), static_cast<uint32_t>(type), id};
  size_t sent = 0;
  if (!fds.empty()) {
    // The fds go with the header's first byte.
    for (;;) {
      ssize_t w = SendHeaderWithFds(fd, hdr, fds, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        sent = static_cast<size_t>(w);
        break;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EAGAIN && WaitFor(fd, POLLOUT, deadline)) continue;
      return false;
    }
  }
  if (payload.size() < 64 * 1024 && sent == 0) {
    std::string buf(reinterpret_cast<const char*>(hdr), sizeof hdr);
    buf.append(payload);
    return SendAllBy(fd, buf.data(), buf.size(), deadline);
  }
  return SendAllBy(fd, reinterpret_cast<const char*>(hdr) + sent, sizeof hdr - sent, deadline) &&
         SendAllBy(fd, payload.data(), payload.size(), deadline);
}

bool ReadFrameBy(int fd, Frame* f, uint32_t max_payload, std::chrono::steady_clock::time_point deadline) {
  auto read_by = [&](char* p, size_t n) {
    while (n > 0) {
      if (!WaitFor(fd, POLLIN, deadline)) return false;
      ssize_t r = ::read(fd, p, n);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  };
  uint32_t hdr[3];
  if (!read_by(reinterpret_cast<char*>(hdr), sizeof hdr)) return false;
  if (hdr[0] > max_payload || hdr[0] > kMaxFrame) {
    errno = EMSGSIZE;
    return false;
  }
  f->type = static_cast<FrameType>(hdr[1]);
  f->id = hdr[2];
  f->payload.assign(hdr[0], '\0');
  return read_by(f->payload.data(), hdr[0]);
}

}  // namespace paddock::init
