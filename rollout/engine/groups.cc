#include "rollout/engine/groups.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <nlohmann/json.hpp>

namespace paddock::rollout {

namespace {
std::string AckKey(const std::string& rollout_id, const std::string& consumer) {
  return "consumer/" + rollout_id + "/" + consumer;
}
}  // namespace

void GroupTracker::Reset(size_t tasks, uint32_t samples) {
  remaining_.assign(tasks, samples);
  completed_.clear();
}

bool GroupTracker::Ended(size_t task, int64_t unix_ms) {
  if (task >= remaining_.size() || remaining_[task] == 0) return false;
  if (--remaining_[task] > 0) return false;
  completed_.emplace_back(task, unix_ms);
  return true;
}

std::string GroupId(const std::string& rollout_id, const std::string& task_id) { return rollout_id + "/" + task_id; }

v1::EpisodeGroup MakeGroup(const std::string& rollout_id, const std::string& task_id,
                           std::vector<v1::EpisodeSummary> samples, int64_t completed_unix_ms) {
  std::sort(samples.begin(), samples.end(), [](const auto& a, const auto& b) { return a.sample() < b.sample(); });
  v1::EpisodeGroup g;
  g.set_group_id(GroupId(rollout_id, task_id));
  g.set_rollout_id(rollout_id);
  g.set_task_id(task_id);
  g.set_completed_unix_ms(completed_unix_ms);
  double sum = 0, sq = 0;
  uint32_t n = 0;
  for (auto& s : samples) {
    if (s.train()) {
      sum += s.reward();
      sq += s.reward() * s.reward();
      ++n;
    }
    *g.add_episodes() = std::move(s);
  }
  g.set_trainable(n);
  if (n) {
    double mean = sum / n;
    g.set_reward_mean(mean);
    g.set_reward_std(std::sqrt(std::max(0.0, sq / n - mean * mean)));
  }
  return g;
}

Status ValidConsumer(const std::string& c) {
  bool ok = !c.empty() && c.size() <= 64 && std::all_of(c.begin(), c.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
  });
  if (!ok) return Error(Code::kInvalidArgument, "consumer '{}' must be 1-64 characters of A-Z a-z 0-9 . _ -", c);
  return Status::Ok();
}

Result<std::set<std::string>> LoadAcks(replay::TrajectoryLog& log, const std::string& rollout_id,
                                       const std::string& consumer) {
  std::set<std::string> out;
  PADDOCK_ASSIGN_OR_RETURN(auto rec, log.GetEpisode(AckKey(rollout_id, consumer)));
  if (!rec) return out;
  auto ids = nlohmann::json::parse(rec->task(), nullptr, false);
  if (!ids.is_array())
    return Error(Code::kDataLoss, "the acknowledgements of consumer '{}' on rollout '{}' do not parse", consumer,
                 rollout_id);
  for (auto& id : ids)
    if (id.is_string()) out.insert(id.get<std::string>());
  return out;
}

Result<std::pair<uint32_t, uint32_t>> StoreAcks(replay::TrajectoryLog& log, const std::string& rollout_id,
                                                const std::string& consumer,
                                                const std::vector<std::string>& group_ids) {
  PADDOCK_ASSIGN_OR_RETURN(auto acked, LoadAcks(log, rollout_id, consumer));
  uint32_t added = 0;
  for (const auto& id : group_ids) added += acked.insert(id).second;
  if (added) {
    v1::EpisodeRecordProto rec;
    rec.set_episode_id(AckKey(rollout_id, consumer));
    rec.set_state(v1::EpisodeRecordProto::RUNNING);
    rec.set_task(nlohmann::json(acked).dump());
    (*rec.mutable_labels())["paddock.kind"] = "consumer";
    (*rec.mutable_labels())["paddock.rollout"] = rollout_id;
    PADDOCK_RETURN_IF_ERROR(log.PutEpisode(rec).Prefix("recording the acknowledgements"));
  }
  return std::make_pair(added, static_cast<uint32_t>(acked.size()));
}

}  // namespace paddock::rollout
