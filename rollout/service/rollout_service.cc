#include "rollout/service/rollout_service.h"

#include "rollout/service/sandbox_service.h"  // ToGrpc

namespace paddock::service {

namespace {
Status NeedId(const std::string& id, const char* what) {
  if (id.empty()) return Error(Code::kInvalidArgument, "no {} given; `paddock rollout ls` lists rollouts", what);
  return Status::Ok();
}
}  // namespace

RolloutService::RolloutService(rollout::RolloutEngine& engine, const BearerTokenAuth* auth)
    : engine_(engine), auth_(auth) {}

grpc::Status RolloutService::StartRollout(grpc::ServerContext* ctx, const v1::StartRolloutRequest* req,
                                          v1::StartRolloutResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->tasks_jsonl().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no tasks given (tasks_jsonl is empty)"));
  auto r = engine_.Start(*req, /*local_client=*/auth_ == nullptr);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                                   grpc::ServerWriter<v1::RolloutEvent>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  Status st = engine_.Watch(
      *req, [&](const v1::RolloutEvent& ev) { return writer->Write(ev); },
      [&] { return ctx->IsCancelled(); });
  return ToGrpc(st);
}

grpc::Status RolloutService::GetRollout(grpc::ServerContext* ctx, const v1::GetRolloutRequest* req,
                                        v1::RolloutProgress* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  auto r = engine_.Progress(req->rollout_id());
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::ListRollouts(grpc::ServerContext* ctx, const v1::ListRolloutsRequest* req,
                                          v1::ListRolloutsResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  auto r = engine_.List(req->limit());
  if (!r.ok()) return ToGrpc(r.status());
  for (auto& p : *r) *resp->add_rollouts() = std::move(p);
  return grpc::Status::OK;
}

grpc::Status RolloutService::GetEpisode(grpc::ServerContext* ctx, const v1::GetEpisodeRequest* req,
                                        v1::EpisodeDetail* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->episode_id().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no episode id given"));
  auto r = engine_.GetEpisode(req->episode_id());
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::ResumeRollout(grpc::ServerContext* ctx, const v1::ResumeRolloutRequest* req,
                                           v1::ResumeRolloutResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  auto r = engine_.Resume(*req, /*local_client=*/auth_ == nullptr);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::Cancel(grpc::ServerContext* ctx, const v1::CancelRolloutRequest* req,
                                    v1::CancelRolloutResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  auto r = engine_.Cancel(req->rollout_id(), req->episode_id());
  if (!r.ok()) return ToGrpc(r.status());
  resp->set_cancelled(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::Export(grpc::ServerContext* ctx, const v1::ExportRolloutRequest* req,
                                    grpc::ServerWriter<v1::ExportRolloutChunk>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  if (!req->format().empty() && req->format() != "jsonl")
    return ToGrpc(Error(Code::kInvalidArgument, "export format '{}' is not supported; use jsonl", req->format()));
  std::string buf;
  bool ok = true;
  auto flush = [&] {
    v1::ExportRolloutChunk c;
    c.set_data(std::move(buf));
    buf.clear();
    ok = writer->Write(c);
    return ok;
  };
  Status st = engine_.Export(req->rollout_id(), req->include_unfinished(), [&](const std::string& line) {
    buf += line;
    if (buf.size() >= (1 << 20)) return flush();
    return true;
  });
  if (!st.ok()) return ToGrpc(st);
  if (ok && !buf.empty()) flush();
  return grpc::Status::OK;
}

grpc::Status RolloutService::StreamGroups(grpc::ServerContext* ctx, const v1::StreamGroupsRequest* req,
                                          grpc::ServerWriter<v1::EpisodeGroup>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  Status st = engine_.StreamGroups(
      *req, [&](const v1::EpisodeGroup& g) { return writer->Write(g); }, [&] { return ctx->IsCancelled(); });
  return ToGrpc(st);
}

grpc::Status RolloutService::AckGroups(grpc::ServerContext* ctx, const v1::AckGroupsRequest* req,
                                       v1::AckGroupsResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  auto r = engine_.AckGroups(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::ForkEpisode(grpc::ServerContext* ctx, const v1::ForkEpisodeRequest* req,
                                         v1::ForkEpisodeResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->episode_id().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no episode id given"));
  auto r = engine_.Fork(*req, /*local_client=*/auth_ == nullptr);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutService::UpdatePolicy(grpc::ServerContext* ctx, const v1::UpdatePolicyRequest* req,
                                          v1::UpdatePolicyResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = NeedId(req->rollout_id(), "rollout id"); !st.ok()) return ToGrpc(st);
  if (req->weights_path().empty() && req->version().empty())
    return ToGrpc(Error(Code::kInvalidArgument, "give the weights to load (weights_path), a new version, or both"));
  if (req->weights_path().size() > 4096 || req->version().size() > 256)
    return ToGrpc(Error(Code::kInvalidArgument, "weights_path (4096 bytes) or version (256 bytes) too long"));
  auto r = engine_.UpdatePolicy(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

}  // namespace paddock::service
