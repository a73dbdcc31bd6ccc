// The gRPC edge of the uniform sandbox API (paddock.v1.Sandboxes): validates
// each request, translates it to domain types, calls SandboxManager and maps
// paddock::Status codes one to one onto grpc::StatusCode. No sandbox logic here.
//
// Threading: this is the synchronous API. Exec blocks for as long as the
// command runs (up to its timeout), and the sync server gives every in-flight
// call its own thread from gRPC's pool (bounded by the ResourceQuota the daemon
// sets), so a slow exec never stalls another call. ExecStream's blocking
// ServerWriter::Write also gives natural back-pressure to a chatty command when
// the client reads slowly. The callback API would need the same pool for the
// blocking substrate calls plus a hand-written write queue, for no gain here.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "replay/idempotent_calls.h"
#include "sandbox.grpc.pb.h"
#include "sandbox/manager.h"
#include "rollout/service/auth.h"
#include "rollout/service/front_leases.h"

namespace paddock::service {

// Maps a domain status onto the gRPC status with the same code and message.
grpc::Status ToGrpc(const Status& st);

// The trajectory log's parts the sandbox API uses; shared by every listener's
// service instance (keyed calls on the unix socket and on TCP serialize
// against each other). Null members: the daemon runs without a log, and keyed
// calls and episode bindings are refused.
struct ReplayParts {
  replay::IdempotentCalls* calls = nullptr;
  replay::EpisodeBindings* bindings = nullptr;
  // For rebuilding an episode's sandbox from its snapshot (the calls after it).
  replay::TrajectoryLog* log = nullptr;
};

// What the daemon tells fronts that place sandboxes on it (rollout/fleet).
struct NodeParts {
  // The fronts' leases, checked on every call after the token; null: calls of
  // fronts are not leased.
  FrontLeases* leases = nullptr;
  // The images in its store, for image locality: names and ids ("sha256:<hex>").
  struct HeldImages {
    std::vector<std::string> names, ids;
  };
  std::function<HeldImages()> images;
  // Images fronts handed it (Images.Receive) that it fetched.
  std::function<uint64_t()> images_fetched;
  std::function<bool()> draining;                          // takes no new sandboxes
  // The static busybox sealed execs run (ExecRequest.sealed).
  std::string sealed_toolset = "/bin/busybox";
  // The rollout engine's episodes waiting for a slot (Stats.queued_episodes);
  // null: none reported.
  std::function<uint32_t()> queued_episodes;
};

class SandboxService final : public v1::Sandboxes::Service {
 public:
  // `auth`: when non-null, every call must pass it (the TCP listener's instance);
  // null for the unix socket. Both must outlive the service.
  explicit SandboxService(SandboxManager& manager, const BearerTokenAuth* auth = nullptr,
                          ReplayParts replay = {}, NodeParts node = {});

  grpc::Status Create(grpc::ServerContext* ctx, const v1::CreateRequest* req,
                      v1::CreateResponse* resp) override;
  grpc::Status Exec(grpc::ServerContext* ctx, const v1::ExecRequest* req,
                    v1::ExecResult* resp) override;
  grpc::Status ExecStream(grpc::ServerContext* ctx, const v1::ExecRequest* req,
                          grpc::ServerWriter<v1::ExecEvent>* writer) override;
  grpc::Status WriteFile(grpc::ServerContext* ctx, const v1::WriteFileRequest* req,
                         v1::WriteFileResponse* resp) override;
  grpc::Status ReadFile(grpc::ServerContext* ctx, const v1::ReadFileRequest* req,
                        v1::ReadFileResponse* resp) override;
  grpc::Status ListDir(grpc::ServerContext* ctx, const v1::ListDirRequest* req,
                       v1::ListDirResponse* resp) override;
  grpc::Status Stat(grpc::ServerContext* ctx, const v1::StatRequest* req,
                    v1::FileInfo* resp) override;
  grpc::Status Snapshot(grpc::ServerContext* ctx, const v1::SnapshotRequest* req,
                        v1::SnapshotResponse* resp) override;
  grpc::Status Pause(grpc::ServerContext* ctx, const v1::PauseRequest* req, v1::PauseResponse* resp) override;
  grpc::Status Resume(grpc::ServerContext* ctx, const v1::ResumeRequest* req, v1::ResumeResponse* resp) override;
  grpc::Status Fork(grpc::ServerContext* ctx, const v1::ForkRequest* req, v1::ForkResponse* resp) override;
  grpc::Status Destroy(grpc::ServerContext* ctx, const v1::DestroyRequest* req,
                       v1::DestroyResponse* resp) override;
  grpc::Status List(grpc::ServerContext* ctx, const v1::ListRequest* req,
                    v1::ListResponse* resp) override;
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                     v1::StatsResponse* resp) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& ctx) const;
  // Authorize, and the calling front's lease (its labels go on what it creates).
  Result<FrontCall> AuthorizeFront(const grpc::ServerContext& ctx, bool renew_lease = false) const;
  // The domain request; a sealed one gets the daemon's toolset.
  Result<ExecRequest> ToDomainExec(const v1::ExecRequest& req) const;
  // Validates an exec request and finds its sandbox.
  Result<std::shared_ptr<Sandbox>> PrepareExec(const v1::ExecRequest& req);
  // Validates the syntax of an exec request (no sandbox lookup).
  Status ValidateExec(const v1::ExecRequest& req) const;
  // Runs an exec, delivering chunks to `on_output` when set; the full result.
  Result<v1::ExecResult> RunExec(const v1::ExecRequest& req, const OutputCallback& on_output);
  // Keyed exec: through the log (see replay/idempotent_calls.h).
  Result<replay::CallOutcome> RunKeyedExec(const v1::ExecRequest& req, const OutputCallback& on_output);
  grpc::Status KeyedExecStream(const v1::ExecRequest& req, grpc::ServerWriter<v1::ExecEvent>* writer);
  Result<replay::CallKey> KeyOf(const v1::IdempotencyKey& k) const;
  // Creates the replacement of an episode's lost sandbox: from the episode's
  // latest snapshot when it has one, then the idempotent calls logged after
  // it run again (replay::PlanRebuild says which, or why it cannot be done).
  Result<SandboxInfo> RebuildEpisodeSandbox(SandboxSpec spec, const v1::EpisodeRecordProto& previous,
                                            replay::RebuildReport* report);

  SandboxManager& manager_;
  const BearerTokenAuth* auth_;
  ReplayParts replay_;
  NodeParts node_;
};

// MemAvailable of the host, from /proc/meminfo; 0 if unreadable.
uint64_t MemAvailableBytes();

// Resident set size of this process, from /proc/self/statm; 0 if unreadable.
uint64_t DaemonRssBytes();

}  // namespace paddock::service
