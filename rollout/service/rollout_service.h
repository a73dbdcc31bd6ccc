// The gRPC edge of the rollout engine (paddock.v1.Rollouts): validates,
// translates each call to a rollout::RolloutEngine method and its errors to
// gRPC statuses. No episode logic here.
#pragma once

#include "rollout.grpc.pb.h"
#include "rollout/engine/rollout_engine.h"
#include "rollout/service/auth.h"

namespace paddock::service {

class RolloutService final : public v1::Rollouts::Service {
 public:
  // `engine` must outlive the service. `auth` as for SandboxService (null on
  // the unix socket).
  explicit RolloutService(rollout::RolloutEngine& engine, const BearerTokenAuth* auth = nullptr);

  grpc::Status StartRollout(grpc::ServerContext* ctx, const v1::StartRolloutRequest* req,
                            v1::StartRolloutResponse* resp) override;
  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                     grpc::ServerWriter<v1::RolloutEvent>* writer) override;
  grpc::Status GetRollout(grpc::ServerContext* ctx, const v1::GetRolloutRequest* req,
                          v1::RolloutProgress* resp) override;
  grpc::Status ListRollouts(grpc::ServerContext* ctx, const v1::ListRolloutsRequest* req,
                            v1::ListRolloutsResponse* resp) override;
  grpc::Status GetEpisode(grpc::ServerContext* ctx, const v1::GetEpisodeRequest* req,
                          v1::EpisodeDetail* resp) override;
  grpc::Status ResumeRollout(grpc::ServerContext* ctx, const v1::ResumeRolloutRequest* req,
                             v1::ResumeRolloutResponse* resp) override;
  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::CancelRolloutRequest* req,
                      v1::CancelRolloutResponse* resp) override;
  grpc::Status Export(grpc::ServerContext* ctx, const v1::ExportRolloutRequest* req,
                      grpc::ServerWriter<v1::ExportRolloutChunk>* writer) override;
  grpc::Status StreamGroups(grpc::ServerContext* ctx, const v1::StreamGroupsRequest* req,
                            grpc::ServerWriter<v1::EpisodeGroup>* writer) override;
  grpc::Status AckGroups(grpc::ServerContext* ctx, const v1::AckGroupsRequest* req,
                         v1::AckGroupsResponse* resp) override;
  grpc::Status ForkEpisode(grpc::ServerContext* ctx, const v1::ForkEpisodeRequest* req,
                           v1::ForkEpisodeResponse* resp) override;
  grpc::Status UpdatePolicy(grpc::ServerContext* ctx, const v1::UpdatePolicyRequest* req,
                            v1::UpdatePolicyResponse* resp) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& ctx) const {
    return auth_ ? auth_->Check(ctx) : grpc::Status::OK;
  }

  rollout::RolloutEngine& engine_;
  const BearerTokenAuth* auth_;
};

}  // namespace paddock::service
