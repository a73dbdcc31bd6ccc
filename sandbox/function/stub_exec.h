// A function exec run by the daemon itself on a stub the zygote handed over
// (InitClient::TakeStub): the request goes down the stub's request pipe, the
// command's stdin, stdout and stderr are the stub's pipes, and its status pipe
// carries the command's wait status and usage once the command is reaped. No
// zygote hop is on the exec's path; the zygote only makes stubs.
//
// The stub enforces the exec's timeout itself (and reports timed_out). The
// daemon's backstop: a stub that has not reported 2 s past the timeout is
// killed through its pidfd, which takes the exec's whole pid namespace with
// it; so is the stub of a cancelled exec.
#pragma once

#include <functional>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/types.h"

namespace paddock {

// `stub`: the fds of a kStub reply, in init::StubFd order. `meanwhile`, when
// set, runs once the request is on its way (the command starting): the caller
// uses it to take the next stub off the exec's path.
Result<ExecResult> RunOnStub(std::vector<UniqueFd> stub, const ExecRequest& req, const OutputCallback& on_output,
                             const std::function<void()>& meanwhile = {});

// Kills a stub that will not be used (its pid namespace goes with it).
void DiscardStub(std::vector<UniqueFd>& stub);

}  // namespace paddock
