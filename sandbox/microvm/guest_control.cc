#include "sandbox/microvm/guest_control.h"

#include <cerrno>

#include "sandbox/init/protocol.h"

namespace paddock::microvm {

namespace {

// One request on the control port and its reply, by `deadline`; `what`
// names the request in errors ("reseed", "identity"), `verb` what the guest
// could not do when it answers with an error.
Status ControlCall(int ctl, init::FrameType type, std::string payload, const char* what, const char* verb,
                   std::chrono::steady_clock::time_point deadline) {
  constexpr uint32_t kRequestId = 1;
  if (!init::WriteFrameBy(ctl, type, kRequestId, std::move(payload), {}, deadline)) {
    if (errno == ETIMEDOUT)
      return Error(Code::kDeadlineExceeded, "the guest did not take its {} request in time", what);
    return ErrnoError(std::string("sending the ") + what + " request");
  }
  init::Frame f;
  if (!init::ReadFrameBy(ctl, &f, kMaxControlReply, deadline)) {
    if (errno == ETIMEDOUT) return Error(Code::kDeadlineExceeded, "the guest did not answer its {} in time", what);
    if (errno == EMSGSIZE)
      return Error(Code::kInternal, "the guest's {} reply is over {} bytes", what, kMaxControlReply);
    return Error(Code::kInternal, "the guest's control port closed or failed before its {} reply", what);
  }
  int32_t err = 0;
  std::string msg, body;
  if (f.type != init::FrameType::kReply || f.id != kRequestId || !init::DecodeReply(f.payload, &err, &msg, &body))
    return Error(Code::kInternal, "malformed {} reply from the guest", what);
  if (err != 0) return Error(Code::kInternal, "the guest could not {}: {}", verb, msg.substr(0, 200));
  return Status::Ok();
}

}  // namespace

Status ReseedGuest(int ctl, std::string_view entropy, uint64_t realtime_ns,
                   std::chrono::steady_clock::time_point deadline) {
  init::WireWriter w;
  w.Str(entropy);
  w.U64(realtime_ns);
  return ControlCall(ctl, init::FrameType::kReseed, w.Take(), "reseed", "reseed", deadline);
}

Status ReseedGuestAs(int ctl, std::string_view entropy, uint64_t realtime_ns, std::string_view hostname,
                     std::string_view machine_id, std::chrono::steady_clock::time_point deadline) {
  init::WireWriter w;
  w.Str(entropy);
  w.U64(realtime_ns);
  w.Str(hostname);
  w.Str(machine_id);
  return ControlCall(ctl, init::FrameType::kIdentity, w.Take(), "identity", "reseed and take its hostname and machine-id",
                     deadline);
}

}  // namespace paddock::microvm
