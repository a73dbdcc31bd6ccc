// A function exec run by the daemon itself on a stub the zygote handed over
// (InitClient::TakeStub), the PID 1 of the sandbox's execs. The request goes
// down the stub's control socket with the command's stdin, stdout and stderr
// pipe ends; the stub answers with the command's wait status and usage once
// the command and all it left are reaped. No zygote hop is on the exec's
// path; the zygote only makes stubs. A stub serves its sandbox's execs one
// after another (between two, it leaves nothing of the first: see
// paddock-init's StubMain).
//
// The stub enforces the exec's timeout itself (and reports timed_out). The
// daemon's backstop: a stub that has not reported 2 s past the timeout is
// killed through its pidfd, which takes the exec's whole pid namespace with
// it; so is the stub of a cancelled exec. A killed stub serves no more execs.
#pragma once

#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/types.h"

namespace paddock {

// `stub`: the fds of a kStub reply, in init::StubFd order. `sandbox_root`:
// the host uid and gid of the sandbox's root, made owner of the exec's stdio
// pipes so that the command can open them again (`/dev/stdin`, `/dev/stdout`
// are /proc/self/fd links, which reopen the pipe under its owner's mode).
// Sets `*reusable` when the stub reported and may serve the sandbox's next
// exec; otherwise it is dead or killed, and the caller discards it.
Result<ExecResult> RunOnStub(std::vector<UniqueFd>& stub, const ExecRequest& req, const OutputCallback& on_output,
                             uint32_t sandbox_root, bool* reusable);

// Kills a stub that will not be used again (its pid namespace goes with it).
void DiscardStub(std::vector<UniqueFd>& stub);

}  // namespace paddock
