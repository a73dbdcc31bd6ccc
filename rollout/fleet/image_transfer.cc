#include "rollout/fleet/image_transfer.h"

#include <set>

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "image.grpc.pb.h"
#include "paddock/client.h"
#include "paddock/grpc_call.h"
#include "rollout/service/image_blob_stream.h"

namespace paddock::fleet {

namespace {

Status FromGrpcStatus(const grpc::Status& st) {
  if (st.ok()) return Status::Ok();
  return Error(static_cast<Code>(st.error_code()), "{}", st.error_message());
}

}  // namespace

Result<std::string> ImageSender::Lookup(const std::string& ref) const {
  PADDOCK_ASSIGN_OR_RETURN(storage::Digest d, store_.Resolve(ref));
  return d.str();
}

Result<ImageHanded> ImageSender::Ensure(const std::string& address, client::Client& node, const std::string& id,
                                        const std::string& name) {
  const std::string key = address + " " + id;
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    std::lock_guard l(mu_);
    auto it = flights_.find(key);
    if (it != flights_.end()) {
      flight = it->second;
    } else {
      flight = flights_[key] = std::make_shared<Flight>();
      leader = true;
    }
  }
  if (!leader) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return flight->done; });  // bounded: the offer has a deadline
    Result<ImageHanded> r = flight->result;
    if (r.ok()) *r = ImageHanded{};
    return r;
  }
  Result<ImageHanded> r = Offer(node, id, name);
  if (r.ok() && r->fetched) handed_.fetch_add(1);
  {
    std::lock_guard l(mu_);
    flight->result = r;
    flight->done = true;
    flights_.erase(key);
  }
  cv_.notify_all();
  return r;
}

Result<ImageHanded> ImageSender::Offer(client::Client& node, const std::string& id, const std::string& name) {
  const std::string display = name.empty() || name == id ? id : fmt::format("{} ({})", name, id);
  auto image = store_.Get(id);
  if (!image.ok()) return image.status().Prefix("sending image " + display);
  // What the node may ask for: this image's blobs, nothing else of the store.
  std::set<std::string> allowed = {image->digest.str(), image->manifest.config.str()};
  for (const auto& l : image->manifest.layers) allowed.insert(l.blob.str());

  v1::Images::Stub stub(node.channel());
  auto ctx = client::internal::CallContext(node.options(), timeout_);
  auto stream = stub.Receive(ctx.get());
  v1::ReceiveMessage offer;
  offer.mutable_offer()->set_image(id);
  offer.mutable_offer()->set_name(name);
  const auto started = std::chrono::steady_clock::now();
  ImageHanded out;
  bool done = false;
  Status refused;
  if (stream->Write(offer)) {
    v1::ReceiveAsk ask;
    while (stream->Read(&ask)) {
      if (ask.has_done()) {
        out.fetched = ask.done().fetched();
        out.layers_fetched = ask.done().layers_fetched();
        out.bytes_fetched = ask.done().bytes_fetched();
        done = true;
        break;
      }
      const std::string& want = ask.blob().digest();
      auto d = storage::Digest::Parse(want);
      if (!d.ok() || !allowed.count(want)) {
        refused = Error(Code::kPermissionDenied,
                        "sending image {}: the node asked for blob '{}', which is not one of the image's", display,
                        want.substr(0, 80));
        ctx->TryCancel();
        break;
      }
      if (!service::SendImageBlob([&](const v1::ReceiveMessage& m) { return stream->Write(m); }, store_, *d,
                                  ask.blob().max_bytes()))
        break;
    }
  }
  stream->WritesDone();
  Status st = FromGrpcStatus(stream->Finish());
  if (!refused.ok()) return refused;
  if (!st.ok()) return st;  // the node's message names the image and the blob
  if (!done) return Error(Code::kUnavailable, "sending image {}: the node ended the call without an answer", display);
  if (out.fetched)
    spdlog::info("node fetched image {} from this front in {} ms: {} layers, {} bytes", display,
                 std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started)
                     .count(),
                 out.layers_fetched, out.bytes_fetched);
  return out;
}

Result<storage::CopyResult> ImageSender::Fetch(const std::string& address, client::Client& node,
                                               const std::string& id, const std::string& name) {
  const std::string display = name.empty() || name == id ? id : fmt::format("{} ({})", name, id);
  auto parsed = storage::Digest::Parse(id);
  if (!parsed.ok()) return parsed.status().Prefix("copying image from node " + address);
  v1::Images::Stub stub(node.channel());
  auto ctx = client::internal::CallContext(node.options(), timeout_);
  auto stream = stub.Send(ctx.get());
  v1::ReceiveAsk want;
  want.mutable_want()->set_image(id);
  want.mutable_want()->set_name(name);
  const auto started = std::chrono::steady_clock::now();
  Result<storage::CopyResult> copied = Error(Code::kUnavailable, "node {} ended the call before image {} was asked for",
                                             address, display);
  if (stream->Write(want)) {
    service::StreamBlobFetcher fetcher([&](const v1::ReceiveAsk& a) { return stream->Write(a); },
                                       [&](v1::ReceiveMessage* m) { return stream->Read(m); }, "node " + address);
    storage::CopyOptions co;
    co.display = display;
    copied = storage::CopyImage(store_, *parsed, fetcher, co);
  }
  if (!copied.ok()) ctx->TryCancel();
  stream->WritesDone();
  Status st = FromGrpcStatus(stream->Finish());
  if (!copied.ok()) {
    // The node's own refusal (no such image, a lease it does not know) says
    // more than the broken stream the copy saw; bad bytes are the copy's to name.
    if (!st.ok() && st.code() != Code::kCancelled && copied.status().code() == Code::kUnavailable)
      return st.Prefix(fmt::format("copying image {} from node {}", display, address));
    return copied.status().Prefix(fmt::format("copying image from node {}", address));
  }
  if (!copied->already_present)
    spdlog::info("copied image {} from node {} in {} ms: {} layers, {} bytes", display, address,
                 std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started)
                     .count(),
                 copied->layers_fetched, copied->bytes_fetched);
  return copied;
}

}  // namespace paddock::fleet
