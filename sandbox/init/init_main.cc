// paddock-init: PID 1 of a container sandbox, or the zygote of a function
// sandbox. Started by the daemon with the channel on fd 3; the first frame
// says how to build the sandbox; then it serves exec and file requests.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "sandbox/init/exec_server.h"
#include "sandbox/init/protocol.h"
#include "sandbox/init/setup.h"

using namespace paddock::init;

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::puts(
        "paddock-init: the in-sandbox agent. Started by paddockd inside a new sandbox\n"
        "with its channel on fd 3; not meant to be run by hand.");
    return 0;
  }
  const int channel = 3;
  Frame f;
  if (!ReadFrame(channel, &f) || f.type != FrameType::kSetup) {
    std::fputs("paddock-init: no setup frame on fd 3 (run by paddockd only)\n", stderr);
    return 2;
  }
  SetupConfig config;
  if (!DecodeSetup(f.payload, &config)) {
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EINVAL, "malformed setup frame", ""));
    return 2;
  }
  std::string err;
  bool ok = config.mode == Mode::kFunction ? SetupFunctionZygote(config, &err)
                                           : SetupContainer(config, &err);
  if (!ok) {
    WriteFrame(channel, FrameType::kHello, 0, EncodeReply(EIO, err, ""));
    return 1;
  }
  config.rootfs = "/";
  if (!WriteFrame(channel, FrameType::kHello, 0, EncodeReply(0, "", ""))) return 1;
  return ServeChannel(channel, config);
}
