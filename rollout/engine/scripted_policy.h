// A scripted in-process policy: turn N of every episode is answered with
// element N of a fixed list of V4 completions (the last one repeats), at once.
// It exists for tests that must not depend on a model and for the
// orchestration-overhead benchmark (bench/rollout_bench), where it is the
// "policy that answers instantly". It is never the default.
//
// The turn is read from the prompt: the number of <｜Assistant｜> tokens in the
// input, minus one. "{turn}" in a completion is replaced by that number.
//
// The script may also be a JSON object {"completions": [...], "latency_ms":
// [MIN, MAX]}: each answer (GenerateAsync) then comes after a latency drawn
// uniformly from [MIN, MAX] ms, as from a model server under load — for the
// fleet simulation (bench/fleet_sim_bench), where 100,000 episodes wait 1–10 s
// per turn. One timer thread serves every delayed answer; a cancelled request
// is answered (CANCELLED) at once.
//
// Per-task scripts (an "oracle" policy, e.g. for supervised training data,
// examples/train/make_sft_data.py): the object's "by_prompt" is a list of
// {"match": TEXT, "completions": [...]}; a request is answered from the first
// entry whose TEXT occurs in the decoded prompt (e.g. the task's instruction),
// else from the object's "completions" (which may then be left out: a prompt
// that matches nothing is INVALID_ARGUMENT). In these completions
// "{last_output}" is replaced by the first line of the last <tool_result> in
// the prompt (a command's output, to be submitted).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "policy/backends/backend.h"
#include "policy/v4/tokenizer/tokenizer.h"

namespace paddock::rollout {

class ScriptedPolicy final : public policy::PolicyBackend {
 public:
  // `script_json`: a JSON array of strings. INVALID_ARGUMENT otherwise.
  static Result<std::unique_ptr<ScriptedPolicy>> Create(std::shared_ptr<const v4::Tokenizer> tokenizer,
                                                        const std::string& script_json);

  ~ScriptedPolicy() override;
  std::string_view kind() const override { return "scripted"; }
  bool token_exact() const override { return true; }
  // Answers inline, on the calling thread; with a latency, on the timer thread.
  void GenerateAsync(policy::GenerateRequest request, policy::CallOptions options, Callback done) override;
  Result<policy::GenerateResult> Generate(const policy::GenerateRequest& request,
                                          const policy::CallOptions& options) override;

 private:
  ScriptedPolicy() = default;
  const std::vector<int32_t>& Ids(size_t turn);

  std::shared_ptr<const v4::Tokenizer> tokenizer_;
  std::vector<std::string> script_;
  struct ByPrompt {
    std::string match;
    std::vector<std::string> completions;
  };
  std::vector<ByPrompt> by_prompt_;
  uint32_t assistant_id_ = 0;
  std::mutex mu_;
  std::vector<std::vector<int32_t>> cache_;  // per turn, filled on first use
  std::chrono::milliseconds latency_min_{0}, latency_max_{0};
  struct Timer;
  std::shared_ptr<Timer> timer_;  // started with the first delayed answer
};

}  // namespace paddock::rollout
