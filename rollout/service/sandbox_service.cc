#include "rollout/service/sandbox_service.h"

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <cstdio>
#include <mutex>
#include <optional>

#include <spdlog/spdlog.h>

#include "proto/api_version.h"
#include "proto/convert.h"

namespace paddock::service {

namespace {

// Returns the gRPC form of `expr` from the enclosing handler when it failed.
#define PADDOCK_GRPC_RETURN_IF_ERROR(expr)   \
  do {                                       \
    ::paddock::Status _st = (expr);          \
    if (!_st.ok()) return ToGrpc(_st);       \
  } while (0)

Status ValidateId(const std::string& id) {
  if (id.empty())
    return Error(Code::kInvalidArgument,
                 "sandbox_id is empty; `paddock sandbox ls` lists sandboxes");
  return Status::Ok();
}

Status ValidateEnv(const google::protobuf::Map<std::string, std::string>& env) {
  for (const auto& [k, v] : env) {
    if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos)
      return Error(Code::kInvalidArgument,
                   "environment variable name '{}' is invalid; names are non-empty and contain "
                   "no '=' or NUL", k);
    if (v.find('\0') != std::string::npos)
      return Error(Code::kInvalidArgument, "environment variable {} contains a NUL byte", k);
  }
  return Status::Ok();
}

Status ValidateOptionalPath(const std::string& path, std::string_view what) {
  if (path.empty()) return Status::Ok();
  return ValidateSandboxPath(path).Prefix(what);
}

// The manager's SandboxInfo (sandbox/manager.h) keeps the whole spec; the API's
// carries its substrate, image, labels and limits.
void ToProto(const SandboxInfo& d, v1::SandboxInfo* p) {
  p->set_id(d.id);
  p->set_substrate(d.spec.substrate);
  p->set_image(d.spec.image);
  p->set_created_unix_ms(d.created_unix_ms);
  p->set_expires_unix_ms(d.expires_unix_ms);
  p->set_state(d.state);
  p->mutable_labels()->insert(d.spec.labels.begin(), d.spec.labels.end());
  v1conv::ToProto(d.spec.limits, p->mutable_limits());
}

}  // namespace

grpc::Status ToGrpc(const Status& st) {
  if (st.ok()) return grpc::Status::OK;
  // paddock::Code mirrors grpc::StatusCode value for value (see status.h).
  return {static_cast<grpc::StatusCode>(st.code()), st.message()};
}

uint64_t MemAvailableBytes() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
  std::fclose(f);
  return kib * 1024;
}

uint64_t DaemonRssBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

SandboxService::SandboxService(SandboxManager& manager, const BearerTokenAuth* auth,
                               ReplayParts replay, NodeParts node)
    : manager_(manager), auth_(auth), replay_(replay), node_(std::move(node)) {}

Result<replay::CallKey> SandboxService::KeyOf(const v1::IdempotencyKey& k) const {
  if (!replay_.calls)
    return Error(Code::kFailedPrecondition,
                 "this daemon runs without a trajectory log, so it cannot take idempotency keys; "
                 "paddockd opens one at <state-dir>/log (or --log-dir)");
  replay::CallKey key{k.episode(), k.step(), k.call()};
  PADDOCK_RETURN_IF_ERROR(key.Validate().Prefix("idempotency key"));
  return key;
}

Result<ExecRequest> SandboxService::ToDomainExec(const v1::ExecRequest& req) const {
  ExecRequest exec = v1conv::FromProto(req);
  if (!exec.sealed) return exec;
  // The toolset is read once; a sealed run is a verifier's, once per episode.
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const std::string>> toolsets;
  std::shared_ptr<const std::string> bytes;
  {
    std::lock_guard l(mu);
    auto& slot = toolsets[node_.sealed_toolset];
    if (!slot) {
      std::ifstream in(node_.sealed_toolset, std::ios::binary);
      std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (data.size() < 4 || data.compare(0, 4, "\x7f" "ELF") != 0)
        return Error(Code::kFailedPrecondition,
                     "a sealed exec needs this daemon's toolset, a static busybox at {}, which it cannot read "
                     "(install busybox-static)",
                     node_.sealed_toolset);
      slot = std::make_shared<const std::string>(std::move(data));
    }
    bytes = slot;
  }
  exec.trusted_program = *bytes;
  return exec;
}

grpc::Status SandboxService::Authorize(const grpc::ServerContext& ctx) const {
  auto front = AuthorizeFront(ctx);
  return front.ok() ? grpc::Status::OK : ToGrpc(front.status());
}

Result<FrontCall> SandboxService::AuthorizeFront(const grpc::ServerContext& ctx, bool renew_lease) const {
  if (auth_) {
    grpc::Status a = auth_->Check(ctx);
    if (!a.ok()) return Status(static_cast<Code>(a.error_code()), a.error_message());
  }
  if (!node_.leases) return FrontCall{};
  return node_.leases->Check(ctx, renew_lease);
}

grpc::Status SandboxService::Create(grpc::ServerContext* ctx, const v1::CreateRequest* req,
                                    v1::CreateResponse* resp) {
  auto front = AuthorizeFront(*ctx);
  if (!front.ok()) return ToGrpc(front.status());
  const v1::SandboxSpec& spec = req->spec();
  if (spec.substrate().empty()) {
    std::string known;
    for (const auto& n : manager_.SubstrateNames()) known += (known.empty() ? "" : ", ") + n;
    return ToGrpc(Error(Code::kInvalidArgument, "no substrate given; available: {}", known));
  }
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateEnv(spec.env()));
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateOptionalPath(spec.workdir(), "workdir"));
  if (!req->episode().empty()) {
    if (!replay_.bindings)
      return ToGrpc(Error(Code::kFailedPrecondition,
                          "this daemon runs without a trajectory log, so it cannot bind a sandbox "
                          "to episode {}; paddockd opens one at <state-dir>/log (or --log-dir)",
                          req->episode()));
    std::optional<SandboxInfo> created;
    auto binding = replay_.bindings->Bind(
        req->episode(), replay::IdentifySandboxSpec(spec),
        [&](const std::string& id) { return manager_.Get(id).ok(); },
        [&](const v1::EpisodeRecordProto* previous, replay::RebuildReport* report) -> Result<std::string> {
          SandboxSpec domain = v1conv::FromProto(spec);
          domain.host_dir_image_ok = auth_ == nullptr;  // the unix socket's clients only
          domain.local_client = auth_ == nullptr;
          domain.labels["paddock.episode"] = req->episode();
          auto info = previous ? RebuildEpisodeSandbox(domain, *previous, report) : manager_.Create(domain);
          if (!info.ok()) return info.status().Prefix("creating sandbox");
          created = *info;
          return info->id;
        });
    if (!binding.ok()) return ToGrpc(binding.status());
    auto info = created ? Result<SandboxInfo>(*created) : manager_.Info(binding->sandbox_id);
    if (!info.ok()) return ToGrpc(info.status());
    if (binding->reused)
      spdlog::info("episode {}: returned its bound sandbox {}", req->episode(), info->id);
    else if (binding->rebuilt)
      spdlog::info("episode {}: {}", req->episode(), binding->rebuild_note);
    else
      spdlog::info("episode {}: created {} sandbox {} from {}", req->episode(), spec.substrate(),
                   info->id, spec.image());
    ToProto(*info, resp->mutable_sandbox());
    resp->set_reused(binding->reused);
    resp->set_rebuilt(binding->rebuilt);
    resp->set_previous_sandbox_id(binding->previous_sandbox_id);
    return grpc::Status::OK;
  }
  SandboxSpec domain = v1conv::FromProto(spec);
  domain.host_dir_image_ok = auth_ == nullptr;  // the unix socket's clients only
  domain.local_client = auth_ == nullptr;        // pulls on first use may reach loopback registries
  domain.labels.erase(kFrontLabel);  // only a lease puts them there
  domain.labels.erase(kEpochLabel);
  if (!front->front.empty()) {
    domain.labels[kFrontLabel] = front->front;
    domain.labels[kEpochLabel] = std::to_string(front->epoch);
  }
  auto info = manager_.Create(domain);
  if (!info.ok()) return ToGrpc(info.status().Prefix("creating sandbox"));
  spdlog::info("created {} sandbox {} from {}", spec.substrate(), info->id, spec.image());
  ToProto(*info, resp->mutable_sandbox());
  return grpc::Status::OK;
}

Result<std::shared_ptr<Sandbox>> SandboxService::PrepareExec(const v1::ExecRequest& req) {
  PADDOCK_RETURN_IF_ERROR(ValidateExec(req));
  auto sb = manager_.Get(req.sandbox_id());
  if (sb.ok()) manager_.CountExec();
  return sb;
}

Status SandboxService::ValidateExec(const v1::ExecRequest& req) const {
  PADDOCK_RETURN_IF_ERROR(ValidateId(req.sandbox_id()));
  bool has_argv = req.argv_size() > 0;
  bool has_shell = !req.shell().empty();
  if (has_argv == has_shell)
    return Error(Code::kInvalidArgument,
                 "set exactly one of argv and shell (got {}); e.g. argv [\"ls\", \"-l\"] or "
                 "shell \"ls -l | wc -l\"",
                 has_argv ? "both" : "neither");
  if (has_argv && req.argv(0).empty())
    return Error(Code::kInvalidArgument, "argv[0] is empty; name the program to run");
  for (const auto& a : req.argv())
    if (a.find('\0') != std::string::npos)
      return Error(Code::kInvalidArgument, "an argv element contains a NUL byte");
  if (req.stdin().size() > kMaxFileBytes)
    return Error(Code::kResourceExhausted, "stdin is {} bytes; the limit is {} bytes",
                 req.stdin().size(), kMaxFileBytes);
  PADDOCK_RETURN_IF_ERROR(ValidateEnv(req.env()));
  PADDOCK_RETURN_IF_ERROR(ValidateOptionalPath(req.cwd(), "cwd"));
  return Status::Ok();
}

Result<replay::CallOutcome> SandboxService::RunKeyedExec(const v1::ExecRequest& req,
                                                        const OutputCallback& on_output) {
  PADDOCK_RETURN_IF_ERROR(ValidateExec(req));
  auto key = KeyOf(req.idempotency_key());
  if (!key.ok()) return key.status();
  std::shared_ptr<Sandbox> sb;
  return replay_.calls->Run(
      *key, req.idempotency_key().idempotent(), replay::IdentifyExec(req),
      [&]() -> Status {
        auto found = manager_.Get(req.sandbox_id());
        if (!found.ok()) return found.status();
        sb = *found;
        manager_.CountExec();
        return Status::Ok();
      },
      [&]() -> Result<std::string> {
        PADDOCK_ASSIGN_OR_RETURN(ExecRequest exec, ToDomainExec(req));
        exec.stream = static_cast<bool>(on_output);
        auto result = sb->Exec(exec, on_output);
        if (!result.ok()) return result.status();
        v1::ExecResult p;
        v1conv::ToProto(*result, &p);
        return p.SerializeAsString();
      },
      req.idempotency_key().idempotent() ? req.SerializeAsString() : std::string());
}

Result<SandboxInfo> SandboxService::RebuildEpisodeSandbox(SandboxSpec spec,
                                                          const v1::EpisodeRecordProto& previous,
                                                          replay::RebuildReport* report) {
  if (!replay_.log) return manager_.Create(spec);
  PADDOCK_ASSIGN_OR_RETURN(replay::RebuildPlan plan, replay::PlanRebuild(*replay_.log, previous));
  if (!plan.snapshot_image.empty()) {
    spec.image = plan.snapshot_image;
    report->from_snapshot = plan.snapshot_image;
    report->snapshot_step = plan.snapshot_step;
  }
  auto info = manager_.Create(spec);
  if (!info.ok()) {
    if (plan.snapshot_image.empty()) return info.status();
    return info.status().Prefix("creating a sandbox from the episode's snapshot " + plan.snapshot_image);
  }
  auto sb = manager_.Get(info->id);
  if (!sb.ok()) return sb.status();
  auto fail = [&](Status st) -> Status {
    Status ignored = manager_.Destroy(info->id);
    (void)ignored;
    return st;
  };
  for (const auto& [key, call] : plan.rerun) {
    std::string what = fmt::format("running call {} again on the rebuilt sandbox", key.ToString());
    if (replay::SummaryKind(call.request_summary) == "exec") {
      v1::ExecRequest r;
      if (!r.ParseFromString(call.request))
        return fail(Error(Code::kDataLoss, "the kept request of call {} does not parse", key.ToString()));
      auto exec = ToDomainExec(r);
      if (!exec.ok()) return fail(exec.status().Prefix(what));
      auto res = (*sb)->Exec(*exec, nullptr);
      if (!res.ok()) return fail(res.status().Prefix(what));
    } else {
      v1::WriteFileRequest r;
      if (!r.ParseFromString(call.request))
        return fail(Error(Code::kDataLoss, "the kept request of call {} does not parse", key.ToString()));
      Status st = (*sb)->WriteFile(r.path(), r.content(), r.mode() == 0 ? 0644 : r.mode(), r.make_parents());
      if (!st.ok()) return fail(st.Prefix(what));
    }
    report->rerun.push_back(key.ToString());
  }
  return info;
}

grpc::Status SandboxService::Exec(grpc::ServerContext* ctx, const v1::ExecRequest* req,
                                  v1::ExecResult* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->has_idempotency_key()) {
    auto out = RunKeyedExec(*req, nullptr);
    if (!out.ok()) return ToGrpc(out.status());
    if (!resp->ParseFromString(out->response))
      return ToGrpc(Error(Code::kDataLoss, "the logged result of call {}:{}:{} does not parse",
                          req->idempotency_key().episode(), req->idempotency_key().step(),
                          req->idempotency_key().call()));
    resp->set_replayed(out->replayed);
    return grpc::Status::OK;
  }
  auto sb = PrepareExec(*req);
  if (!sb.ok()) return ToGrpc(sb.status());
  auto exec = ToDomainExec(*req);
  if (!exec.ok()) return ToGrpc(exec.status());
  auto result = (*sb)->Exec(*exec, nullptr);
  if (!result.ok()) return ToGrpc(result.status());
  v1conv::ToProto(*result, resp);
  return grpc::Status::OK;
}

grpc::Status SandboxService::ExecStream(grpc::ServerContext* ctx, const v1::ExecRequest* req,
                                        grpc::ServerWriter<v1::ExecEvent>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->has_idempotency_key()) return KeyedExecStream(*req, writer);
  auto sb = PrepareExec(*req);
  if (!sb.ok()) return ToGrpc(sb.status());
  auto domain = ToDomainExec(*req);
  if (!domain.ok()) return ToGrpc(domain.status());
  ExecRequest exec = std::move(*domain);
  exec.stream = true;
  // The substrate may deliver stdout and stderr from different threads, and a
  // ServerWriter takes one Write at a time. A client that cancels the call or
  // goes away gets its command killed, as at a timeout: nobody would read
  // its output.
  std::mutex write_mu;
  std::atomic<bool> client_gone = false;
  exec.cancelled = [&] { return client_gone.load() || ctx->IsCancelled(); };
  OutputCallback on_output = [&](int stream, std::string_view chunk) {
    v1::ExecEvent ev;
    if (stream == 2) ev.set_stderr(chunk.data(), chunk.size());
    else ev.set_stdout(chunk.data(), chunk.size());
    std::lock_guard lock(write_mu);
    if (client_gone) return;
    if (!writer->Write(ev)) client_gone = true;
  };
  auto result = (*sb)->Exec(exec, on_output);
  if (!result.ok()) return ToGrpc(result.status());
  // The chunks already carried the output; the final event carries the rest.
  result->stdout_data.clear();
  result->stderr_data.clear();
  v1::ExecEvent last;
  v1conv::ToProto(*result, last.mutable_result());
  std::lock_guard lock(write_mu);
  if (client_gone || !writer->Write(last))
    return {grpc::StatusCode::CANCELLED, "client went away before the result was delivered"};
  return grpc::Status::OK;
}

// A keyed ExecStream: a live run streams as usual (and logs the whole
// result); a replay sends the logged output as one stdout and one stderr
// chunk, then the result.
grpc::Status SandboxService::KeyedExecStream(const v1::ExecRequest& req,
                                             grpc::ServerWriter<v1::ExecEvent>* writer) {
  std::mutex write_mu;
  bool client_gone = false;
  auto send = [&](const v1::ExecEvent& ev) {
    std::lock_guard lock(write_mu);
    if (client_gone) return;
    if (!writer->Write(ev)) client_gone = true;
  };
  OutputCallback on_output = [&](int stream, std::string_view chunk) {
    v1::ExecEvent ev;
    if (stream == 2) ev.set_stderr(chunk.data(), chunk.size());
    else ev.set_stdout(chunk.data(), chunk.size());
    send(ev);
  };
  auto out = RunKeyedExec(req, on_output);
  if (!out.ok()) return ToGrpc(out.status());
  v1::ExecEvent last;
  v1::ExecResult* result = last.mutable_result();
  if (!result->ParseFromString(out->response))
    return ToGrpc(Error(Code::kDataLoss, "the logged result of call {}:{}:{} does not parse",
                        req.idempotency_key().episode(), req.idempotency_key().step(),
                        req.idempotency_key().call()));
  if (out->replayed) {
    v1::ExecEvent ev;
    if (!result->stdout().empty()) {
      ev.set_stdout(result->stdout());
      send(ev);
    }
    if (!result->stderr().empty()) {
      ev.set_stderr(result->stderr());
      send(ev);
    }
  }
  result->clear_stdout();
  result->clear_stderr();
  result->set_replayed(out->replayed);
  send(last);
  std::lock_guard lock(write_mu);
  if (client_gone)
    return {grpc::StatusCode::CANCELLED, "client went away before the result was delivered"};
  return grpc::Status::OK;
}

grpc::Status SandboxService::WriteFile(grpc::ServerContext* ctx, const v1::WriteFileRequest* req,
                                       v1::WriteFileResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateSandboxPath(req->path()));
  if (req->content().size() > kMaxFileBytes)
    return ToGrpc(Error(Code::kResourceExhausted,
                        "content of {} is {} bytes; WriteFile takes at most {} bytes — split the "
                        "file or copy it in through the image",
                        req->path(), req->content().size(), kMaxFileBytes));
  if (req->mode() > 07777)
    return ToGrpc(Error(Code::kInvalidArgument,
                        "mode {:o} has bits beyond permission bits (07777)", req->mode()));
  uint32_t mode = req->mode() == 0 ? 0644 : req->mode();
  if (req->has_idempotency_key()) {
    auto key = KeyOf(req->idempotency_key());
    if (!key.ok()) return ToGrpc(key.status());
    std::shared_ptr<Sandbox> sb;
    auto out = replay_.calls->Run(
        *key, req->idempotency_key().idempotent(), replay::IdentifyWrite(*req),
        [&]() -> Status {
          auto found = manager_.Get(req->sandbox_id());
          if (!found.ok()) return found.status();
          sb = *found;
          return Status::Ok();
        },
        [&]() -> Result<std::string> {
          PADDOCK_RETURN_IF_ERROR(sb->WriteFile(req->path(), req->content(), mode, req->make_parents()));
          v1::WriteFileResponse r;
          r.set_bytes_written(req->content().size());
          return r.SerializeAsString();
        },
        req->idempotency_key().idempotent() ? req->SerializeAsString() : std::string());
    if (!out.ok()) return ToGrpc(out.status());
    if (!resp->ParseFromString(out->response))
      return ToGrpc(Error(Code::kDataLoss, "the logged result of call {} does not parse",
                          key->ToString()));
    resp->set_replayed(out->replayed);
    return grpc::Status::OK;
  }
  auto sb = manager_.Get(req->sandbox_id());
  if (!sb.ok()) return ToGrpc(sb.status());
  PADDOCK_GRPC_RETURN_IF_ERROR(
      (*sb)->WriteFile(req->path(), req->content(), mode, req->make_parents()));
  resp->set_bytes_written(req->content().size());
  return grpc::Status::OK;
}

grpc::Status SandboxService::ReadFile(grpc::ServerContext* ctx, const v1::ReadFileRequest* req,
                                      v1::ReadFileResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateSandboxPath(req->path()));
  uint64_t max_bytes = req->max_bytes() == 0 ? kDefaultReadCap : req->max_bytes();
  if (max_bytes > kMaxFileBytes)
    return ToGrpc(Error(Code::kInvalidArgument, "max_bytes {} exceeds the limit of {} bytes",
                        max_bytes, kMaxFileBytes));
  auto sb = manager_.Get(req->sandbox_id());
  if (!sb.ok()) return ToGrpc(sb.status());
  auto content = (*sb)->ReadFile(req->path(), max_bytes);
  if (!content.ok()) return ToGrpc(content.status());
  *resp->mutable_content() = std::move(content).value();
  return grpc::Status::OK;
}

grpc::Status SandboxService::ListDir(grpc::ServerContext* ctx, const v1::ListDirRequest* req,
                                     v1::ListDirResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateSandboxPath(req->path()));
  auto sb = manager_.Get(req->sandbox_id());
  if (!sb.ok()) return ToGrpc(sb.status());
  auto entries = (*sb)->ListDir(req->path());
  if (!entries.ok()) return ToGrpc(entries.status());
  for (const auto& e : *entries) v1conv::ToProto(e, resp->add_entries());
  return grpc::Status::OK;
}

grpc::Status SandboxService::Stat(grpc::ServerContext* ctx, const v1::StatRequest* req,
                                  v1::FileInfo* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateSandboxPath(req->path()));
  auto sb = manager_.Get(req->sandbox_id());
  if (!sb.ok()) return ToGrpc(sb.status());
  auto info = (*sb)->Stat(req->path());
  if (!info.ok()) return ToGrpc(info.status());
  v1conv::ToProto(*info, resp);
  return grpc::Status::OK;
}

grpc::Status SandboxService::Snapshot(grpc::ServerContext* ctx, const v1::SnapshotRequest* req,
                                      v1::SnapshotResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  auto sb = manager_.Get(req->sandbox_id());
  if (!sb.ok()) return ToGrpc(sb.status());
  auto r = (*sb)->Snapshot(req->name());
  if (!r.ok()) return ToGrpc(r.status());
  resp->set_image(r->image);
  resp->set_name(r->name);
  resp->set_layer(r->layer);
  resp->set_layer_bytes(r->layer_bytes);
  spdlog::info("snapshot of sandbox {}: image {}{}", req->sandbox_id(), r->image,
               r->name.empty() ? "" : " (" + r->name + ")");
  // A sandbox bound to an episode: the snapshot becomes where a rebuild of the
  // episode's sandbox starts, after the last step logged so far.
  auto info = manager_.Info(req->sandbox_id());
  std::string episode;
  if (info.ok()) {
    auto it = info->spec.labels.find("paddock.episode");
    if (it != info->spec.labels.end()) episode = it->second;
  }
  if (!episode.empty() && replay_.bindings && replay_.log) {
    auto calls = replay_.log->ListCalls(episode);
    if (!calls.ok()) return ToGrpc(calls.status().Prefix("snapshot committed, but reading episode " + episode));
    uint64_t step = 0;
    for (const auto& [key, call] : *calls)
      if (call.has_result) step = std::max(step, key.step);
    Status st = replay_.bindings->RecordSnapshot(episode, req->sandbox_id(), r->image, step);
    if (!st.ok())
      return ToGrpc(st.Prefix(fmt::format("snapshot {} committed, but recording it for episode {}",
                                          r->image, episode)));
    spdlog::info("episode {}: latest snapshot {} after step {}", episode, r->image, step);
  }
  return grpc::Status::OK;
}

namespace {
int64_t MillisSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

grpc::Status SandboxService::Pause(grpc::ServerContext* ctx, const v1::PauseRequest* req, v1::PauseResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  const auto t0 = std::chrono::steady_clock::now();
  auto r = manager_.Pause(req->sandbox_id());
  if (!r.ok()) return ToGrpc(r.status());
  resp->set_state_bytes(r->state_bytes);
  resp->set_pause_ms(MillisSince(t0));
  spdlog::info("paused sandbox {} ({} bytes saved)", req->sandbox_id(), r->state_bytes);
  return grpc::Status::OK;
}

grpc::Status SandboxService::Resume(grpc::ServerContext* ctx, const v1::ResumeRequest* req,
                                    v1::ResumeResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  const auto t0 = std::chrono::steady_clock::now();
  PADDOCK_GRPC_RETURN_IF_ERROR(manager_.Resume(req->sandbox_id()));
  resp->set_resume_ms(MillisSince(t0));
  spdlog::info("resumed sandbox {}", req->sandbox_id());
  return grpc::Status::OK;
}

grpc::Status SandboxService::Fork(grpc::ServerContext* ctx, const v1::ForkRequest* req, v1::ForkResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  const auto t0 = std::chrono::steady_clock::now();
  auto r = manager_.Fork(req->sandbox_id(), req->count());
  if (!r.ok()) return ToGrpc(r.status());
  for (const auto& info : *r) ToProto(info, resp->add_sandboxes());
  resp->set_fork_ms(MillisSince(t0));
  spdlog::info("forked sandbox {} into {}", req->sandbox_id(), r->size());
  return grpc::Status::OK;
}

grpc::Status SandboxService::Destroy(grpc::ServerContext* ctx, const v1::DestroyRequest* req,
                                     v1::DestroyResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  PADDOCK_GRPC_RETURN_IF_ERROR(ValidateId(req->sandbox_id()));
  PADDOCK_GRPC_RETURN_IF_ERROR(manager_.Destroy(req->sandbox_id()));
  spdlog::info("destroyed sandbox {}", req->sandbox_id());
  return grpc::Status::OK;
}

grpc::Status SandboxService::List(grpc::ServerContext* ctx, const v1::ListRequest* req,
                                  v1::ListResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  for (const auto& info : manager_.List()) ToProto(info, resp->add_sandboxes());
  return grpc::Status::OK;
}

grpc::Status SandboxService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                                   v1::StatsResponse* resp) {
  // A front's heartbeat: renews its lease (front_leases.h).
  if (auto a = AuthorizeFront(*ctx, /*renew_lease=*/true); !a.ok()) return ToGrpc(a.status());
  if (!req->sandbox_id().empty()) {
    auto sb = manager_.Get(req->sandbox_id());
    if (!sb.ok()) return ToGrpc(sb.status());
    auto usage = (*sb)->GetUsage();
    if (!usage.ok()) return ToGrpc(usage.status().Prefix("reading usage"));
    v1conv::ToProto(*usage, resp->mutable_usage());
  }
  resp->set_live_sandboxes(manager_.live());
  resp->set_max_sandboxes(manager_.max_sandboxes());
  for (const auto& [name, n] : manager_.CountBySubstrate()) (*resp->mutable_by_substrate())[name] = n;
  resp->set_execs_total(manager_.execs_total());
  resp->set_daemon_rss_bytes(DaemonRssBytes());
  resp->set_api_version(kApiVersion);
  resp->set_version(kPaddockVersion);
  for (const auto& n : manager_.UsableSubstrateNames()) resp->add_substrates(n);
  resp->set_mem_available_bytes(MemAvailableBytes());
  resp->set_cpus(static_cast<uint32_t>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))));
  resp->set_draining(node_.draining && node_.draining());
  if (node_.queued_episodes) resp->set_queued_episodes(node_.queued_episodes());
  if (node_.leases) resp->set_front_lease_ms(static_cast<uint32_t>(node_.leases->lease().count()));
  if (node_.images) {
    NodeParts::HeldImages held = node_.images();
    for (size_t i = 0; i < held.names.size() && i < 256; ++i) resp->add_images(held.names[i]);
    for (size_t i = 0; i < held.ids.size() && i < 256; ++i) resp->add_image_ids(held.ids[i]);
  }
  if (node_.images_fetched) resp->set_images_fetched(node_.images_fetched());
  return grpc::Status::OK;
}

}  // namespace paddock::service
