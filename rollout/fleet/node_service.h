// The gRPC edge of a front's fleet (paddock.v1.Nodes): `paddock node ls` and
// `paddock node drain`. A daemon without --nodes serves it too, answering
// FAILED_PRECONDITION, so the CLI can say what to do.
#pragma once

#include "node.grpc.pb.h"
#include "rollout/fleet/fleet.h"
#include "rollout/service/auth.h"

namespace paddock::fleet {

class NodeService final : public v1::Nodes::Service {
 public:
  // `fleet` may be null (not a front); `auth` as for the other services.
  NodeService(Fleet* fleet, const service::BearerTokenAuth* auth);
  grpc::Status List(grpc::ServerContext* ctx, const v1::NodeListRequest* req, v1::NodeListResponse* resp) override;
  grpc::Status Drain(grpc::ServerContext* ctx, const v1::NodeDrainRequest* req,
                     v1::NodeDrainResponse* resp) override;

 private:
  grpc::Status Check(const grpc::ServerContext& ctx) const;
  Fleet* fleet_;
  const service::BearerTokenAuth* auth_;
};

}  // namespace paddock::fleet
