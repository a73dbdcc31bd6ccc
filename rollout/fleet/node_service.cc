#include "rollout/fleet/node_service.h"

#include "rollout/service/sandbox_service.h"

namespace paddock::fleet {

namespace {

void ToProto(const NodeStatus& s, v1::NodeInfo* p) {
  p->set_address(s.address);
  p->set_state(s.state);
  p->set_detail(s.detail);
  for (const auto& x : s.substrates) p->add_substrates(x);
  p->set_live_sandboxes(s.live);
  p->set_max_sandboxes(s.max);
  p->set_placed(s.placed);
  p->set_placed_total(s.placed_total);
  p->set_mem_available_bytes(s.mem_available_bytes);
  p->set_cpus(s.cpus);
  p->set_version(s.version);
  p->set_api_version(s.api_version);
  p->set_images(s.images);
  p->set_last_heartbeat_unix_ms(s.last_heartbeat_unix_ms);
}

}  // namespace

NodeService::NodeService(Fleet* fleet, const service::BearerTokenAuth* auth) : fleet_(fleet), auth_(auth) {}

grpc::Status NodeService::Check(const grpc::ServerContext& ctx) const {
  if (auth_) {
    if (auto a = auth_->Check(ctx); !a.ok()) return a;
  }
  if (!fleet_)
    return service::ToGrpc(Error(Code::kFailedPrecondition,
                                 "this paddockd places no sandboxes on other nodes: it is a front only when "
                                 "started with --nodes SPEC (see `paddockd --help`)"));
  return grpc::Status::OK;
}

grpc::Status NodeService::List(grpc::ServerContext* ctx, const v1::NodeListRequest*, v1::NodeListResponse* resp) {
  if (auto a = Check(*ctx); !a.ok()) return a;
  for (const NodeStatus& s : fleet_->List()) ToProto(s, resp->add_nodes());
  resp->set_front_id(fleet_->front_id());
  resp->set_epoch(fleet_->epoch());
  return grpc::Status::OK;
}

grpc::Status NodeService::Drain(grpc::ServerContext* ctx, const v1::NodeDrainRequest* req,
                                v1::NodeDrainResponse* resp) {
  if (auto a = Check(*ctx); !a.ok()) return a;
  auto s = fleet_->Drain(req->address());
  if (!s.ok()) return service::ToGrpc(s.status());
  ToProto(*s, resp->mutable_node());
  return grpc::Status::OK;
}

}  // namespace paddock::fleet
