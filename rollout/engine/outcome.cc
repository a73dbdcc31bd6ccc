#include "rollout/engine/outcome.h"

namespace paddock::rollout {

const char* InfraReasonName(InfraReason reason) {
  switch (reason) {
    case InfraReason::kSandboxCreate: return "sandbox_create";
    case InfraReason::kImagePull: return "image_pull";
    case InfraReason::kSandboxLost: return "sandbox_lost";
    case InfraReason::kSetupFailed: return "setup_failed";
    case InfraReason::kPolicyUnavailable: return "policy_unavailable";
    case InfraReason::kPolicyError: return "policy_error";
    case InfraReason::kVerifierCrash: return "verifier_crash";
    case InfraReason::kVerifierTimeout: return "verifier_timeout";
    case InfraReason::kVerifierError: return "verifier_error";
    case InfraReason::kDeadline: return "deadline";
    case InfraReason::kLog: return "log_error";
    case InfraReason::kReplayMismatch: return "replay_mismatch";
    case InfraReason::kEngine: return "engine_error";
  }
  return "engine_error";
}

bool InfraRetryable(InfraReason reason) {
  // A mismatch between the task and its log repeats on every run; a log
  // that failed to write is a broken disk, not a passing fault.
  return reason != InfraReason::kReplayMismatch && reason != InfraReason::kLog;
}

void SetAgentOutcome(v1::EpisodeSummary& summary) {
  summary.set_outcome_class("agent");
  summary.set_outcome_reason(summary.stop_reason());
  summary.set_train(true);
}

void SetInfraOutcome(v1::EpisodeSummary& summary, InfraReason reason) {
  summary.set_outcome_class("infra");
  summary.set_outcome_reason(InfraReasonName(reason));
  summary.set_train(false);
}

}  // namespace paddock::rollout
