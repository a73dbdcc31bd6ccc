// The host's side of a microVM guest's control port (`paddock-ctl`, served by
// the guest's PID 1: sandbox/init/guest.cc). The guest may be hostile (its
// kernel may be the sandbox's): a request is one frame written by a deadline,
// its reply one frame of at most kMaxControlReply bytes read by the same
// deadline, and anything but the expected reply fails the call, naming why.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::microvm {

inline constexpr uint32_t kMaxControlReply = 4096;

// Fresh entropy (mixed into and credited to the guest's pool, its CRNG then
// reseeded) and the host's wall clock, for a guest restored from a saved
// stream. DEADLINE_EXCEEDED when the guest does not answer by `deadline`,
// INTERNAL for a reply that is oversized, malformed, for another request or
// an error of the guest's.
Status ReseedGuest(int ctl, std::string_view entropy, uint64_t realtime_ns,
                   std::chrono::steady_clock::time_point deadline);

// ReseedGuest and, in the same round trip, a clone's own hostname (1-64 of
// [A-Za-z0-9._-]) and machine-id (32 hex digits) for the sandbox of a guest
// restored from a template that was set up before it was saved. Errors as
// ReseedGuest's.
Status ReseedGuestAs(int ctl, std::string_view entropy, uint64_t realtime_ns, std::string_view hostname,
                     std::string_view machine_id, std::chrono::steady_clock::time_point deadline);

}  // namespace paddock::microvm
