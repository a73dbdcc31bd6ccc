#include "rollout/service/log_service.h"

#include <spdlog/spdlog.h>

#include "rollout/service/sandbox_service.h"  // ToGrpc

namespace paddock::service {

namespace {

void ToProto(const replay::InDoubtCall& d, v1::InDoubtCallProto* p) {
  p->set_key(d.key.ToString());
  p->set_request_summary(d.request_summary);
  p->set_idempotent(d.idempotent);
  p->set_intent_unix_ms(d.intent_unix_ms);
}

}  // namespace

LogService::LogService(replay::TrajectoryLog& log, std::string log_dir, const BearerTokenAuth* auth)
    : log_(log), log_dir_(std::move(log_dir)), auth_(auth) {}

grpc::Status LogService::Authorize(const grpc::ServerContext& ctx) const {
  return auth_ ? auth_->Check(ctx) : grpc::Status::OK;
}

grpc::Status LogService::ListEpisodes(grpc::ServerContext* ctx, const v1::ListEpisodesRequest* req,
                                      v1::ListEpisodesResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  replay::ListEpisodesOptions o;
  o.prefix = req->prefix();
  o.limit = req->limit();
  auto list = log_.ListEpisodes(o);
  if (!list.ok()) return ToGrpc(list.status().Prefix("listing episodes"));
  for (auto& e : *list) *resp->add_episodes() = std::move(e);
  return grpc::Status::OK;
}

grpc::Status LogService::ShowEpisode(grpc::ServerContext* ctx, const v1::ShowEpisodeRequest* req,
                                     v1::ShowEpisodeResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->episode().empty())
    return ToGrpc(Error(Code::kInvalidArgument, "no episode given; `paddock log ls` lists them"));
  auto rec = log_.GetEpisode(req->episode());
  if (!rec.ok()) return ToGrpc(rec.status());
  if (rec->has_value()) {
    *resp->mutable_episode() = **rec;
  }
  auto steps = log_.ReadSteps(req->episode());
  if (!steps.ok()) return ToGrpc(steps.status());
  for (auto& s : *steps) *resp->add_steps() = std::move(s);
  auto doubt = log_.InDoubtCalls(req->episode());
  if (!doubt.ok()) return ToGrpc(doubt.status());
  for (const auto& d : *doubt) ToProto(d, resp->add_in_doubt());
  if (!resp->has_episode() && resp->steps_size() == 0 && resp->in_doubt_size() == 0)
    return ToGrpc(Error(Code::kNotFound, "episode '{}' is not in the log; `paddock log ls` lists episodes",
                        req->episode()));
  return grpc::Status::OK;
}

grpc::Status LogService::Export(grpc::ServerContext* ctx, const v1::ExportRequest* req,
                                grpc::ServerWriter<v1::ExportChunk>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (!req->format().empty() && req->format() != "jsonl")
    return ToGrpc(Error(Code::kInvalidArgument, "format '{}' is not known; the one format is jsonl",
                        req->format()));
  std::vector<std::string> episodes(req->episodes().begin(), req->episodes().end());
  if (episodes.empty()) {
    auto list = log_.ListEpisodes();
    if (!list.ok()) return ToGrpc(list.status().Prefix("listing episodes"));
    for (const auto& e : *list) episodes.push_back(e.episode_id());
  }
  for (const auto& ep : episodes) {
    auto lines = log_.ExportEpisodeJsonl(ep);
    if (!lines.ok()) return ToGrpc(lines.status().Prefix(fmt::format("exporting episode {}", ep)));
    v1::ExportChunk chunk;
    chunk.set_data(std::move(lines).value());
    if (!writer->Write(chunk))
      return {grpc::StatusCode::CANCELLED, "client went away during the export"};
  }
  return grpc::Status::OK;
}

grpc::Status LogService::Verify(grpc::ServerContext* ctx, const v1::VerifyRequest* req,
                                v1::VerifyResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  auto r = log_.Verify();
  if (!r.ok()) return ToGrpc(r.status().Prefix("verifying the log"));
  resp->set_ok(r->ok());
  resp->set_checksums_ok(r->checksums_ok);
  resp->set_checksum_error(r->checksum_error);
  for (const auto& f : r->corrupt_files) resp->add_corrupt_files(f);
  resp->set_format_version(r->format_version);
  resp->set_format_ok(r->format_ok);
  resp->set_format_error(r->format_error);
  resp->set_episodes(r->episodes);
  resp->set_steps(r->steps);
  resp->set_intents(r->intents);
  resp->set_results(r->results);
  for (const auto& d : r->in_doubt) ToProto(d, resp->add_in_doubt());
  resp->set_results_without_intent(r->results_without_intent);
  resp->set_undecodable_records(r->undecodable_records);
  for (const auto& p : r->problems) resp->add_problems(p);
  resp->set_report(r->ToString());
  return grpc::Status::OK;
}

grpc::Status LogService::Backup(grpc::ServerContext* ctx, const v1::BackupRequest* req,
                                v1::BackupResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (auth_)
    return ToGrpc(Error(Code::kPermissionDenied,
                        "a backup writes into a directory on the daemon's host, which only clients on its "
                        "unix socket may name"));
  if (req->dir().empty() || req->dir()[0] != '/')
    return ToGrpc(Error(Code::kInvalidArgument,
                        "backup dir '{}' must be an absolute path (the daemon resolves it)", req->dir()));
  auto id = log_.Backup(req->dir());
  if (!id.ok()) return ToGrpc(id.status().Prefix(fmt::format("backing up the log into {}", req->dir())));
  spdlog::info("backed up the trajectory log into {} (backup {})", req->dir(), *id);
  resp->set_dir(req->dir());
  resp->set_backup_id(*id);
  return grpc::Status::OK;
}

grpc::Status LogService::Restore(grpc::ServerContext* ctx, const v1::RestoreRequest* req,
                                 v1::RestoreResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  return ToGrpc(Error(Code::kFailedPrecondition,
                      "paddockd has the log at {} open; a restore replaces the database and needs "
                      "it closed. Stop paddockd, then start it with `paddockd --restore-log {} ...` "
                      "(it restores the latest backup in that directory before opening the log)",
                      log_dir_, req->dir().empty() ? "DIR" : req->dir()));
}

grpc::Status LogService::Compact(grpc::ServerContext* ctx, const v1::CompactRequest* req,
                                 v1::CompactResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  return ToGrpc(log_.Compact().Prefix("compacting the log"));
}

grpc::Status LogService::Prune(grpc::ServerContext* ctx, const v1::PruneRequest* req,
                               v1::PruneResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->older_than_seconds() == 0)
    return ToGrpc(Error(Code::kInvalidArgument, "older_than must be more than 0 seconds"));
  auto n = log_.DeleteEpisodesOlderThan(std::chrono::seconds(req->older_than_seconds()));
  if (!n.ok()) return ToGrpc(n.status().Prefix("pruning the log"));
  spdlog::info("pruned {} episodes older than {} s from the log", *n, req->older_than_seconds());
  resp->set_episodes_deleted(*n);
  return grpc::Status::OK;
}

}  // namespace paddock::service
