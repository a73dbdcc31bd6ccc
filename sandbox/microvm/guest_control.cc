#include "sandbox/microvm/guest_control.h"

#include <cerrno>

#include "sandbox/init/protocol.h"

namespace paddock::microvm {

Status ReseedGuest(int ctl, std::string_view entropy, uint64_t realtime_ns,
                   std::chrono::steady_clock::time_point deadline) {
  constexpr uint32_t kRequestId = 1;
  init::WireWriter w;
  w.Str(entropy);
  w.U64(realtime_ns);
  if (!init::WriteFrameBy(ctl, init::FrameType::kReseed, kRequestId, w.Take(), {}, deadline)) {
    if (errno == ETIMEDOUT) return Error(Code::kDeadlineExceeded, "the guest did not take its reseed request in time");
    return ErrnoError("sending the reseed request");
  }
  init::Frame f;
  if (!init::ReadFrameBy(ctl, &f, kMaxControlReply, deadline)) {
    if (errno == ETIMEDOUT) return Error(Code::kDeadlineExceeded, "the guest did not answer its reseed in time");
    if (errno == EMSGSIZE)
      return Error(Code::kInternal, "the guest's reseed reply is over {} bytes", kMaxControlReply);
    return Error(Code::kInternal, "the guest's control port closed or failed before its reseed reply");
  }
  int32_t err = 0;
  std::string msg, body;
  if (f.type != init::FrameType::kReply || f.id != kRequestId || !init::DecodeReply(f.payload, &err, &msg, &body))
    return Error(Code::kInternal, "malformed reseed reply from the guest");
  if (err != 0) return Error(Code::kInternal, "the guest could not reseed: {}", msg.substr(0, 200));
  return Status::Ok();
}

}  // namespace paddock::microvm
