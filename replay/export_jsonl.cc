// ExportEpisodeJsonl: one episode as JSON lines, for training pipelines and
// `paddock log export --format jsonl`.
#include <nlohmann/json.hpp>

#include "replay/log_impl.h"

namespace paddock::replay {
namespace {

using nlohmann::json;

const char* StateName(v1::EpisodeRecordProto::State state) {
  switch (state) {
    case v1::EpisodeRecordProto::RUNNING: return "running";
    case v1::EpisodeRecordProto::FINISHED: return "finished";
    case v1::EpisodeRecordProto::FAILED: return "failed";
    default: return "unspecified";
  }
}

json EpisodeJson(const v1::EpisodeRecordProto& e) {
  json labels = json::object();
  for (const auto& [k, v] : e.labels()) labels[k] = v;
  return {{"type", "episode"},         {"format_version", e.format_version()},
          {"episode_id", e.episode_id()}, {"state", StateName(e.state())},
          {"created_unix_ms", e.created_unix_ms()}, {"updated_unix_ms", e.updated_unix_ms()},
          {"sandbox_id", e.sandbox_id()}, {"model", e.model()},
          {"task", e.task()},             {"labels", labels},
          {"total_reward", e.total_reward()}, {"stop_reason", e.stop_reason()},
          {"failure_reason", e.failure_reason()}, {"rebuild_note", e.rebuild_note()},
          {"snapshot_step", e.snapshot_step()}, {"snapshot_id", e.snapshot_id()}};
}

json StepJson(const v1::StepRecordProto& s) {
  const auto& rq = s.policy_request();
  const auto& rs = s.policy_response();
  json tool_calls = json::array();
  for (const auto& c : s.tool_calls())
    tool_calls.push_back({{"id", c.id()}, {"name", c.name()}, {"arguments", c.arguments_json()},
                          {"call_key", c.call_key()}});
  json observations = json::array();
  for (const auto& o : s.observations())
    observations.push_back({{"tool_call_id", o.tool_call_id()}, {"content", o.content()},
                            {"exit_code", o.exit_code()}, {"truncated", o.truncated()},
                            {"token_ids", std::vector<uint32_t>(o.token_ids().begin(), o.token_ids().end())}});
  return {
      {"type", "step"},
      {"format_version", s.format_version()},
      {"episode_id", s.episode_id()},
      {"step", s.step()},
      {"policy_request",
       {{"prompt_token_ids", std::vector<uint32_t>(rq.prompt_token_ids().begin(), rq.prompt_token_ids().end())},
        {"prompt_is_delta", rq.prompt_is_delta()},
        {"delta_after_output", rq.delta_after_output()},
        {"prompt_text", rq.prompt_text()},
        {"model", rq.model()},
        {"temperature", rq.temperature()},
        {"top_p", rq.top_p()},
        {"max_tokens", rq.max_tokens()},
        {"seed", rq.seed()}}},
      {"policy_response",
       {{"token_ids", std::vector<uint32_t>(rs.token_ids().begin(), rs.token_ids().end())},
        {"logprobs", std::vector<float>(rs.logprobs().begin(), rs.logprobs().end())},
        {"text", rs.text()},
        {"finish_reason", rs.finish_reason()}}},
      {"tool_calls", tool_calls},
      {"observations", observations},
      {"reward", s.reward()},
      {"timings",
       {{"started_unix_ms", s.timings().started_unix_ms()}, {"policy_us", s.timings().policy_us()},
        {"tools_us", s.timings().tools_us()}, {"total_us", s.timings().total_us()}}},
      {"stop_reason", s.stop_reason()},
  };
}

void AppendLine(std::string& out, const json& line) {
  // Invalid UTF-8 in a text field becomes U+FFFD rather than failing the export.
  out += line.dump(-1, ' ', false, json::error_handler_t::replace);
  out += '\n';
}

}  // namespace

Result<std::string> TrajectoryLogImpl::ExportEpisodeJsonl(const std::string& episode) {
  PADDOCK_ASSIGN_OR_RETURN(std::optional<v1::EpisodeRecordProto> record, GetEpisode(episode));
  PADDOCK_ASSIGN_OR_RETURN(std::vector<v1::StepRecordProto> steps, ReadSteps(episode, 0, UINT64_MAX));
  if (!record && steps.empty())
    return Error(Code::kNotFound, "episode '{}' is not in the trajectory log; `paddock log ls` lists episodes",
                 episode);
  std::string out;
  if (record) AppendLine(out, EpisodeJson(*record));
  for (const v1::StepRecordProto& step : steps) AppendLine(out, StepJson(step));
  return out;
}

}  // namespace paddock::replay
