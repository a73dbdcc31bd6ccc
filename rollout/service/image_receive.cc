#include "rollout/service/image_receive.h"

#include <thread>

#include <spdlog/spdlog.h>

#include "rollout/service/sandbox_service.h"

namespace paddock::service {

using Stream = grpc::ServerReaderWriter<v1::ReceiveAsk, v1::ReceiveMessage>;

grpc::Status ImageReceiver::Serve(grpc::ServerContext* ctx, Stream* stream, const v1::ImageOffer& offer) {
  auto digest = storage::Digest::Parse(offer.image());
  if (!digest.ok() || offer.image().size() != 71)
    return ToGrpc(Error(Code::kInvalidArgument, "an image offered to a node must be named by its id, "
                                                "sha256:<64 hex>, not '{}'", offer.image()));
  const std::string display = offer.name().empty() ? offer.image() : offer.name().substr(0, 256);
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    std::unique_lock l(mu_);
    auto it = flights_.find(digest->str());
    if (it != flights_.end()) {
      flight = it->second;
    } else {
      flight = std::make_shared<Flight>();
      flights_[digest->str()] = flight;
      leader = true;
    }
  }
  Result<storage::CopyResult> result = Error(Code::kInternal, "not fetched");
  if (leader) {
    // The whole fetch is bounded here too: a front that stops sending is cut off.
    std::mutex wmu;
    std::condition_variable wcv;
    bool finished = false;
    std::thread watchdog([&] {
      std::unique_lock l(wmu);
      if (!wcv.wait_for(l, timeout_, [&] { return finished; })) ctx->TryCancel();
    });
    StreamBlobFetcher fetcher([stream](const v1::ReceiveAsk& a) { return stream->Write(a); },
                              [stream](v1::ReceiveMessage* m) { return stream->Read(m); }, "the front");
    storage::CopyOptions co;
    co.display = display;
    const auto started = std::chrono::steady_clock::now();
    result = storage::CopyImage(store_, *digest, fetcher, co, [&](const storage::CopyProgress& p) {
      if (p.phase == "layer" || p.phase == "committed")
        spdlog::info("fetching image {} from front: {} ({} of {} layer bytes)", display, p.message, p.bytes_done,
                     p.bytes_total);
    });
    {
      std::lock_guard l(wmu);
      finished = true;
    }
    wcv.notify_all();
    watchdog.join();
    if (result.ok() && !result->already_present) {
      fetched_.fetch_add(1);
      spdlog::info("fetched image {} from front in {} ms: {} of {} layers, {} bytes", display,
                   std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started)
                       .count(),
                   result->layers_fetched, result->layers_total, result->bytes_fetched);
    } else if (!result.ok()) {
      if (ctx->IsCancelled() && result.status().code() != Code::kDataLoss)
        result = Error(Code::kDeadlineExceeded, "fetching image {}: not done within {} ms, or the front gave up",
                       display, timeout_.count());
      spdlog::warn("{}", result.status().message());
    }
    {
      std::lock_guard l(mu_);
      flight->result = result;
      flight->done = true;
      flights_.erase(digest->str());
    }
    cv_.notify_all();
  } else {
    std::unique_lock l(mu_);
    while (!flight->done) {
      if (ctx->IsCancelled())
        return ToGrpc(Error(Code::kCancelled, "waiting for the fetch of image {}: the call was cancelled", display));
      cv_.wait_for(l, std::chrono::milliseconds(200));
    }
    result = flight->result;
    if (result.ok()) result->layers_fetched = 0, result->bytes_fetched = 0, result->already_present = true;
  }
  if (!result.ok()) return ToGrpc(result.status());
  v1::ReceiveAsk done;
  auto* d = done.mutable_done();
  d->set_image(digest->str());
  d->set_fetched(!result->already_present);
  d->set_layers_total(static_cast<uint32_t>(result->layers_total));
  d->set_layers_fetched(static_cast<uint32_t>(result->layers_fetched));
  d->set_bytes_fetched(result->bytes_fetched);
  stream->Write(done);
  return grpc::Status::OK;
}

}  // namespace paddock::service
