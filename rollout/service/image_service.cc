#include "rollout/service/image_service.h"

#include <sys/stat.h>

#include <filesystem>

#include <spdlog/spdlog.h>

#include "rollout/service/sandbox_service.h"
#include "sandbox/image_view.h"
#include "storage/image_import.h"
#include "storage/registry/credentials.h"
#include "storage/registry/pull.h"
#include "storage/registry/push.h"
#include "policy/backends/tls.h"

namespace paddock::service {

namespace {

// Paths name files on the daemon's host; a relative one would be resolved
// against the daemon's working directory, which is never what a user meant.
// Only a client on the daemon's unix socket (a user of the daemon's host) may
// name them: over TCP they would read or write the daemon's files.
Status CheckHostPath(const std::string& path, const char* what, bool remote) {
  if (remote)
    return Error(Code::kPermissionDenied,
                 "a {} names a path on the daemon's host, which only clients on its unix socket may "
                 "do; over TCP use images already in the store (or a registry)",
                 what);
  if (path.empty()) return Error(Code::kInvalidArgument, "no {} given", what);
  if (path[0] != '/')
    return Error(Code::kInvalidArgument,
                 "{} '{}' is not absolute; the daemon reads it on its own host, so pass an "
                 "absolute path (the CLI does this for you)",
                 what, path);
  if (path.find('\0') != std::string::npos) return Error(Code::kInvalidArgument, "{} contains a NUL byte", what);
  return Status::Ok();
}

std::vector<std::string> NamesOf(storage::ImageStore& store, const storage::Digest& d) {
  auto img = store.Get(d.str());
  return img.ok() ? img->names : std::vector<std::string>{};
}

}  // namespace

grpc::Status ImageService::Import(grpc::ServerContext* ctx, const v1::ImportRequest* req,
                                  grpc::ServerWriter<v1::ImportEvent>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = CheckHostPath(req->path(), "archive path", auth_ != nullptr); !st.ok()) return ToGrpc(st);
  struct stat st;
  if (stat(req->path().c_str(), &st) != 0)
    return ToGrpc(ErrnoError(fmt::format("image archive {}", req->path())));
  storage::ImportOptions opts;
  if (!req->name().empty()) {
    auto n = storage::ImageStore::NormalizeName(req->name());
    if (!n.ok()) return ToGrpc(n.status());
    opts.names.push_back(*n);
  }
  v1::ImportEvent ev;
  ev.mutable_progress()->set_phase("reading");
  ev.mutable_progress()->set_message(fmt::format("reading {} ({} bytes)", req->path(), st.st_size));
  writer->Write(ev);
  auto r = storage::ImportImage(store_, req->path(), opts);
  if (!r.ok()) return ToGrpc(r.status().Prefix("importing " + req->path()));
  ev.Clear();
  ev.mutable_progress()->set_phase("committed");
  ev.mutable_progress()->set_message(fmt::format("{} layers, {} new, {} bytes written", r->layers_total,
                                                 r->layers_new, r->bytes_committed));
  writer->Write(ev);
  ev.Clear();
  auto* res = ev.mutable_result();
  for (const auto& d : r->images) {
    res->add_images(d.str());
    for (const auto& n : NamesOf(store_, d)) res->add_names(n);
  }
  res->set_layers_total(r->layers_total);
  res->set_layers_new(r->layers_new);
  res->set_bytes_committed(r->bytes_committed);
  writer->Write(ev);
  spdlog::info("imported {}: {} image(s), {} new layers, {} bytes", req->path(), r->images.size(),
               r->layers_new, r->bytes_committed);
  return grpc::Status::OK;
}

grpc::Status ImageService::ImportDir(grpc::ServerContext* ctx, const v1::ImportDirRequest* req,
                                     v1::ImportDirResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (Status st = CheckHostPath(req->path(), "directory", auth_ != nullptr); !st.ok()) return ToGrpc(st);
  std::error_code ec;
  std::string canonical = std::filesystem::weakly_canonical(req->path(), ec).string();
  if (ec) return ToGrpc(Error(Code::kInvalidArgument, "directory '{}': {}", req->path(), ec.message()));
  if (Status st = RefuseSystemDirectory(canonical, req->path()); !st.ok()) return ToGrpc(st);
  storage::ImageConfig config;
  for (const auto& kv : req->env()) {
    if (kv.find('=') == std::string::npos || kv[0] == '=')
      return ToGrpc(Error(Code::kInvalidArgument, "env '{}' is not KEY=value", kv));
    config.env.push_back(kv);
  }
  if (!req->workdir().empty() && req->workdir()[0] != '/')
    return ToGrpc(Error(Code::kInvalidArgument, "workdir '{}' must be absolute", req->workdir()));
  config.cwd = req->workdir();
  std::vector<std::string> names;
  if (!req->name().empty()) {
    auto n = storage::ImageStore::NormalizeName(req->name());
    if (!n.ok()) return ToGrpc(n.status());
    names.push_back(*n);
  }
  auto r = storage::ImportDirectory(store_, req->path(), config, names);
  if (!r.ok()) return ToGrpc(r.status().Prefix("importing directory " + req->path()));
  resp->set_image(r->image.str());
  for (const auto& n : NamesOf(store_, r->image)) resp->add_names(n);
  resp->set_skipped_special(r->skipped_special);
  spdlog::info("imported directory {} as {}", req->path(), r->image.str());
  return grpc::Status::OK;
}

grpc::Status ImageService::List(grpc::ServerContext* ctx, const v1::ImageListRequest*,
                                v1::ImageListResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  auto list = store_.List();
  if (!list.ok()) return ToGrpc(list.status());
  for (const auto& s : *list) {
    auto* o = resp->add_images();
    o->set_digest(s.digest.str());
    for (const auto& n : s.names) o->add_names(n);
    o->set_layers(static_cast<uint32_t>(s.layers));
    o->set_stored_bytes(s.stored_bytes);
  }
  if (options_.memory_snapshots)
    for (const auto& [image, bytes] : options_.memory_snapshots()) {
      auto* o = resp->add_images();
      o->set_digest(image);
      o->add_names(image);
      o->set_stored_bytes(bytes);
    }
  return grpc::Status::OK;
}

grpc::Status ImageService::Inspect(grpc::ServerContext* ctx, const v1::InspectRequest* req,
                                   v1::ImageDetail* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->ref().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no image given"));
  auto img = store_.Get(req->ref());
  if (!img.ok()) return ToGrpc(img.status());
  resp->set_digest(img->digest.str());
  for (const auto& n : img->names) resp->add_names(n);
  for (const auto& l : img->manifest.layers) {
    auto* o = resp->add_layers();
    o->set_diff_id(l.diff_id.str());
    o->set_blob(l.blob.str());
    o->set_compression(storage::CompressionName(l.compression));
    o->set_size(l.size);
    o->set_uncompressed_size(l.uncompressed_size);
    o->set_materialized(cache_ && cache_->Contains(l.diff_id));
  }
  for (const auto& e : img->config.env) resp->add_env(e);
  resp->set_workdir(img->config.cwd);
  for (const auto& e : img->config.entrypoint) resp->add_entrypoint(e);
  for (const auto& e : img->config.cmd) resp->add_cmd(e);
  resp->set_user(img->config.user);
  resp->set_config_digest(img->manifest.config.str());
  return grpc::Status::OK;
}

grpc::Status ImageService::Remove(grpc::ServerContext* ctx, const v1::RemoveImageRequest* req,
                                  v1::RemoveImageResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->ref().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no image given"));
  if (req->ref().rfind(kMemorySnapshotPrefix, 0) == 0) {
    if (!options_.remove_memory_snapshot)
      return ToGrpc(Error(Code::kNotFound, "this daemon keeps no microVM memory snapshots"));
    auto freed = options_.remove_memory_snapshot(req->ref());  // the substrate logs it
    if (!freed.ok()) return ToGrpc(freed.status());
    resp->set_image(req->ref());
    return grpc::Status::OK;
  }
  auto d = store_.Resolve(req->ref());
  if (!d.ok()) return ToGrpc(d.status());
  if (Status st = store_.Remove(req->ref()); !st.ok()) return ToGrpc(st);
  resp->set_image(d->str());
  spdlog::info("removed image {} ({})", req->ref(), d->str());
  return grpc::Status::OK;
}

grpc::Status ImageService::Gc(grpc::ServerContext* ctx, const v1::GcRequest* req, v1::GcResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  storage::GcOptions opts;
  if (req->grace_seconds() >= 0) opts.grace = std::chrono::seconds(req->grace_seconds());
  auto r = store_.Gc(opts);
  if (!r.ok()) return ToGrpc(r.status());
  resp->set_blobs_removed(r->blobs_removed);
  resp->set_bytes_freed(r->bytes_freed);
  resp->set_staging_removed(r->staging_removed);
  spdlog::info("image gc: {} blobs, {} bytes freed", r->blobs_removed, r->bytes_freed);
  return grpc::Status::OK;
}

grpc::Status ImageService::Export(grpc::ServerContext* ctx, const v1::ExportImageRequest* req,
                                  v1::ExportImageResponse* resp) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->ref().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no image given"));
  if (Status st = CheckHostPath(req->dir(), "output directory", auth_ != nullptr); !st.ok()) return ToGrpc(st);
  auto d = store_.Resolve(req->ref());
  if (!d.ok()) return ToGrpc(d.status());
  if (Status st = storage::ExportOci(store_, d->str(), req->dir()); !st.ok())
    return ToGrpc(st.Prefix(fmt::format("exporting {} to {}", req->ref(), req->dir())));
  resp->set_image(d->str());
  return grpc::Status::OK;
}

namespace {

namespace reg = storage::registry;

// What a Pull and a Push share: plain-HTTP and loopback rules, the CA file,
// deadlines, cancellation and the caller's credentials.
Result<reg::RegistryOptions> RegistryOptionsFor(grpc::ServerContext* ctx, bool remote, const ImageServiceOptions& o,
                                                const google::protobuf::RepeatedPtrField<std::string>& insecure,
                                                const std::string& ca_file, const v1::RegistryCredentials& creds) {
  reg::RegistryOptions opts;
  opts.request_timeout = o.registry_request_timeout;
  opts.http.idle_timeout = o.registry_idle_timeout;
  // A TCP client must not turn the daemon into a client of its own host's
  // services, nor lift the TLS requirement: loopback registries and
  // --insecure-registry are for clients on the unix socket.
  if (remote && insecure.size() > 0)
    return Error(Code::kPermissionDenied,
                 "--insecure-registry is only for clients on paddockd's unix socket; over TCP registries "
                 "are spoken to over verified TLS");
  opts.http.refuse_loopback = remote;
  if (!remote) opts.http.insecure_hosts = o.insecure_registries;  // the operator's (paddockd --insecure-registry)
  for (const auto& h : insecure) {
    if (h.empty() || h.size() > 255) return Error(Code::kInvalidArgument, "insecure registry '{}' is not a host", h);
    opts.http.insecure_hosts.insert(h);
  }
  policy::TlsOptions tls;
  if (!ca_file.empty()) {
    // A CA file is a path on the daemon's host: unix-socket clients only.
    PADDOCK_RETURN_IF_ERROR(CheckHostPath(ca_file, "CA file", remote));
    tls.ca_file = ca_file;
    opts.tls_everywhere = true;
  } else if (!o.registry_ca_file.empty()) {
    tls.ca_file = o.registry_ca_file;  // the operator's (paddockd --registry-ca-file)
    opts.tls_everywhere = true;
  }
  PADDOCK_ASSIGN_OR_RETURN(opts.http.tls, policy::MakeTlsClientContext(tls));
  opts.http.cancelled = [ctx] { return ctx->IsCancelled(); };
  if (creds.username().size() > 4096 || creds.password().size() > 64 * 1024)
    return Error(Code::kInvalidArgument, "registry credentials are over 4 KiB (user) or 64 KiB (password)");
  opts.credentials = {creds.username(), creds.password()};
  return opts;
}

}  // namespace

grpc::Status ImageService::Pull(grpc::ServerContext* ctx, const v1::PullRequest* req,
                                grpc::ServerWriter<v1::ImportEvent>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  auto ref = reg::ParseReference(req->ref());
  if (!ref.ok()) return ToGrpc(ref.status());
  reg::PullOptions opts;
  if (!req->name().empty()) {
    auto n = storage::ImageStore::NormalizeName(req->name());
    if (!n.ok()) return ToGrpc(n.status());
    opts.names.push_back(*n);
  }  // else the reference itself names it (none for a reference by digest only)
  if (!req->platform().empty()) {
    auto p = reg::ParsePlatform(req->platform());
    if (!p.ok()) return ToGrpc(p.status());
    opts.platform = *p;
  }
  const bool remote = auth_ != nullptr;
  auto ro = RegistryOptionsFor(ctx, remote, options_, req->insecure_registries(), req->ca_file(), req->credentials());
  if (!ro.ok()) return ToGrpc(ro.status());
  opts.registry = std::move(*ro);
  // New layers land in this node's layer cache as they download: the first
  // sandbox on the image does not decompress them again.
  opts.layer_cache = cache_;
  // The daemon's own credentials serve its host's users (the unix socket), never
  // a TCP client, which brings its own.
  if (opts.registry.credentials.empty() && !remote && !options_.registry_creds_file.empty()) {
    auto found = reg::ReadCredentialsFile(options_.registry_creds_file, ref->registry);
    if (!found.ok()) return ToGrpc(found.status().Prefix("paddockd --registry-creds-file"));
    opts.registry.credentials = found->creds;
  }

  auto r = reg::PullImage(store_, *ref, opts, [&](const reg::PullProgress& p) {
    v1::ImportEvent ev;
    auto* pr = ev.mutable_progress();
    pr->set_phase(p.phase);
    pr->set_message(p.message);
    pr->set_bytes_done(p.bytes_done);
    pr->set_bytes_total(p.bytes_total);
    writer->Write(ev);
  });
  if (!r.ok()) {
    spdlog::warn("pull {} failed: {}", req->ref(), r.status().message());
    return ToGrpc(r.status());
  }
  v1::ImportEvent ev;
  auto* res = ev.mutable_result();
  res->add_images(r->image.str());
  for (const auto& n : r->names) res->add_names(n);
  res->set_layers_total(r->layers_total);
  res->set_layers_new(r->layers_new);
  res->set_bytes_committed(r->bytes_committed);
  res->set_bytes_fetched(r->bytes_fetched);
  res->set_manifest_digest(r->manifest_digest.str());
  writer->Write(ev);
  spdlog::info("pulled {} ({}) as {}: {} of {} layers fetched, {} bytes", ref->str(), r->manifest_digest.str(),
               r->image.str(), r->layers_new, r->layers_total, r->bytes_fetched);
  return grpc::Status::OK;
}

grpc::Status ImageService::Push(grpc::ServerContext* ctx, const v1::PushRequest* req,
                                grpc::ServerWriter<v1::PushEvent>* writer) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (req->image().empty()) return ToGrpc(Error(Code::kInvalidArgument, "no image given to push"));
  auto ref = reg::ParseReference(req->ref());
  if (!ref.ok()) return ToGrpc(ref.status());
  if (ref->tag.empty() && ref->digest.empty())
    return ToGrpc(Error(Code::kInvalidArgument, "{}: a push needs a tag", ref->str()));
  const bool remote = auth_ != nullptr;
  reg::PushOptions opts;
  auto ro = RegistryOptionsFor(ctx, remote, options_, req->insecure_registries(), req->ca_file(), req->credentials());
  if (!ro.ok()) return ToGrpc(ro.status());
  opts.registry = std::move(*ro);
  if (req->chunk_size() < 0) {
    opts.chunk_size = 0;
  } else if (req->chunk_size() > 0) {
    if (static_cast<uint64_t>(req->chunk_size()) > reg::kMaxChunkSize)
      return ToGrpc(Error(Code::kInvalidArgument, "chunk size {} is over the largest allowed ({})",
                          req->chunk_size(), reg::kMaxChunkSize));
    opts.chunk_size = static_cast<uint64_t>(req->chunk_size());
  }
  auto r = reg::PushImage(store_, req->image(), *ref, opts, [&](const reg::PushProgress& p) {
    v1::PushEvent ev;
    auto* pr = ev.mutable_progress();
    pr->set_phase(p.phase);
    pr->set_message(p.message);
    pr->set_bytes_done(p.bytes_done);
    pr->set_bytes_total(p.bytes_total);
    writer->Write(ev);
  });
  if (!r.ok()) {
    spdlog::warn("push {} to {} failed: {}", req->image(), req->ref(), r.status().message());
    return ToGrpc(r.status());
  }
  v1::PushEvent ev;
  auto* res = ev.mutable_result();
  res->set_image(r->image.str());
  res->set_manifest_digest(r->manifest_digest.str());
  res->set_blobs_total(r->blobs_total);
  res->set_blobs_present(r->blobs_present);
  res->set_blobs_mounted(r->blobs_mounted);
  res->set_blobs_uploaded(r->blobs_uploaded);
  res->set_bytes_uploaded(r->bytes_uploaded);
  res->set_ref(ref->str());
  res->set_blobs_chunked(r->blobs_chunked);
  res->set_chunk_resumes(r->chunk_resumes);
  writer->Write(ev);
  spdlog::info("pushed {} to {} ({}): {} of {} blobs sent ({} bytes), {} mounted", r->image.str(), ref->str(),
               r->manifest_digest.str(), r->blobs_uploaded, r->blobs_total, r->bytes_uploaded, r->blobs_mounted);
  return grpc::Status::OK;
}

grpc::Status ImageService::Receive(grpc::ServerContext* ctx,
                                   grpc::ServerReaderWriter<v1::ReceiveAsk, v1::ReceiveMessage>* stream) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  if (!options_.receiver)
    return ToGrpc(Error(Code::kUnimplemented, "this daemon takes no images from fronts"));
  // Only a front's call, with a live lease, as for the fronts' sandbox calls.
  if (options_.leases) {
    auto front = options_.leases->Check(*ctx, /*renew=*/false);
    if (!front.ok()) return ToGrpc(front.status());
    if (front->front.empty())
      return ToGrpc(Error(Code::kPermissionDenied, "Images.Receive is for fronts (rollout/fleet) only"));
  }
  v1::ReceiveMessage first;
  if (!stream->Read(&first) || !first.has_offer())
    return ToGrpc(Error(Code::kInvalidArgument, "Images.Receive starts with the image offered"));
  return options_.receiver->Serve(ctx, stream, first.offer());
}

grpc::Status ImageService::Send(grpc::ServerContext* ctx,
                                grpc::ServerReaderWriter<v1::ReceiveMessage, v1::ReceiveAsk>* stream) {
  if (auto a = Authorize(*ctx); !a.ok()) return a;
  // As Receive: a node's images go to its fronts only (token and a live lease).
  if (!options_.leases)
    return ToGrpc(Error(Code::kUnimplemented, "this daemon serves no fronts (it is not a fleet node)"));
  auto front = options_.leases->Check(*ctx, /*renew=*/false);
  if (!front.ok()) return ToGrpc(front.status());
  if (front->front.empty()) return ToGrpc(Error(Code::kPermissionDenied, "Images.Send is for fronts (rollout/fleet) only"));
  v1::ReceiveAsk first;
  if (!stream->Read(&first) || !first.has_want())
    return ToGrpc(Error(Code::kInvalidArgument, "Images.Send starts with the image wanted"));
  auto digest = storage::Digest::Parse(first.want().image());
  if (!digest.ok() || first.want().image().size() != 71)
    return ToGrpc(Error(Code::kInvalidArgument, "an image asked of a node must be named by its id, sha256:<64 hex>"));
  auto image = store_.Get(digest->str());
  if (!image.ok()) return ToGrpc(image.status());
  // What the front may ask for: this image's blobs, nothing else of the store.
  std::set<std::string> allowed = {image->digest.str(), image->manifest.config.str()};
  for (const auto& l : image->manifest.layers) allowed.insert(l.blob.str());
  auto write = [stream](const v1::ReceiveMessage& m) { return stream->Write(m); };
  v1::ReceiveAsk ask;
  while (stream->Read(&ask)) {
    if (ask.has_done()) break;
    if (!ask.has_blob()) return ToGrpc(Error(Code::kInvalidArgument, "Images.Send: expected a blob to be asked for"));
    const std::string& want = ask.blob().digest();
    auto d = storage::Digest::Parse(want);
    if (!d.ok() || !allowed.count(want))
      return ToGrpc(Error(Code::kPermissionDenied, "the front asked for blob '{}', which is not one of image {}'s",
                          want.substr(0, 80), digest->str()));
    if (!SendImageBlob(write, store_, *d, ask.blob().max_bytes())) break;
  }
  return grpc::Status::OK;
}

}  // namespace paddock::service
