// Where this machine's KVM cannot run guests (a VM without nested
// virtualization: /dev/kvm exists but the CPU shows no vmx/svm), the microvm
// tests run their real QEMU guests under TCG emulation instead of failing,
// and say so. A user's PADDOCK_MICROVM_ACCEL always wins; paddockd itself
// never falls back silently (its default stays kvm, with a clear error).
#pragma once

#include <cstdio>
#include <cstdlib>

#include "sandbox/microvm/microvm_substrate.h"

namespace paddock::testing {

inline void UseEmulationWhereKvmCannotRunGuests() {
  // The tests accept TCG explicitly (paddockd needs --allow-tcg-microvms: DaemonArgs).
  setenv("PADDOCK_MICROVM_ALLOW_TCG", "1", 1);
  if (const char* set = std::getenv("PADDOCK_MICROVM_ACCEL"); set && *set) return;
  MicrovmOptions kvm = MicrovmOptionsFromEnvironment();
  kvm.accel = "kvm";
  Status why = CheckAccelerator(kvm);
  if (why.ok()) return;
  MicrovmOptions tcg = kvm;
  tcg.accel = "tcg";
  if (!CheckAccelerator(tcg).ok()) return;  // QEMU missing: the tests report that themselves
  setenv("PADDOCK_MICROVM_ACCEL", "tcg", 1);
  std::fprintf(stderr, "note: microvm tests run under QEMU's TCG emulation here: %s\n", why.ToString().c_str());
}

}  // namespace paddock::testing

// At the top of every microVM case (a void function): where the accelerator
// asked for is KVM and this machine's KVM cannot run guests, the case is
// skipped, so its ctest entry NAME_microvm_kvm says "Skipped", never
// "Passed"; any other reason guests cannot run (QEMU missing, TCG broken)
// fails the case with that reason.
#define PADDOCK_REQUIRE_MICROVM()                                                                  \
  do {                                                                                             \
    ::paddock::MicrovmOptions require_opts_ = ::paddock::MicrovmOptionsFromEnvironment();          \
    ::paddock::Status require_st_ = ::paddock::CheckAccelerator(require_opts_);                    \
    if (!require_st_.ok() && require_opts_.accel == "kvm")                                         \
      GTEST_SKIP() << "KVM cannot run guests here: " << require_st_.ToString();                    \
    ASSERT_TRUE(require_st_.ok()) << "microvm substrate unusable here: " << require_st_.ToString(); \
  } while (0)
