// What a verifier run says: the reward, or that the verifier itself failed
// (an infra end: the reward would say nothing about the agent).
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "rollout/engine/outcome.h"
#include "rollout/engine/task.h"

namespace paddock::rollout {

struct VerifierVerdict {
  double reward = 0;
  std::optional<InfraReason> infra;  // set when the verifier failed
  std::string why;                   // for failure_reason
};

// `result`: the logged verifier result {"exit_code", "stdout", "stderr",
// "signal", "timed_out"}. Infra when it was killed by a signal, timed out,
// could not run its command (exit 126/127), or, for reward "stdout", printed
// no number on its last line. A nonzero exit of an exit_code verifier is
// the agent's reward 0.
VerifierVerdict JudgeVerifier(const nlohmann::json& result, const Verifier& verifier);

}  // namespace paddock::rollout
