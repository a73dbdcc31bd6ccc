// paddock-init's spawner mode: a long-lived process, exec'd once by the
// daemon, that clones new sandboxes on request. A clone of it is already
// paddock-init, so a new container costs a clone, not a clone plus an exec
// (an exec costs ~0.6 ms on the machines we measured).
//
// Requests arrive on a SOCK_SEQPACKET socket (fd 3): 8 bytes of clone flags
// plus, as SCM_RIGHTS, the new sandbox's channel. The reply is the child's
// pid (4 bytes, negative errno on failure). The child waits for its setup
// frame on the channel; the daemon writes its id maps and cgroup first.
#pragma once

namespace paddock::init {

// Serves spawn requests until the control socket closes.
int RunSpawner(int control_fd);

// The init life of a sandbox process: read the setup frame on `channel`,
// become root of the user namespace, build the sandbox, say hello, serve.
int RunInit(int channel);

}  // namespace paddock::init
