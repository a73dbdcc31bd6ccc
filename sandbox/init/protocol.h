// The private channel between the daemon and paddock-init (PID 1 of a container,
// or the zygote of a function sandbox). A frame is a 12-byte header
// (payload length, type, request id; little-endian u32 each) and a payload
// encoded with WireWriter. Requests carry ids chosen by the daemon; replies and
// output frames echo them, so many calls share one channel.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/types.h"

namespace paddock::init {

// No frame's payload is larger, either way (a writer refuses one, so no
// length is ever truncated to the header's 32 bits; a reader refuses one
// before reading it). The daemon bounds each frame from a peer tighter still:
// by its type and by what the call it answers asked for (InitClient).
inline constexpr uint32_t kMaxFrame = 160u << 20;
// The most one kStdout/kStderr frame carries (paddock-init reads output in
// chunks of this size).
inline constexpr uint32_t kMaxOutputChunk = 64u << 10;

enum class FrameType : uint32_t {
  kSetup = 1,      // daemon → init, first frame: SetupConfig
  kHello = 2,      // init → daemon: setup finished (Reply payload)
  kExec = 3,       // daemon → init: ExecRequest
  kStdout = 4,     // init → daemon: output chunk (streaming execs)
  kStderr = 5,
  kExecDone = 6,   // init → daemon: ExecResult
  kWriteFile = 7,  // daemon → init: path, mode, make_parents, content
  kReadFile = 8,   // daemon → init: path, max_bytes
  kListDir = 9,    // daemon → init: path
  kStat = 10,      // daemon → init: path
  kReply = 11,     // init → daemon: errno (0 = ok), message, payload
  kUsage = 12,     // daemon → init (microVM guest): Reply with memory, cpu, pids
  kCancel = 13,    // daemon → init: kill a running exec (u32 payload: its request id); no reply,
                   // the exec's kExecDone follows
  kTakeStub = 14,  // daemon → function zygote: u32 fd count; the fds (SCM_RIGHTS, sent with the
                   // frame's header) are the sandbox's own cgroup.procs files. The zygote moves
                   // a ready exec stub into them and answers kStub, or kReply with an error.
  kStub = 15,      // function zygote → daemon: u32 fd count (kStubFds), fds with the header: the
                   // stub's control socket and a pidfd. The daemon runs the sandbox's execs on
                   // it directly, one at a time (sandbox/function/stub_exec.h): a kExec frame
                   // down the socket with the exec's stdin, stdout and stderr pipe ends
                   // (SCM_RIGHTS), and the stub's report back once the command is reaped.
  // Egress of a microVM guest (docs/security.md, "Network"): the guest has no
  // network device, so its commands' connections to the proxy travel over this
  // channel. The frame's id is the connection's (chosen by the guest, never
  // reused); see sandbox/network/egress_tunnel.h for the flow control.
  kEgressListen = 16,  // daemon → init: listen on 127.0.0.1:3128 in the sandbox; Reply
  kEgressOpen = 17,    // init → daemon: a connection was accepted (empty payload)
  kEgressData = 18,    // both ways: bytes of a connection, at most kEgressMaxData, within credit
  kEgressCredit = 19,  // both ways: u32, bytes the receiver has consumed (the sender may send more)
  kEgressClose = 20,   // both ways: no more data; the receiver flushes what it has and closes
  // microVM guest → daemon, once, empty: the guest has booted and its sandbox
  // init waits for kSetup. (A template VM gets its setup next and is saved
  // after it; its clones get their own identity through kIdentity once
  // restored.)
  kReady = 21,
  // daemon → a microVM guest's control port (not the sandbox's channel: the
  // guest's PID 1 serves it, with the privileges the sandbox's init gave up):
  // a VM restored from a saved stream (resumed or forked) gets fresh
  // entropy (bytes, at most 4096; mixed in, credited, the CRNG reseeded) and
  // the host's clock (u64 ns since the epoch). Reply: kReply.
  kReseed = 22,
  // daemon → a microVM guest's control port: a clone of a template that was
  // set up before it was saved gets, in one round trip, what kReseed gives
  // (entropy, clock) and its own identity: its sandbox's hostname (str,
  // 1-64 of [A-Za-z0-9._-]) and machine-id (str, 32 hex digits, written to
  // the sandbox's /etc/machine-id). Reply: kReply.
  kIdentity = 23,
};

// The fds of a kStub reply, in order.
enum StubFd : int { kStubControl = 0, kStubPidfd, kStubFds };
// The fds that come with a kExec frame to a stub, in order: the command's
// stdin (read end), stdout and stderr (write ends).
inline constexpr size_t kStubExecFds = 3;

// What a function exec's stub reports on its control socket once its command
// and everything it left are reaped: wait status, user and system cpu time
// (us), maxrss (KiB), timed out.
inline constexpr size_t kStubReportWords = 5;

// Each side of a connection starts with this much credit to send and gets
// more only as the other side consumes what it received: neither side ever
// buffers more than this per connection.
inline constexpr uint32_t kEgressWindow = 256u << 10;
// Where a sandbox's commands find the daemon's egress proxy (127.0.0.1 in the
// sandbox's own network namespace, or a guest's), whatever carries it there.
inline constexpr int kEgressProxyPort = 3128;
inline constexpr uint32_t kEgressMaxData = 64u << 10;
// Connections open at once over one channel: the proxy serves up to its own
// cap (32) and answers the rest 503; beyond this many, the guest stops
// accepting and the daemon refuses an open.
inline constexpr uint32_t kEgressMaxConnections = 64;

enum class Mode : uint32_t { kContainer = 1, kFunction = 2 };

// What paddock-init needs to build the sandbox from inside its namespaces.
struct SetupConfig {
  Mode mode = Mode::kContainer;
  std::string rootfs;        // host path of the prepared root (overlay mount)
  std::string hostname;
  std::string workdir;       // created if missing (container)
  uint64_t tmp_bytes = 0;    // size of /tmp (container) or per-exec scratch (function)
  Limits limits;             // rlimits for function execs
  std::string seccomp_bpf;   // struct sock_filter array; empty: none
  std::vector<std::pair<std::string, std::string>> env;  // base env of every exec
  // Function mode: a network namespace of its own per exec (loopback only).
  // False for a sandbox with egress: its execs share the zygote's namespace,
  // where the daemon's proxy listens (the zygote is that sandbox's alone).
  bool network_per_exec = true;
  // A microVM guest's identity, applied by its sandbox init before anything
  // else (while it still has its capabilities): host randomness mixed into
  // and credited to the guest kernel's pool, then its CRNG reseeded (a clone
  // restored from a template must never reuse the template's entropy); the
  // guest's wall clock; the sandbox's /etc/machine-id (32 hex digits).
  // Ignored outside a guest. Empty/0: left alone.
  std::string entropy;
  std::string machine_id;
  uint64_t realtime_ns = 0;
};

class WireWriter {
 public:
  void U32(uint32_t v);
  void U64(uint64_t v);
  void Str(std::string_view s);
  std::string Take() { return std::move(buf_); }

 private:
  std::string buf_;
};

class WireReader {
 public:
  explicit WireReader(std::string_view buf) : buf_(buf) {}
  bool U32(uint32_t* v);
  bool U64(uint64_t* v);
  bool Str(std::string* s);
  bool done() const { return pos_ == buf_.size(); }

 private:
  std::string_view buf_;
  size_t pos_ = 0;
};

std::string EncodeSetup(const SetupConfig& c);
bool DecodeSetup(std::string_view buf, SetupConfig* c);
std::string EncodeExec(const ExecRequest& r);
bool DecodeExec(std::string_view buf, ExecRequest* r);
std::string EncodeResult(const ExecResult& r);
bool DecodeResult(std::string_view buf, ExecResult* r);
std::string EncodeFileInfo(const FileInfo& f);
bool DecodeFileInfo(WireReader& r, FileInfo* f);
std::string EncodeReply(int32_t err, std::string_view message, std::string_view payload);
bool DecodeReply(std::string_view buf, int32_t* err, std::string* message, std::string* payload);

struct Frame {
  FrameType type;
  uint32_t id;
  std::string payload;
};

// Blocking frame I/O on a stream socket. False on EOF or error.
bool WriteFrame(int fd, FrameType type, uint32_t id, std::string_view payload);
// The same with `fds` passed (SCM_RIGHTS) along with the frame's header.
bool WriteFrameWithFds(int fd, FrameType type, uint32_t id, std::string_view payload,
                       const std::vector<int>& fds);
bool ReadFrame(int fd, Frame* f);

// For a peer that may be hostile (a microVM guest): reads one frame whose
// payload may be at most `limit(type, id)` bytes, checked from the header
// before any payload is read, into a buffer that grows only as bytes arrive
// (a header that claims much and sends little costs nothing). kTooLarge
// leaves the stream unusable (the payload was not read); *claimed holds the
// header's length. fds as ReadFrameWithFds.
enum class FrameRead { kOk, kClosed, kTooLarge };
FrameRead ReadFrameLimited(int fd, Frame* f, std::vector<int>* fds,
                           const std::function<uint64_t(FrameType, uint32_t)>& limit, uint32_t* claimed);

// WriteFrameWithFds that gives up at `deadline` when the peer stops reading
// (false, errno ETIMEDOUT: the frame may be half written, the stream is then
// unusable). `fd` must be a socket. False with errno EMSGSIZE, and nothing
// written, for a payload over kMaxFrame.
bool WriteFrameBy(int fd, FrameType type, uint32_t id, std::string_view payload, const std::vector<int>& fds,
                  std::chrono::steady_clock::time_point deadline);

// Reads one frame of at most `max_payload` bytes by `deadline` (a peer that
// sends part of a frame and stops is given up on): false with errno
// ETIMEDOUT, EMSGSIZE, or on EOF/error.
bool ReadFrameBy(int fd, Frame* f, uint32_t max_payload, std::chrono::steady_clock::time_point deadline);
// The same, also returning (close-on-exec) any fds that came with the frame's
// header; at most kMaxFrameFds, more are closed and the read fails.
bool ReadFrameWithFds(int fd, Frame* f, std::vector<int>* fds);

// recvmsg into buf (flags as recv's, plus MSG_CMSG_CLOEXEC) that appends the
// fds of any SCM_RIGHTS data to *fds and sets *truncated when some were lost
// (MSG_CTRUNC). Returns what recvmsg returns.
ssize_t ReceiveWithFds(int fd, void* buf, size_t size, int flags, std::vector<int>* fds, bool* truncated);

// At most this many fds travel with one frame.
inline constexpr size_t kMaxFrameFds = 8;

}  // namespace paddock::init
