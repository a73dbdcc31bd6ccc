#include "rollout/engine/verifier_verdict.h"

#include <stdexcept>

#include <fmt/format.h>

namespace paddock::rollout {

namespace {
// The last non-blank line of `out`, without its surrounding blanks.
std::string LastLine(const std::string& out) {
  size_t end = out.find_last_not_of(" \t\r\n");
  if (end == std::string::npos) return "";
  size_t nl = out.rfind('\n', end);
  size_t begin = nl == std::string::npos ? 0 : nl + 1;
  std::string line = out.substr(begin, end + 1 - begin);
  size_t lead = line.find_first_not_of(" \t");
  return lead == std::string::npos ? "" : line.substr(lead);
}
}  // namespace

VerifierVerdict JudgeVerifier(const nlohmann::json& result, const Verifier& verifier) {
  VerifierVerdict v;
  if (!result.is_object()) {
    v.infra = InfraReason::kVerifierError;
    v.why = "the verifier's result is not readable";
    return v;
  }
  int exit_code = result.value("exit_code", 1);
  int signal = result.value("signal", 0);
  if (result.value("timed_out", false)) {
    v.infra = InfraReason::kVerifierTimeout;
    v.why = fmt::format("the verifier ran past its timeout ({} s)", verifier.timeout_s);
    return v;
  }
  if (signal != 0) {
    v.infra = InfraReason::kVerifierCrash;
    v.why = fmt::format("the verifier was killed by signal {}", signal);
    return v;
  }
  if (exit_code == 126 || exit_code == 127) {
    v.infra = InfraReason::kVerifierError;
    v.why = fmt::format("the verifier's command could not run (exit {}): {}", exit_code,
                        result.value("stderr", "").substr(0, 300));
    return v;
  }
  if (verifier.reward == "exit_code") {
    v.reward = exit_code == 0 ? 1.0 : 0.0;
    return v;
  }
  std::string last = LastLine(result.value("stdout", ""));
  try {
    size_t used = 0;
    v.reward = std::stod(last, &used);
    if (used != last.size()) throw std::invalid_argument("trailing");
  } catch (...) {
    v.reward = 0;
    v.infra = InfraReason::kVerifierError;
    v.why = fmt::format("the verifier's last stdout line '{}' is not a number", last.substr(0, 80));
  }
  return v;
}

}  // namespace paddock::rollout
