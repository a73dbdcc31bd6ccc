// Groups: the samples of one task in a rollout (samples_per_task of them), the
// unit a GRPO-style trainer learns from. A group is delivered when all its
// samples have ended for good (an infra end that will be retried has not
// ended), with the reward mean and spread over the samples fit to train on.
//
// Consumers' acknowledgements live in the trajectory log (column family
// "episodes", key "consumer/ROLLOUT/NAME", label paddock.kind=consumer, the
// acknowledged group ids as a JSON array in `task`), so a trainer that
// restarts, or a daemon that restarts under it, resumes consumption where the
// trainer acknowledged: no group lost, none delivered twice once acknowledged.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "replay/trajectory_log.h"
#include "rollout.pb.h"
#include "sandbox/base/status.h"

namespace paddock::rollout {

// Not thread-safe: the engine holds its rollout's lock around it.
class GroupTracker {
 public:
  void Reset(size_t tasks, uint32_t samples);
  // A sample of `task` ended for good; true when that completes its group.
  bool Ended(size_t task, int64_t unix_ms);
  size_t total() const { return remaining_.size(); }
  size_t done() const { return completed_.size(); }
  // (task index, when its last sample ended), in completion order.
  const std::vector<std::pair<size_t, int64_t>>& completed() const { return completed_; }

 private:
  std::vector<uint32_t> remaining_;
  std::vector<std::pair<size_t, int64_t>> completed_;
};

std::string GroupId(const std::string& rollout_id, const std::string& task_id);

// A group from its samples' summaries (any order; sorted by sample).
v1::EpisodeGroup MakeGroup(const std::string& rollout_id, const std::string& task_id,
                           std::vector<v1::EpisodeSummary> samples, int64_t completed_unix_ms);

// INVALID_ARGUMENT unless [A-Za-z0-9._-]{1,64}.
Status ValidConsumer(const std::string& consumer);

// The group ids `consumer` acknowledged for the rollout (empty if none).
Result<std::set<std::string>> LoadAcks(replay::TrajectoryLog& log, const std::string& rollout_id,
                                       const std::string& consumer);
// Adds `group_ids` to the consumer's acknowledged set (one synced write);
// returns (newly acknowledged, total). The caller serializes calls per consumer.
Result<std::pair<uint32_t, uint32_t>> StoreAcks(replay::TrajectoryLog& log, const std::string& rollout_id,
                                                const std::string& consumer,
                                                const std::vector<std::string>& group_ids);

}  // namespace paddock::rollout
