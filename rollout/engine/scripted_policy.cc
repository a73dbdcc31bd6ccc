#include "rollout/engine/scripted_policy.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "policy/v4/encode/encoder.h"

namespace paddock::rollout {

Result<std::unique_ptr<ScriptedPolicy>> ScriptedPolicy::Create(std::shared_ptr<const v4::Tokenizer> tokenizer,
                                                              const std::string& script_json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(script_json);
  } catch (const nlohmann::json::parse_error& e) {
    return Error(Code::kInvalidArgument, "policy script: not valid JSON: {}", e.what());
  }
  if (!j.is_array() || j.empty())
    return Error(Code::kInvalidArgument, "policy script: must be a non-empty JSON array of completions");
  std::unique_ptr<ScriptedPolicy> p(new ScriptedPolicy());
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_string()) return Error(Code::kInvalidArgument, "policy script: element {} is not a string", i);
    p->script_.push_back(j[i].get<std::string>());
  }
  auto id = tokenizer->TokenId(v4::kAssistantToken);
  if (!id) return Error(Code::kFailedPrecondition, "the tokenizer has no <｜Assistant｜> token");
  p->assistant_id_ = *id;
  p->tokenizer_ = std::move(tokenizer);
  p->cache_.resize(0);
  return p;
}

const std::vector<int32_t>& ScriptedPolicy::Ids(size_t turn) {
  std::lock_guard lock(mu_);
  if (cache_.size() <= turn) cache_.resize(turn + 1);
  auto& ids = cache_[turn];
  if (ids.empty()) {
    std::string text = script_[std::min(turn, script_.size() - 1)];
    for (size_t p; (p = text.find("{turn}")) != std::string::npos;) text.replace(p, 6, std::to_string(turn));
    for (uint32_t id : tokenizer_->Encode(text)) ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

Result<policy::GenerateResult> ScriptedPolicy::Generate(const policy::GenerateRequest& request,
                                                        const policy::CallOptions& options) {
  if (options.cancel && options.cancel->cancelled()) return Error(Code::kCancelled, "scripted policy: cancelled");
  if (request.input_ids.empty()) return Error(Code::kInvalidArgument, "scripted policy: no input_ids");
  size_t assistants = std::count(request.input_ids.begin(), request.input_ids.end(),
                                 static_cast<int32_t>(assistant_id_));
  size_t turn = assistants == 0 ? 0 : assistants - 1;
  policy::GenerateResult r;
  r.output_ids = Ids(turn);
  if (r.output_ids.size() > static_cast<size_t>(request.sampling.max_new_tokens)) {
    r.output_ids.resize(request.sampling.max_new_tokens);
    r.finish_reason = policy::FinishReason::kLength;
  } else {
    r.finish_reason = policy::FinishReason::kEos;
  }
  r.logprobs.assign(r.output_ids.size(), 0.0f);
  std::vector<uint32_t> u(r.output_ids.begin(), r.output_ids.end());
  r.text = tokenizer_->Decode(u);
  r.token_exact = true;
  r.attempts = 1;
  return r;
}

void ScriptedPolicy::GenerateAsync(policy::GenerateRequest request, policy::CallOptions options, Callback done) {
  done(Generate(request, options));
}

}  // namespace paddock::rollout
