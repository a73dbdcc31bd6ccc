// paddock-init's request loop: one thread, poll(2) over the channel, every
// running exec's pipes and a signalfd for SIGCHLD. Also reaps every orphan
// (it is PID 1 of a container) and answers file requests on its own root.
#pragma once

#include "sandbox/init/protocol.h"

namespace paddock::init {

// Serves until the channel closes. Returns the process exit status.
int ServeChannel(int channel_fd, const SetupConfig& config);

}  // namespace paddock::init
