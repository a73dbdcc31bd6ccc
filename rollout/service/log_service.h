// The gRPC edge of the trajectory log's maintenance API (paddock.v1.Log):
// translates each call to a replay::TrajectoryLog method and its errors to
// gRPC statuses. No log logic here.
#pragma once

#include "log.grpc.pb.h"
#include "replay/trajectory_log.h"
#include "rollout/service/auth.h"

namespace paddock::service {

class LogService final : public v1::Log::Service {
 public:
  // `log`: the daemon's open log (must outlive the service). `log_dir`: where
  // it lives, for messages. `auth` as for SandboxService.
  LogService(replay::TrajectoryLog& log, std::string log_dir, const BearerTokenAuth* auth = nullptr);

  grpc::Status ListEpisodes(grpc::ServerContext* ctx, const v1::ListEpisodesRequest* req,
                            v1::ListEpisodesResponse* resp) override;
  grpc::Status ShowEpisode(grpc::ServerContext* ctx, const v1::ShowEpisodeRequest* req,
                           v1::ShowEpisodeResponse* resp) override;
  grpc::Status Export(grpc::ServerContext* ctx, const v1::ExportRequest* req,
                      grpc::ServerWriter<v1::ExportChunk>* writer) override;
  grpc::Status Verify(grpc::ServerContext* ctx, const v1::VerifyRequest* req,
                      v1::VerifyResponse* resp) override;
  grpc::Status Backup(grpc::ServerContext* ctx, const v1::BackupRequest* req,
                      v1::BackupResponse* resp) override;
  grpc::Status Restore(grpc::ServerContext* ctx, const v1::RestoreRequest* req,
                       v1::RestoreResponse* resp) override;
  grpc::Status Compact(grpc::ServerContext* ctx, const v1::CompactRequest* req,
                       v1::CompactResponse* resp) override;
  grpc::Status Prune(grpc::ServerContext* ctx, const v1::PruneRequest* req,
                     v1::PruneResponse* resp) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& ctx) const;

  replay::TrajectoryLog& log_;
  std::string log_dir_;
  const BearerTokenAuth* auth_;
};

}  // namespace paddock::service
