// The gRPC edge of the image store (paddock.v1.Images): validates each request,
// calls storage/ (ImageStore, import/export, the node's LayerCache) and maps
// paddock::Status codes onto gRPC statuses. No store logic here.
#pragma once

#include <chrono>
#include <functional>
#include <set>
#include <string>

#include "image.grpc.pb.h"
#include "rollout/service/auth.h"
#include "rollout/service/front_leases.h"
#include "rollout/service/image_receive.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"

namespace paddock::service {

// Bounds on `image pull`'s and `image push`'s registry requests (paddockd
// --registry-timeout-ms, --registry-idle-timeout-ms);
// storage/registry/registry_client.h says how they apply.
// The daemon's --insecure-registry hosts and --registry-ca-file add to what a
// unix-socket client's pull or push asks for (TCP clients get no host list; the
// CA file serves any request that names none).
struct ImageServiceOptions {
  std::chrono::milliseconds registry_request_timeout{60000};
  std::chrono::milliseconds registry_idle_timeout{30000};
  std::set<std::string> insecure_registries;  // unix-socket clients only
  std::string registry_ca_file;               // used when the request names none
  // paddockd --registry-creds-file: docker config format; its entry for a
  // registry serves pulls the daemon starts itself and unix-socket clients'
  // pulls that bring no credentials. Read at each use. Empty: none.
  std::string registry_creds_file;
  // Images.Receive: the node's one receiver (shared by every listener's
  // service) and the fronts' leases a call must hold. Null receiver: Receive
  // is UNIMPLEMENTED.
  ImageReceiver* receiver = nullptr;
  FrontLeases* leases = nullptr;
  // Remove of a microVM memory snapshot (`microvm-snapshot:NAME`: it lives
  // with the substrate, not in the store): SandboxManager::RemoveMemorySnapshot.
  // Null: such a Remove is NOT_FOUND.
  std::function<Result<uint64_t>(const std::string&)> remove_memory_snapshot;
  // List's memory snapshots (SandboxManager::MemorySnapshots): each an entry
  // whose digest and name are `microvm-snapshot:NAME`, no layers, its bytes.
  std::function<std::vector<std::pair<std::string, uint64_t>>()> memory_snapshots;
};

class ImageService final : public v1::Images::Service {
 public:
  // `store` and `cache` must outlive the service; `auth` as for SandboxService.
  ImageService(storage::ImageStore& store, storage::LayerCache* cache,
               const BearerTokenAuth* auth = nullptr, ImageServiceOptions options = {})
      : store_(store), cache_(cache), auth_(auth), options_(options) {}

  grpc::Status Import(grpc::ServerContext* ctx, const v1::ImportRequest* req,
                      grpc::ServerWriter<v1::ImportEvent>* writer) override;
  grpc::Status ImportDir(grpc::ServerContext* ctx, const v1::ImportDirRequest* req,
                         v1::ImportDirResponse* resp) override;
  grpc::Status List(grpc::ServerContext* ctx, const v1::ImageListRequest* req,
                    v1::ImageListResponse* resp) override;
  grpc::Status Inspect(grpc::ServerContext* ctx, const v1::InspectRequest* req,
                       v1::ImageDetail* resp) override;
  grpc::Status Remove(grpc::ServerContext* ctx, const v1::RemoveImageRequest* req,
                      v1::RemoveImageResponse* resp) override;
  grpc::Status Gc(grpc::ServerContext* ctx, const v1::GcRequest* req, v1::GcResponse* resp) override;
  grpc::Status Export(grpc::ServerContext* ctx, const v1::ExportImageRequest* req,
                      v1::ExportImageResponse* resp) override;
  grpc::Status Pull(grpc::ServerContext* ctx, const v1::PullRequest* req,
                    grpc::ServerWriter<v1::ImportEvent>* writer) override;
  grpc::Status Push(grpc::ServerContext* ctx, const v1::PushRequest* req,
                    grpc::ServerWriter<v1::PushEvent>* writer) override;
  grpc::Status Receive(grpc::ServerContext* ctx,
                       grpc::ServerReaderWriter<v1::ReceiveAsk, v1::ReceiveMessage>* stream) override;
  grpc::Status Send(grpc::ServerContext* ctx,
                    grpc::ServerReaderWriter<v1::ReceiveMessage, v1::ReceiveAsk>* stream) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& ctx) const {
    return auth_ ? auth_->Check(ctx) : grpc::Status::OK;
  }
  storage::ImageStore& store_;
  storage::LayerCache* cache_;
  const BearerTokenAuth* auth_;
  ImageServiceOptions options_;
};

}  // namespace paddock::service
