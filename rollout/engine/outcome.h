// Whose an episode's end is. A trainer must keep the platform's failures out
// of the loss: a sandbox that died, a verifier that crashed or a policy server
// that was down says nothing about the policy, yet would count as a zero
// reward ("fake zeros"). Every ended episode carries an outcome class:
//   agent: the reward is the agent's (submit, eos, no_tool_call, max_turns,
//          budget, format_error); trained on;
//   infra: the platform's (the reasons below); masked from training
//          (train = false) and, with retry_infra, run again from the log.
#pragma once

#include <string>

#include "rollout.pb.h"

namespace paddock::rollout {

enum class InfraReason {
  kSandboxCreate,      // no sandbox could be made (and none waited for)
  kImagePull,          // the task's image could not be pulled
  kSandboxLost,        // the sandbox died under the episode (killed, OOM, its node lost)
  kSetupFailed,        // a setup command of the task failed
  kPolicyUnavailable,  // the policy server stayed down past unavailable_wait_s
  kPolicyError,        // the policy server answered something unusable
  kVerifierCrash,      // the verifier was killed by a signal
  kVerifierTimeout,    // the verifier ran past its timeout
  kVerifierError,      // the verifier could not run or gave no reward (126/127, no number)
  kDeadline,           // the episode deadline passed
  kLog,                // the trajectory log failed
  kReplayMismatch,     // the log holds another episode's calls; a rerun fails the same way
  kEngine,             // anything else of the engine's
};

const char* InfraReasonName(InfraReason reason);

// Whether running the episode again from the log may end it otherwise.
bool InfraRetryable(InfraReason reason);

// Sets the summary's outcome: agent with the stop reason as its reason.
void SetAgentOutcome(v1::EpisodeSummary& summary);
// Sets the summary's outcome: infra with `reason`; train = false.
void SetInfraOutcome(v1::EpisodeSummary& summary, InfraReason reason);

}  // namespace paddock::rollout
