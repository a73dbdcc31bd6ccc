// Round trips of the daemon <-> paddock-init wire format, and rejection of
// truncated frames (a malformed frame must never decode into a request).
// The daemon's end of a microVM guest's egress against a hostile guest: the
// test plays paddock-init on a real channel to a real InitClient, tunnel and
// proxy, and breaks the egress protocol every way it can.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/init/init_client.h"
#include "sandbox/init/protocol.h"
#include "sandbox/manager.h"
#include "sandbox/network/egress_proxy.h"
#include "sandbox/network/egress_tunnel.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_internet.h"

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

// The guest's end of a channel to a real InitClient: the test speaks for
// paddock-init, hostile or not.
class HostileGuest {
 public:
  // Starts the client (answering its setup) and, with `egress`, its egress
  // (answering the listen request).
  explicit HostileGuest(bool egress, InitClientOptions options = {}) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    fd_ = sv[1];
    std::thread init([&] {
      Frame setup;
      if (ReadFrame(fd_, &setup)) WriteFrame(fd_, FrameType::kHello, 0, EncodeReply(0, "", ""));
    });
    auto c = InitClient::Start(UniqueFd(sv[0]), SetupConfig{}, 5000, options);
    init.join();
    EXPECT_TRUE(c.ok()) << c.status().message();
    client_ = std::move(c).value();
    if (!egress) return;
    auto rules = ParseEgressRules({"127.0.0.1"});
    proxy_ = EgressProxy::WithoutListener(std::move(rules).value());
    auto started = std::async(std::launch::async, [&] { return client_->StartEgress(proxy_.get()); });
    Frame listen;
    EXPECT_TRUE(Next(&listen, 5000));
    EXPECT_EQ(listen.type, FrameType::kEgressListen);
    WriteFrame(fd_, FrameType::kReply, listen.id, EncodeReply(0, "", ""));
    Status st = started.get();
    EXPECT_TRUE(st.ok()) << st.message();
  }
  ~HostileGuest() {
    client_.reset();  // the tunnel first: the proxy outlives it
    proxy_.reset();
    close(fd_);
  }

  void Send(FrameType type, uint32_t id, std::string_view payload = "") { WriteFrame(fd_, type, id, payload); }
  bool Next(Frame* f, int ms) {
    pollfd p{fd_, POLLIN, 0};
    return poll(&p, 1, ms) == 1 && ReadFrame(fd_, f);
  }
  // Frames for `id` until its close (true) or `ms` of silence (false).
  bool UntilClosed(uint32_t id, std::string* data, int ms = 5000) {
    Frame f;
    while (Next(&f, ms)) {
      if (f.id != id) continue;
      if (f.type == FrameType::kEgressData) data->append(f.payload);
      if (f.type == FrameType::kEgressClose) return true;
    }
    return false;
  }
  // Whether the channel still serves calls: a stat, answered here.
  bool StillServes() {
    auto stat = std::async(std::launch::async, [&] { return client_->Stat("/x"); });
    Frame f;
    while (Next(&f, 5000) && f.type != FrameType::kStat) {
    }
    if (f.type != FrameType::kStat) return false;
    Send(FrameType::kReply, f.id, EncodeReply(ENOENT, "", ""));
    return stat.get().status().code() == Code::kNotFound;
  }

  int fd_ = -1;
  std::unique_ptr<InitClient> client_;
  std::unique_ptr<EgressProxy> proxy_;
};

std::string U32(uint32_t v) {
  WireWriter w;
  w.U32(v);
  return w.Take();
}

TEST(EgressTunnel, ACarriedConnectionReachesTheProxyAndItsAnswerComesBack) {
  HostileGuest g(/*egress=*/true);
  g.Send(FrameType::kEgressOpen, 1);
  // Listed, and refused all the same: loopback is never reached.
  g.Send(FrameType::kEgressData, 1, "CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n");
  std::string answer;
  ASSERT_TRUE(g.UntilClosed(1, &answer));
  EXPECT_THAT(answer, ::testing::HasSubstr("403 Forbidden"));
  EXPECT_THAT(answer, ::testing::HasSubstr("loopback"));
}

TEST(EgressTunnel, ProtocolBreachesCloseOnlyTheConnectionAtFault) {
  HostileGuest g(/*egress=*/true);
  g.Send(FrameType::kEgressOpen, 1);  // a bystander, open throughout
  // A data frame over the maximum.
  g.Send(FrameType::kEgressOpen, 2);
  g.Send(FrameType::kEgressData, 2, std::string(kEgressMaxData + 1, 'x'));
  std::string ignored;
  EXPECT_TRUE(g.UntilClosed(2, &ignored));
  // Credit for bytes never sent.
  g.Send(FrameType::kEgressOpen, 3);
  g.Send(FrameType::kEgressCredit, 3, U32(1));
  EXPECT_TRUE(g.UntilClosed(3, &ignored));
  // A malformed credit.
  g.Send(FrameType::kEgressOpen, 4);
  g.Send(FrameType::kEgressCredit, 4, "x");
  EXPECT_TRUE(g.UntilClosed(4, &ignored));
  // An open of a live id ends that connection.
  g.Send(FrameType::kEgressOpen, 5);
  g.Send(FrameType::kEgressOpen, 5);
  EXPECT_TRUE(g.UntilClosed(5, &ignored));
  // Frames for ids never opened, or closed, are dropped without a word.
  g.Send(FrameType::kEgressData, 99, "GET / HTTP/1.0\r\n\r\n");
  g.Send(FrameType::kEgressCredit, 99, U32(5));
  g.Send(FrameType::kEgressClose, 98);
  g.Send(FrameType::kEgressData, 2, "late");
  Frame f;
  EXPECT_FALSE(g.Next(&f, 300)) << "frame " << static_cast<uint32_t>(f.type) << " for " << f.id;
  // Frames only the daemon sends, from the guest: ignored.
  g.Send(FrameType::kEgressListen, 7);
  EXPECT_FALSE(g.Next(&f, 300));
  // The bystander is intact and the channel serves calls.
  g.Send(FrameType::kEgressData, 1, "CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n");
  std::string answer;
  EXPECT_TRUE(g.UntilClosed(1, &answer));
  EXPECT_THAT(answer, ::testing::HasSubstr("403"));
  EXPECT_TRUE(g.StillServes());
}

TEST(EgressTunnel, OpensBeyondTheCapAreRefused) {
  HostileGuest g(/*egress=*/true);
  for (uint32_t id = 1; id <= kEgressMaxConnections + 5; ++id) g.Send(FrameType::kEgressOpen, id);
  // Past the proxy's own cap (32) each is answered 503 and closed; past the
  // tunnel's (64), refused at once unless the 503s have freed room by then.
  // Either way every one beyond the proxy's cap is closed and it serves 32.
  std::set<uint32_t> closed;
  int refused = 0;
  Frame f;
  while (g.Next(&f, 1000)) {
    if (f.type == FrameType::kEgressData && f.payload.find(" 503 ") != std::string::npos) ++refused;
    if (f.type == FrameType::kEgressClose) closed.insert(f.id);
  }
  EXPECT_EQ(closed.size(), kEgressMaxConnections + 5 - 32);
  EXPECT_GE(refused, static_cast<int>(kEgressMaxConnections) - 32);
  EXPECT_LE(refused, static_cast<int>(closed.size()));
  for (uint32_t id = kEgressMaxConnections + 1; id <= kEgressMaxConnections + 5; ++id)
    EXPECT_TRUE(closed.count(id)) << id;
  EXPECT_TRUE(g.StillServes());
}

TEST(EgressTunnel, FramesToASandboxWithoutEgressAreDropped) {
  HostileGuest g(/*egress=*/false);
  g.Send(FrameType::kEgressOpen, 1);
  g.Send(FrameType::kEgressData, 1, "CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n");
  g.Send(FrameType::kEgressCredit, 1, U32(1));
  g.Send(FrameType::kEgressClose, 1);
  Frame f;
  EXPECT_FALSE(g.Next(&f, 300));
  EXPECT_TRUE(g.StillServes());
}

// Data beyond the credit granted, while the tunnel's own thread is stuck
// writing on the channel (a guest that stops reading it): the reader still
// takes frames without blocking, holds at most a window, and closes the
// connection that overran it.
TEST(EgressTunnel, DataBeyondTheCreditClosesTheConnectionWithoutStallingTheReader) {
  auto proxy = EgressProxy::WithoutListener(ParseEgressRules({"127.0.0.1"}).value());
  std::mutex mu;
  std::condition_variable cv;
  bool gate_open = false;
  int entered = 0;
  std::vector<Frame> sent;
  paddock::EgressTunnel tunnel(proxy.get(), [&](FrameType type, uint32_t id, std::string_view payload) {
    std::unique_lock lock(mu);
    ++entered;
    cv.notify_all();
    cv.wait(lock, [&] { return gate_open; });
    sent.push_back({type, id, std::string(payload)});
    return true;
  });
  tunnel.OnFrame({FrameType::kEgressOpen, 1, ""});
  // An unfinished request head: the proxy reads it and waits for more.
  tunnel.OnFrame({FrameType::kEgressData, 1, "GET "});
  {
    // The tunnel grants those 4 bytes back and is stuck sending that.
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return entered > 0; }));
  }
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) tunnel.OnFrame({FrameType::kEgressData, 1, std::string(kEgressMaxData, 'a')});
  EXPECT_EQ(tunnel.open_connections(), 1u);  // a full window is within the credit
  tunnel.OnFrame({FrameType::kEgressData, 1, "!"});
  EXPECT_EQ(tunnel.open_connections(), 0u);  // one byte more is not
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  {
    std::lock_guard lock(mu);
    gate_open = true;
    cv.notify_all();
  }
  bool told = false;
  for (int i = 0; i < 100 && !told; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard lock(mu);
    for (const auto& f : sent) told = told || (f.type == FrameType::kEgressClose && f.id == 1);
  }
  EXPECT_TRUE(told) << "the guest was not told its connection closed";
  tunnel.Stop();
}

// The channel to a microVM guest, whose kernel may be the sandbox's: every
// frame is bounded before it is read, every call has a deadline, and a
// breach closes the channel with the reason (the substrate then stops the VM).
InitClientOptions Hostile(std::chrono::milliseconds budget = std::chrono::milliseconds(30'000)) {
  InitClientOptions o;
  o.hostile_peer = true;
  o.file_call_budget = budget;
  o.exec_grace = budget;
  return o;
}

uint64_t RssBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) << 10;
  return 0;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

TEST(HostileGuestChannel, AnOversizedReplyBreaksTheChannelBeforeAnyOfItIsRead) {
  HostileGuest g(/*egress=*/false, Hostile());
  const uint64_t rss = RssBytes();
  const auto t0 = std::chrono::steady_clock::now();
  auto exec = std::async(std::launch::async, [&] {
    ExecRequest r;
    r.argv = {"true"};
    r.timeout_ms = 1000;
    return g.client_->Exec(r, nullptr);
  });
  Frame f;
  ASSERT_TRUE(g.Next(&f, 5000));
  ASSERT_EQ(f.type, FrameType::kExec);
  // A header claiming 100 MiB (the exec asked for 1 MiB per stream), then nothing.
  uint32_t hdr[3] = {100u << 20, static_cast<uint32_t>(FrameType::kExecDone), f.id};
  ASSERT_EQ(write(g.fd_, hdr, sizeof hdr), static_cast<ssize_t>(sizeof hdr));
  auto res = exec.get();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kUnavailable) << res.status().ToString();
  EXPECT_THAT(res.status().message(), ::testing::HasSubstr("a frame of 104857600 bytes"));
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_FALSE(g.client_->alive());
  EXPECT_THAT(g.client_->broken_reason(), ::testing::HasSubstr("at most"));
  EXPECT_LT(RssBytes(), rss + (32ull << 20)) << "the claimed size was allocated";
  // Later calls fail at once with the reason.
  auto later = g.client_->Stat("/x");
  EXPECT_EQ(later.status().code(), Code::kUnavailable);
  EXPECT_THAT(later.status().message(), ::testing::HasSubstr("channel was closed"));
}

TEST(HostileGuestChannel, AnOutputChunkOverItsBoundBreaksTheChannel) {
  HostileGuest g(/*egress=*/false, Hostile());
  std::atomic<size_t> seen{0};
  auto exec = std::async(std::launch::async, [&] {
    ExecRequest r;
    r.argv = {"true"};
    r.timeout_ms = 1000;
    return g.client_->Exec(r, [&](int, std::string_view d) { seen += d.size(); });
  });
  Frame f;
  ASSERT_TRUE(g.Next(&f, 5000));
  g.Send(FrameType::kStdout, f.id, std::string(kMaxOutputChunk, 'a'));      // the most one chunk holds
  g.Send(FrameType::kStdout, f.id, std::string(kMaxOutputChunk + 1, 'b'));  // one byte over
  auto res = exec.get();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kUnavailable) << res.status().ToString();
  EXPECT_THAT(res.status().message(), ::testing::HasSubstr("where at most 65536 are allowed"));
  EXPECT_EQ(seen.load(), kMaxOutputChunk);
}

TEST(HostileGuestChannel, AListingCountBeyondItsBodyIsRefusedNotAllocated) {
  HostileGuest g(/*egress=*/false, Hostile());
  auto list = std::async(std::launch::async, [&] { return g.client_->ListDir("/"); });
  Frame f;
  ASSERT_TRUE(g.Next(&f, 5000));
  ASSERT_EQ(f.type, FrameType::kListDir);
  g.Send(FrameType::kReply, f.id, EncodeReply(0, "", U32(0xffffffffu)));
  auto r = list.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInternal) << r.status().ToString();
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("malformed listing"));
  EXPECT_FALSE(g.client_->alive());
}

TEST(HostileGuestChannel, AMalformedExecResultBreaksTheChannel) {
  HostileGuest g(/*egress=*/false, Hostile());
  auto exec = std::async(std::launch::async, [&] {
    ExecRequest r;
    r.argv = {"true"};
    return g.client_->Exec(r, nullptr);
  });
  Frame f;
  ASSERT_TRUE(g.Next(&f, 5000));
  g.Send(FrameType::kExecDone, f.id, "garbage");
  auto res = exec.get();
  EXPECT_EQ(res.status().code(), Code::kInternal) << res.status().ToString();
  EXPECT_THAT(res.status().message(), ::testing::HasSubstr("malformed exec result"));
  EXPECT_FALSE(g.client_->alive());
}

TEST(HostileGuestChannel, AGuestThatStopsAnsweringFailsTheCallByItsDeadline) {
  HostileGuest g(/*egress=*/false, Hostile(std::chrono::milliseconds(500)));
  const auto t0 = std::chrono::steady_clock::now();
  auto stat = std::async(std::launch::async, [&] { return g.client_->Stat("/x"); });
  Frame f;
  ASSERT_TRUE(g.Next(&f, 5000));  // read, never answered
  auto r = stat.get();
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded) << r.status().ToString();
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_FALSE(g.client_->alive());
  EXPECT_THAT(g.client_->Stat("/y").status().message(), ::testing::HasSubstr("did not answer within 500 ms"));
}

TEST(HostileGuestChannel, AGuestThatStopsReadingFailsTheSendByItsDeadline) {
  HostileGuest g(/*egress=*/false, Hostile(std::chrono::milliseconds(500)));
  const auto t0 = std::chrono::steady_clock::now();
  // 32 MiB: far more than the socket buffers; the guest reads none of it.
  Status st = g.client_->WriteFile("/big", std::string(32u << 20, 'x'), 0644, false);
  EXPECT_EQ(st.code(), Code::kDeadlineExceeded) << st.ToString();
  EXPECT_THAT(st.message(), ::testing::HasSubstr("stopped reading its channel"));
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_FALSE(g.client_->alive());
}

TEST(HostileGuestChannel, AHelloCutShortIsGivenUpOnByTheSetupDeadline) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  uint32_t hdr[3] = {10, static_cast<uint32_t>(FrameType::kHello), 0};
  ASSERT_EQ(write(sv[1], hdr, 6), 6);  // half a header, then silence
  const auto t0 = std::chrono::steady_clock::now();
  auto c = InitClient::Start(UniqueFd(sv[0]), SetupConfig{}, 300, Hostile());
  EXPECT_EQ(c.status().code(), Code::kDeadlineExceeded) << c.status().ToString();
  EXPECT_LT(SecondsSince(t0), 3.0);
  // And a hello claiming more than a hello holds is refused unread.
  int sv2[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
  uint32_t big[3] = {kMaxFrame, static_cast<uint32_t>(FrameType::kHello), 0};
  ASSERT_EQ(write(sv2[1], big, sizeof big), static_cast<ssize_t>(sizeof big));
  auto c2 = InitClient::Start(UniqueFd(sv2[0]), SetupConfig{}, 5000, Hostile());
  EXPECT_EQ(c2.status().code(), Code::kInternal) << c2.status().ToString();
  EXPECT_THAT(c2.status().message(), ::testing::HasSubstr("first frame is larger"));
  close(sv[1]);
  close(sv2[1]);
}

TEST(Protocol, AFrameOverTheCapIsNeverWrittenSoNoLengthIsTruncated) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
  std::string big(size_t{kMaxFrame} + 1, 'x');
  errno = 0;
  EXPECT_FALSE(WriteFrame(sv[0], FrameType::kWriteFile, 1, big));
  EXPECT_EQ(errno, EMSGSIZE);
  EXPECT_FALSE(WriteFrameBy(sv[0], FrameType::kWriteFile, 1, big, {}, std::chrono::steady_clock::now()));
  EXPECT_EQ(errno, EMSGSIZE);
  char c;
  EXPECT_EQ(read(sv[1], &c, 1), -1) << "part of a refused frame was written";
  close(sv[0]);
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

// Bytes readable on `fd` within `ms`: "" when none came (or it ended).
std::string ReadWithin(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, ms) != 1) return "";
  char buf[256];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return n > 0 ? std::string(buf, n) : "";
}

// A request forwarded while the far end was cut off, and its sandbox then
// destroyed, never arrives once the link is back: the proxy aborts its
// connections (a reset, unsent and unacknowledged bytes dropped) instead of
// closing them, which would leave the kernel retransmitting the request until
// the partition heals, a side effect of a call nobody is waiting for.
TEST(EgressProxyAbort, ARequestCaughtInAPartitionIsNotDeliveredAfterTheProxyIsGone) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (a network namespace)";
  paddock::testing::TestInternet inet;
  ASSERT_TRUE(inet.ok()) << inet.why();
  const std::string far_end = inet.server_ip() + ":9090";
  UniqueFd listener(inet.Listen(9090));
  ASSERT_TRUE(listener.valid());
  auto rules = ParseEgressRules({far_end});
  ASSERT_TRUE(rules.ok()) << rules.status().message();
  auto proxy = EgressProxy::WithoutListener(std::move(rules).value());
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd client(sv[0]);
  proxy->ServeConnected(UniqueFd(sv[1]));
  const std::string connect = "CONNECT " + far_end + " HTTP/1.1\r\n\r\n";
  ASSERT_EQ(write(client.get(), connect.data(), connect.size()), static_cast<ssize_t>(connect.size()));
  pollfd p{listener.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1) << "the proxy never connected";
  UniqueFd upstream(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(upstream.valid());
  EXPECT_THAT(ReadWithin(client.get(), 10000), ::testing::HasSubstr("200 Connection established"));
  ASSERT_EQ(write(client.get(), "ping", 4), 4);
  EXPECT_EQ(ReadWithin(upstream.get(), 10000), "ping");

  ASSERT_TRUE(inet.Partition(true));
  const std::string request = "POST /charge-card";
  ASSERT_EQ(write(client.get(), request.data(), request.size()), static_cast<ssize_t>(request.size()));
  // Until the proxy has sent it on: it waits, unacknowledged, in the send
  // queue of the proxy's socket to the far end.
  bool queued = false;
  for (int i = 0; i < 100 && !queued; ++i) {
    auto ss = paddock::testing::RunProgram({"/bin/sh", "-c", "ss -Htn state established dst " + far_end +
                                                                 " | awk '{print $2}'"});
    queued = ss.code == 0 && !ss.out.empty() && std::atoi(ss.out.c_str()) > 0;
    if (!queued) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(queued) << "the request never reached the proxy's socket";
  proxy.reset();  // the sandbox is destroyed
  ASSERT_TRUE(inet.Partition(false));
  // Retransmissions back off from 200 ms: with a graceful close the request
  // would come within a few seconds of the heal.
  std::string late;
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
       std::chrono::steady_clock::now() < until;) {
    late += ReadWithin(upstream.get(), 200);
  }
  EXPECT_EQ(late, "") << "delivered after its sandbox was destroyed";
}

}  // namespace
}  // namespace paddock::init
