#include <cstdlib>

#include <google/protobuf/util/json_util.h>

#include "policy/v4/decode/decoder.h"
#include "rollout/engine/engine_internal.h"

namespace paddock::rollout {

using json = nlohmann::json;

// token_ids: the episode's context as the policy saw it: step 1's prompt,
// then per step its output ids and the next step's prompt delta (the
// observations). loss_mask is 1 on output ids. logprobs is aligned with
// token_ids: the sampled token's logprob on output ids, null elsewhere.
Result<std::string> ExportEpisodeLine(replay::TrajectoryLog& log, const v4::Tokenizer* tokenizer,
                                      const v1::StartRolloutRequest& req, const Task* task,
                                      const v1::EpisodeSummary& s) {
  auto steps = log.ReadSteps(s.episode_id());
  if (!steps.ok()) return steps.status();
  json line = json::object();
  size_t slash = s.episode_id().find('/');
  line["rollout_id"] = s.episode_id().substr(0, slash);
  line["episode_id"] = s.episode_id();
  line["task_id"] = s.task_id().empty() && task ? task->id : s.task_id();
  line["sample"] = s.sample();
  line["group_id"] = s.group_id().empty() ? line["rollout_id"].get<std::string>() + "/" + line["task_id"].get<std::string>()
                                          : s.group_id();
  line["state"] = s.state().empty() ? "finished" : s.state();

  json messages = json::array();
  if (task) {
    json sys = {{"role", "system"}, {"content", task->system.empty() ? kDefaultSystem : task->system}};
    messages.push_back(sys);
    messages.push_back({{"role", "user"}, {"content", task->instruction}});
  }
  json ids = json::array(), mask = json::array(), logprobs = json::array();
  json step_rows = json::array();
  const v1::PolicyResponseProto* previous = nullptr;
  for (const auto& st : *steps) {
    const auto& tm = st.timings();
    step_rows.push_back({{"step", st.step()},
                         {"started_unix_ms", tm.started_unix_ms()},
                         {"policy_version", st.policy_response().policy_version()},
                         {"policy_epoch", st.policy_response().policy_epoch()},
                         {"timings_us",
                          {{"policy_queue", tm.policy_wait_us()},
                           {"policy", tm.policy_us()},
                           {"tools", tm.tools_us()},
                           {"total", tm.total_us()}}}});
    // A log written before delta_after_output repeated the previous output at
    // the start of each delta: the policy saw it once, so it is exported once.
    const auto& rq = st.policy_request();
    int skip = 0;
    if (rq.prompt_is_delta() && !rq.delta_after_output() && previous && previous->token_ids_size() > 0 &&
        rq.prompt_token_ids_size() >= previous->token_ids_size() &&
        std::equal(previous->token_ids().begin(), previous->token_ids().end(), rq.prompt_token_ids().begin()))
      skip = previous->token_ids_size();
    for (int i = skip; i < rq.prompt_token_ids_size(); ++i) {
      ids.push_back(rq.prompt_token_ids(i));
      mask.push_back(0);
      logprobs.push_back(nullptr);
    }
    const auto& resp = st.policy_response();
    previous = &resp;
    for (int i = 0; i < resp.token_ids_size(); ++i) {
      ids.push_back(resp.token_ids(i));
      mask.push_back(1);
      if (i < resp.logprobs_size())
        logprobs.push_back(resp.logprobs(i));
      else
        logprobs.push_back(nullptr);
    }
    json assistant = {{"role", "assistant"}};
    std::string text = resp.text();
    if (tokenizer && text.empty() && resp.token_ids_size()) {
      std::vector<uint32_t> v(resp.token_ids().begin(), resp.token_ids().end());
      text = tokenizer->Decode(v);
    }
    // A turn answered with a user message (no tool_call_id) was malformed:
    // export its raw text as the content.
    bool malformed = false;
    for (const auto& ob : st.observations()) malformed |= ob.tool_call_id().empty();
    auto decoded = v4::DecodeCompletion(text, req.thinking());
    if (auto* m = std::get_if<json>(&decoded); m && !malformed) {
      assistant["content"] = m->value("content", "");
      if (m->contains("reasoning_content") && (*m)["reasoning_content"].is_string() &&
          !(*m)["reasoning_content"].get<std::string>().empty())
        assistant["reasoning_content"] = (*m)["reasoning_content"];
    } else {
      assistant["content"] = text;
    }
    if (st.tool_calls_size()) {
      json calls = json::array();
      for (const auto& tc : st.tool_calls())
        calls.push_back({{"id", tc.id()},
                         {"type", "function"},
                         {"function", {{"name", tc.name()}, {"arguments", tc.arguments_json()}}}});
      assistant["tool_calls"] = calls;
    }
    messages.push_back(assistant);
    for (const auto& ob : st.observations())
      if (ob.tool_call_id().empty())
        messages.push_back({{"role", "user"}, {"content", ob.content()}});
      else
        messages.push_back({{"role", "tool"}, {"tool_call_id", ob.tool_call_id()}, {"content", ob.content()}});
  }
  line["messages"] = messages;
  line["token_ids"] = ids;
  line["loss_mask"] = mask;
  line["logprobs"] = logprobs;
  line["steps"] = step_rows;
  line["reward"] = s.reward();
  line["stop_reason"] = s.stop_reason();
  line["turns"] = s.turns();
  line["tool_calls"] = s.tool_calls();
  line["generated_tokens"] = s.generated_tokens();
  const auto& t = s.timings();
  line["timings_us"] = {{"queue", t.queue_us()},
                        {"sandbox_start", t.sandbox_start_us()}, {"setup", t.setup_us()},
                        {"policy", t.policy_us()},               {"policy_wait", t.policy_wait_us()},
                        {"tools", t.tools_us()},                 {"verifier", t.verifier_us()},
                        {"total", t.total_us()}};
  line["replayed"] = {{"policy_calls", s.replayed_policy_calls()}, {"tool_calls", s.replayed_tool_calls()}};
  line["policy_retries"] = s.policy_retries();
  line["malformed_turns"] = s.malformed_tool_calls();
  line["rebuilt"] = s.rebuilt();
  line["rebuild_note"] = s.rebuild_note();
  line["failure_reason"] = s.failure_reason();
  // Episodes logged before outcome classes existed (and unfinished ones) count as the agent's.
  bool infra = s.outcome_class() == "infra";
  line["outcome"] = {{"class", infra ? "infra" : "agent"},
                     {"reason", s.outcome_reason().empty() ? s.stop_reason() : s.outcome_reason()}};
  line["train"] = !infra && (s.state().empty() || s.state() == "finished" || s.state() == "failed");
  line["infra_retries"] = s.infra_retries();
  // A fork (ForkEpisode): its parent episode and the turn it was forked at.
  if (auto of = req.labels().find("paddock.fork_of"); of != req.labels().end()) {
    auto at = req.labels().find("paddock.fork_step");
    line["fork"] = {{"parent", of->second},
                    {"at_step", at == req.labels().end() ? 0 : std::strtoull(at->second.c_str(), nullptr, 10)}};
  } else {
    line["fork"] = nullptr;
  }
  line["policy_lag"] = s.policy_lag();
  line["stale"] = s.stale();
  line["retry_note"] = s.retry_note();
  line["verifier_output"] = s.verifier_output();
  std::string kind = req.policy().kind().empty() ? "sglang" : req.policy().kind();
  line["policy"] = {{"kind", kind}, {"url", req.policy().url()}, {"model", req.policy().model()}};
  line["token_exact"] = true;  // the engine only accepts token-exact backends
  line["metadata"] = task ? task->metadata : json::object();
  return line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace paddock::rollout
