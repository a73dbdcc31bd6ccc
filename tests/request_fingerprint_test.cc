// Request fingerprints (replay/fingerprint.cc, replay/idempotent_calls.cc):
// a fingerprint is kept in the trajectory log with each call's intent and a
// resumed harness is answered only when its request hashes the same, so the
// hash must stay SHA-256 of the canonical request across daemon versions —
// a daemon that computed it differently would refuse every logged call.
#include <gtest/gtest.h>

#include "replay/idempotent_calls.h"
#include "replay/trajectory_log.h"

namespace paddock::replay {
namespace {

TEST(RequestFingerprintTest, IsLowerHexSha256_StandardVectors) {
  // FIPS 180-2 / NIST test vectors.
  EXPECT_EQ(RequestFingerprint(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(RequestFingerprint("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(RequestFingerprint("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(RequestFingerprint(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Bytes past a NUL count.
  EXPECT_NE(RequestFingerprint(std::string("a\0b", 3)), RequestFingerprint("a"));
}

TEST(RequestFingerprintTest, ExecIdentity_IgnoresSandboxAndKey_SeesEveryRequestField) {
  v1::ExecRequest req;
  req.set_sandbox_id("sb-1");
  req.add_argv("echo");
  req.add_argv("hi");
  req.mutable_idempotency_key()->set_episode("ep");
  req.mutable_idempotency_key()->set_step(3);
  const RequestIdentity base = IdentifyExec(req);
  EXPECT_EQ(base.fingerprint.size(), 64u);
  EXPECT_EQ(SummaryKind(base.summary), "exec");
  // A rebuilt sandbox and another key: the same request.
  v1::ExecRequest moved = req;
  moved.set_sandbox_id("sb-2");
  moved.mutable_idempotency_key()->set_step(4);
  EXPECT_EQ(IdentifyExec(moved).fingerprint, base.fingerprint);
  // Any field of the command: another request, and the summary says which.
  v1::ExecRequest other = req;
  other.set_argv(1, "ho");
  EXPECT_NE(IdentifyExec(other).fingerprint, base.fingerprint);
  EXPECT_NE(DescribeDifference(base.summary, IdentifyExec(other).summary).find("argv"), std::string::npos);
  other = req;
  other.set_stdin("x");
  EXPECT_NE(IdentifyExec(other).fingerprint, base.fingerprint);
  other = req;
  (*other.mutable_env())["A"] = "1";
  EXPECT_NE(IdentifyExec(other).fingerprint, base.fingerprint);
  // An exec and a write never share a fingerprint, even over the same bytes.
  v1::WriteFileRequest write;
  EXPECT_NE(IdentifyWrite(write).fingerprint, IdentifyExec(v1::ExecRequest()).fingerprint);
}

}  // namespace
}  // namespace paddock::replay
