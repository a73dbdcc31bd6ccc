// The C++ client of paddockd's Rollouts API (proto/rollout.proto): start a
// rollout of tasks against a policy, watch it, fetch episodes, resume,
// cancel and export. Messages are the generated paddock::v1 types (they are
// the API's documented shapes); errors are paddock::Status with the daemon's
// code and message.
//
//   auto c = paddock::client::RolloutsClient::Connect({});
//   v1::StartRolloutRequest req;  req.set_tasks_jsonl(text);  ...
//   auto started = c->Start(req);
//   c->Watch(started->rollout_id(), 1000, [](const v1::RolloutEvent& ev) { ...; return true; });
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "paddock/client.h"
#include "rollout.pb.h"
#include "sandbox/base/status.h"

namespace paddock::client {

class RolloutsClient {
 public:
  // Connects like Client::Connect (unix socket, or TCP with a token).
  static Result<RolloutsClient> Connect(ClientOptions options = {});
  RolloutsClient(RolloutsClient&&) noexcept;
  RolloutsClient& operator=(RolloutsClient&&) noexcept;
  ~RolloutsClient();

  Result<v1::StartRolloutResponse> Start(const v1::StartRolloutRequest& request);
  // Calls `on_event` for each event until the rollout stops running or it
  // returns false.
  Status Watch(const std::string& rollout_id, uint32_t interval_ms, bool include_finished,
               const std::function<bool(const v1::RolloutEvent&)>& on_event);
  Result<v1::RolloutProgress> Get(const std::string& rollout_id);
  Result<v1::ListRolloutsResponse> List(uint32_t limit = 0);
  Result<v1::EpisodeDetail> GetEpisode(const std::string& episode_id);
  Result<v1::ResumeRolloutResponse> Resume(const v1::ResumeRolloutRequest& request);
  Result<uint32_t> Cancel(const std::string& rollout_id, const std::string& episode_id = "");
  // Streams the JSON lines to `sink`.
  Status Export(const std::string& rollout_id, bool include_unfinished,
                const std::function<bool(const std::string&)>& sink);
  // Calls `on_group` for each complete group (Rollouts.StreamGroups) until
  // the stream ends or it returns false.
  Status StreamGroups(const v1::StreamGroupsRequest& request,
                      const std::function<bool(const v1::EpisodeGroup&)>& on_group);
  Result<v1::ForkEpisodeResponse> Fork(const v1::ForkEpisodeRequest& request);
  Result<v1::UpdatePolicyResponse> UpdatePolicy(const v1::UpdatePolicyRequest& request);
  Result<v1::AckGroupsResponse> AckGroups(const std::string& rollout_id, const std::string& consumer,
                                          const std::vector<std::string>& group_ids);

 private:
  struct Impl;
  explicit RolloutsClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace paddock::client
