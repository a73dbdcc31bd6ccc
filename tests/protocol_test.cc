// Round trips of the daemon <-> paddock-init wire format, and rejection of
// truncated frames (a malformed frame must never decode into a request).
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include <gtest/gtest.h>

#include "sandbox/init/protocol.h"
#include "sandbox/manager.h"

namespace paddock::init {
namespace {

TEST(Protocol, ExecRequestRoundTripsBinaryData) {
  ExecRequest r;
  r.argv = {"sh", "-c", std::string("a\0b", 3)};
  r.stdin_data = std::string(100000, '\xff');
  r.env = {{"A", "1"}, {"B", ""}};
  r.cwd = "/work";
  r.timeout_ms = 1234;
  r.output_cap = 99;
  r.stream = true;
  ExecRequest back;
  ASSERT_TRUE(DecodeExec(EncodeExec(r), &back));
  EXPECT_EQ(back.argv, r.argv);
  EXPECT_EQ(back.stdin_data, r.stdin_data);
  EXPECT_EQ(back.env, r.env);
  EXPECT_EQ(back.cwd, "/work");
  EXPECT_EQ(back.timeout_ms, 1234u);
  EXPECT_EQ(back.output_cap, 99u);
  EXPECT_TRUE(back.stream);
}

TEST(Protocol, TruncatedPayloadIsRejected) {
  ExecRequest r;
  r.argv = {"true"};
  std::string enc = EncodeExec(r);
  for (size_t n = 0; n < enc.size(); ++n) {
    ExecRequest back;
    EXPECT_FALSE(DecodeExec(enc.substr(0, n), &back)) << "prefix of " << n << " bytes decoded";
  }
}

TEST(Protocol, ResultRoundTripsFlags) {
  ExecResult x;
  x.exit_code = -1;
  x.signal = 9;
  x.stdout_data = "out";
  x.stderr_truncated = true;
  x.timed_out = true;
  x.wall_time_us = 5;
  ExecResult back;
  ASSERT_TRUE(DecodeResult(EncodeResult(x), &back));
  EXPECT_EQ(back.exit_code, -1);
  EXPECT_EQ(back.signal, 9);
  EXPECT_EQ(back.stdout_data, "out");
  EXPECT_FALSE(back.stdout_truncated);
  EXPECT_TRUE(back.stderr_truncated);
  EXPECT_TRUE(back.timed_out);
  EXPECT_FALSE(back.oom_killed);
}

TEST(Protocol, FramesCrossASocket) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  std::string big(300000, 'x');
  ASSERT_TRUE(WriteFrame(sv[0], FrameType::kStdout, 7, "hi"));
  std::thread writer([&] { WriteFrame(sv[0], FrameType::kExecDone, 8, big); });
  Frame f;
  ASSERT_TRUE(ReadFrame(sv[1], &f));
  EXPECT_EQ(f.type, FrameType::kStdout);
  EXPECT_EQ(f.id, 7u);
  EXPECT_EQ(f.payload, "hi");
  ASSERT_TRUE(ReadFrame(sv[1], &f));
  writer.join();
  EXPECT_EQ(f.id, 8u);
  EXPECT_EQ(f.payload, big);
  close(sv[0]);
  EXPECT_FALSE(ReadFrame(sv[1], &f));  // EOF
  close(sv[1]);
}

TEST(SandboxPath, ParentReferencesAreRefused) {
  EXPECT_FALSE(ValidateSandboxPath("../etc/passwd").ok());
  EXPECT_FALSE(ValidateSandboxPath("/work/../../etc").ok());
  EXPECT_FALSE(ValidateSandboxPath("/work/..").ok());
  EXPECT_FALSE(ValidateSandboxPath("").ok());
  EXPECT_FALSE(ValidateSandboxPath(std::string("/a\0b", 4)).ok());
  EXPECT_TRUE(ValidateSandboxPath("/work/a..b/c").ok());
  EXPECT_TRUE(ValidateSandboxPath("rel/file.txt").ok());
  EXPECT_EQ(ValidateSandboxPath("/x/../y").code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace paddock::init
