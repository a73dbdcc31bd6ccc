// paddock-init: PID 1 of a container sandbox, or the zygote of a function
// sandbox. Started by the daemon with the channel on fd 3; the first frame
// says how to build the sandbox; then it serves exec and file requests.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "sandbox/init/exec_server.h"
#include "sandbox/init/guest.h"
#include "sandbox/init/protocol.h"
#include "sandbox/init/setup.h"
#include "sandbox/init/spawner.h"

using namespace paddock::init;

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::puts(
        "paddock-init: the in-sandbox agent. Started by paddockd inside a new sandbox\n"
        "with its channel on fd 3; not meant to be run by hand. With --spawner it is\n"
        "the daemon's sandbox factory (control socket on fd 3). As PID 1 of a microVM\n"
        "(started by the kernel from the microvm substrate's initramfs) it boots the\n"
        "guest and serves the sandbox over a virtio-serial port.");
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--spawner") == 0) return RunSpawner(3);
  if (IsGuestPid1()) RunGuest();  // the kernel started us in a microVM
  return RunInit(3);
}
