#include "paddock/rollouts.h"

#include <grpcpp/grpcpp.h>

#include "rollout.grpc.pb.h"

namespace paddock::client {

namespace {

Status FromGrpc(const grpc::Status& st) {
  if (st.ok()) return Status::Ok();
  int code = st.error_code();
  if (code < 0 || code > static_cast<int>(Code::kUnauthenticated)) return Status(Code::kUnknown, st.error_message());
  return Status(static_cast<Code>(code), st.error_message());
}

}  // namespace

struct RolloutsClient::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Rollouts::Stub> stub;

  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (timeout.count() > 0) ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    if (!options.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options.token);
    return ctx;
  }
  std::unique_ptr<grpc::ClientContext> Context() const { return Context(options.call_timeout); }
};

Result<RolloutsClient> RolloutsClient::Connect(ClientOptions options) {
  // Client::Connect checks that the daemon answers and explains when it does not.
  auto probe = Client::Connect(options);
  if (!probe.ok()) return probe.status();
  auto impl = std::make_unique<Impl>();
  bool tcp = !options.tcp_target.empty();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(128 << 20);
  args.SetMaxSendMessageSize(128 << 20);
  impl->channel = grpc::CreateCustomChannel(tcp ? options.tcp_target : "unix:" + options.socket_path,
                                            grpc::InsecureChannelCredentials(), args);
  impl->stub = v1::Rollouts::NewStub(impl->channel);
  impl->options = std::move(options);
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

}  // namespace paddock::client
