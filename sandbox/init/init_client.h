// The daemon's end of a paddock-init channel. Many calls share one channel:
// each gets a request id; a reader thread routes replies, output chunks and
// exec results to the waiting caller. When init dies, every waiting and
// later call fails with UNAVAILABLE.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/init/protocol.h"
#include "sandbox/types.h"

namespace paddock {

class EgressProxy;
class EgressTunnel;

struct InitClientOptions {
  // The peer may be hostile (a microVM guest: its kernel, and so its end of
  // the channel, may be the sandbox's): a call it does not answer within its
  // budget breaks the channel (the VM is then stopped by its owner) instead
  // of leaving it open for a later call.
  bool hostile_peer = false;
  // Every call waits for init at most this long: a file call, which init
  // itself gives up on after 20 s; an exec, its own timeout plus exec_grace
  // (init kills the command at its timeout).
  std::chrono::milliseconds file_call_budget{30'000};
  std::chrono::milliseconds exec_grace{30'000};
};

// Every frame from init is bounded before it is read: output chunks by
// kMaxOutputChunk, egress frames by theirs, a reply by what its call asked
// for (an exec's output caps, a read's max_bytes), a frame of a type only the
// daemon sends is refused; the payload buffer grows only as bytes arrive.
// Sending gives up at the call's deadline. A frame over its bound, a
// malformed reply or a send that timed out breaks the channel: every waiting
// and later call fails with UNAVAILABLE and the reason (broken_reason()).
class InitClient {
 public:
  // Sends the setup frame and waits (up to `timeout_ms`) for init's hello.
  static Result<std::unique_ptr<InitClient>> Start(UniqueFd channel, const init::SetupConfig& setup,
                                                   int timeout_ms, InitClientOptions options = {});
  // A microVM guest restored from a saved stream (resumed or forked): its
  // init is past its setup and serving; the channel is taken as it is.
  static std::unique_ptr<InitClient> Attach(UniqueFd channel, InitClientOptions options = {});
  ~InitClient();

  Result<ExecResult> Exec(const ExecRequest& req, const OutputCallback& on_output);
  // Function zygotes only: a ready exec stub, moved into the cgroups whose
  // cgroup.procs files are `cgroup_procs`; its fds in init::StubFd order,
  // the control socket checked to be one and made nonblocking.
  Result<std::vector<UniqueFd>> TakeStub(const std::vector<int>& cgroup_procs);
  Status WriteFile(const std::string& path, std::string_view content, uint32_t mode, bool make_parents);
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes);
  Result<std::vector<FileInfo>> ListDir(const std::string& path);
  Result<FileInfo> Stat(const std::string& path);
  // Usage of the sandbox cgroup inside a microVM guest (kUsage).
  Result<Usage> GuestUsage();
  // A microVM guest's egress: asks its paddock-init to listen on
  // 127.0.0.1:3128 and hands each connection it carries over the channel to
  // `proxy` (which outlives this client). Without it, egress frames from
  // init are dropped.
  Status StartEgress(EgressProxy* proxy);

  bool alive() const;
  // Why the channel was broken by this side (a protocol violation of the
  // peer's, or a peer that stopped reading); empty if it was not.
  std::string broken_reason() const;

  // Every call waits for init at most this long (the daemon-side deadline):
  // a file call, which init itself gives up on after 20 s; an exec, its own
  // timeout plus kExecGrace (init kills the command at its timeout).
  static constexpr std::chrono::milliseconds kFileCallBudget{30'000};
  static constexpr std::chrono::milliseconds kExecGrace{30'000};
  // The most a reply without a body of the user's holds (errno, message, a
  // stat, usage, the hello); an exec result adds its streams, a read its bytes.
  static constexpr uint64_t kSmallReply = 64u << 10;
  static std::chrono::milliseconds ExecBudget(const ExecRequest& req,
                                              std::chrono::milliseconds grace = kExecGrace);
  // Unblocks every waiting call and stops the reader. Idempotent.
  void Close();

 private:
  struct Pending {
    bool done = false;
    init::FrameType type{};
    std::string payload;
    const OutputCallback* on_output = nullptr;
    std::vector<UniqueFd> fds;  // passed with a kStub reply
    uint64_t max_reply = 0;     // the most the reply's payload may hold
  };
  InitClient(UniqueFd channel, InitClientOptions options);
  void ReaderLoop();
  // The most a frame of this type and id may carry; 0 for one init never sends.
  uint64_t FrameLimit(init::FrameType type, uint32_t id);
  // Breaks the channel for `reason` (the first one is kept); every call fails.
  void Break(const std::string& reason);
  Status BrokenStatus() const;
  // `cancelled`, when given, is polled while waiting; once true, init is
  // asked to kill the call's exec (kCancel) and the wait goes on for its end.
  // Gives up after `budget` with DEADLINE_EXCEEDED; a call with an output
  // callback closes the channel then (see Call).
  Result<std::string> Call(init::FrameType type, const std::string& payload,
                           const OutputCallback* on_output, init::FrameType* reply_type,
                           std::chrono::milliseconds budget, uint64_t max_reply,
                           const std::function<bool()>* cancelled = nullptr,
                           const std::vector<int>& fds = {}, std::vector<UniqueFd>* received = nullptr);
  Result<std::string> FileCall(init::FrameType type, const std::string& payload, const std::string& path,
                               uint64_t max_reply = kSmallReply);
  InitClientOptions options_;

  UniqueFd channel_;
  std::mutex write_mu_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint32_t, std::shared_ptr<Pending>> pending_;
  uint32_t next_id_ = 1;
  bool dead_ = false;
  std::string broken_;  // under mu_
  uint64_t dropped_egress_frames_ = 0;
  std::unique_ptr<EgressTunnel> egress_;  // set once, before init listens; under mu_
  std::thread reader_;
};

// A microVM guest's first frame (init::FrameType::kReady: booted, waiting for
// its setup), read by `deadline`; any other frame, or one with a payload, is
// an error.
Status AwaitGuestReady(int channel, std::chrono::steady_clock::time_point deadline);

// Turns an errno from init's file handling into a Status a user can act on.
Status FileErrnoStatus(int err, const std::string& path, const std::string& detail);

}  // namespace paddock
