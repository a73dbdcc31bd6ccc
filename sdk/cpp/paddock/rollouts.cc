#include "paddock/rollouts.h"

#include <grpcpp/grpcpp.h>

#include "paddock/grpc_call.h"
#include "rollout.grpc.pb.h"

namespace paddock::client {

using internal::FromGrpc;

struct RolloutsClient::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Rollouts::Stub> stub;

  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout) const {
    return internal::CallContext(options, timeout);
  }
  std::unique_ptr<grpc::ClientContext> Context() const { return Context(options.call_timeout); }
};

Result<RolloutsClient> RolloutsClient::Connect(ClientOptions options) {
  // Client::Connect checks that the daemon answers and explains when it does
  // not; the Rollouts stub then shares its channel.
  auto client = Client::Connect(std::move(options));
  if (!client.ok()) return client.status();
  auto impl = std::make_unique<Impl>();
  impl->channel = client->channel();
  impl->stub = v1::Rollouts::NewStub(impl->channel);
  impl->options = client->options();
  return RolloutsClient(std::move(impl));
}

RolloutsClient::RolloutsClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RolloutsClient::RolloutsClient(RolloutsClient&&) noexcept = default;
RolloutsClient& RolloutsClient::operator=(RolloutsClient&&) noexcept = default;
RolloutsClient::~RolloutsClient() = default;

Result<v1::StartRolloutResponse> RolloutsClient::Start(const v1::StartRolloutRequest& request) {
  v1::StartRolloutResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->StartRollout(ctx.get(), request, &resp)));
  return resp;
}

Status RolloutsClient::Watch(const std::string& rollout_id, uint32_t interval_ms, bool include_finished,
                             const std::function<bool(const v1::RolloutEvent&)>& on_event) {
  v1::WatchRequest req;
  req.set_rollout_id(rollout_id);
  req.set_interval_ms(interval_ms);
  req.set_include_finished(include_finished);
  auto ctx = impl_->Context(std::chrono::milliseconds(0));  // as long as the rollout runs
  auto reader = impl_->stub->Watch(ctx.get(), req);
  v1::RolloutEvent ev;
  while (reader->Read(&ev)) {
    if (!on_event(ev)) {
      ctx->TryCancel();
      reader->Finish();
      return Status::Ok();
    }
  }
  return FromGrpc(reader->Finish());
}

Result<v1::RolloutProgress> RolloutsClient::Get(const std::string& rollout_id) {
  v1::GetRolloutRequest req;
  req.set_rollout_id(rollout_id);
  v1::RolloutProgress resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->GetRollout(ctx.get(), req, &resp)));
  return resp;
}

Result<v1::ListRolloutsResponse> RolloutsClient::List(uint32_t limit) {
  v1::ListRolloutsRequest req;
  req.set_limit(limit);
  v1::ListRolloutsResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->ListRollouts(ctx.get(), req, &resp)));
  return resp;
}

Result<v1::EpisodeDetail> RolloutsClient::GetEpisode(const std::string& episode_id) {
  v1::GetEpisodeRequest req;
  req.set_episode_id(episode_id);
  v1::EpisodeDetail resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->GetEpisode(ctx.get(), req, &resp)));
  return resp;
}

Result<v1::ResumeRolloutResponse> RolloutsClient::Resume(const v1::ResumeRolloutRequest& request) {
  v1::ResumeRolloutResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->ResumeRollout(ctx.get(), request, &resp)));
  return resp;
}

Result<uint32_t> RolloutsClient::Cancel(const std::string& rollout_id, const std::string& episode_id) {
  v1::CancelRolloutRequest req;
  req.set_rollout_id(rollout_id);
  req.set_episode_id(episode_id);
  v1::CancelRolloutResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->Cancel(ctx.get(), req, &resp)));
  return resp.cancelled();
}

Status RolloutsClient::Export(const std::string& rollout_id, bool include_unfinished,
                              const std::function<bool(const std::string&)>& sink) {
  v1::ExportRolloutRequest req;
  req.set_rollout_id(rollout_id);
  req.set_format("jsonl");
  req.set_include_unfinished(include_unfinished);
  auto ctx = impl_->Context();
  auto reader = impl_->stub->Export(ctx.get(), req);
  v1::ExportRolloutChunk chunk;
  while (reader->Read(&chunk)) {
    if (!sink(chunk.data())) {
      ctx->TryCancel();
      reader->Finish();
      return Status::Ok();
    }
  }
  return FromGrpc(reader->Finish());
}

Status RolloutsClient::StreamGroups(const v1::StreamGroupsRequest& request,
                                    const std::function<bool(const v1::EpisodeGroup&)>& on_group) {
  auto ctx = impl_->Context(std::chrono::milliseconds(0));  // a followed stream lasts as long as the rollout
  auto reader = impl_->stub->StreamGroups(ctx.get(), request);
  v1::EpisodeGroup group;
  while (reader->Read(&group)) {
    if (!on_group(group)) {
      ctx->TryCancel();
      reader->Finish();
      return Status::Ok();
    }
  }
  return FromGrpc(reader->Finish());
}

Result<v1::ForkEpisodeResponse> RolloutsClient::Fork(const v1::ForkEpisodeRequest& request) {
  v1::ForkEpisodeResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->ForkEpisode(ctx.get(), request, &resp)));
  return resp;
}

Result<v1::UpdatePolicyResponse> RolloutsClient::UpdatePolicy(const v1::UpdatePolicyRequest& request) {
  v1::UpdatePolicyResponse resp;
  // Waits for generations in flight and the server's load: no call deadline.
  auto ctx = impl_->Context(std::chrono::milliseconds(0));
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->UpdatePolicy(ctx.get(), request, &resp)));
  return resp;
}

Result<v1::AckGroupsResponse> RolloutsClient::AckGroups(const std::string& rollout_id, const std::string& consumer,
                                                        const std::vector<std::string>& group_ids) {
  v1::AckGroupsRequest req;
  req.set_rollout_id(rollout_id);
  req.set_consumer(consumer);
  for (const auto& id : group_ids) req.add_group_ids(id);
  v1::AckGroupsResponse resp;
  auto ctx = impl_->Context();
  PADDOCK_RETURN_IF_ERROR(FromGrpc(impl_->stub->AckGroups(ctx.get(), req, &resp)));
  return resp;
}

}  // namespace paddock::client
