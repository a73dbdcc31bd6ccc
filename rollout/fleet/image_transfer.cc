#include "rollout/fleet/image_transfer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "image.grpc.pb.h"
#include "paddock/client.h"
#include "paddock/grpc_call.h"
#include "rollout/service/image_receive.h"
#include "sandbox/base/unique_fd.h"

namespace paddock::fleet {

namespace {

Status FromGrpcStatus(const grpc::Status& st) {
  if (st.ok()) return Status::Ok();
  return Error(static_cast<Code>(st.error_code()), "{}", st.error_message());
}

using Stream = grpc::ClientReaderWriter<v1::ReceiveMessage, v1::ReceiveAsk>;

// Sends blob `digest` of `store` in chunks, at most `max_bytes` + 1 bytes (one
// more than the node takes, so it sees a blob longer than it asked for). The
// bytes go as the file holds them: the node checks them against the digest.
bool SendBlob(Stream* stream, const storage::ImageStore& store, const storage::Digest& digest, uint64_t max_bytes) {
  v1::ReceiveMessage m;
  auto* chunk = m.mutable_chunk();
  UniqueFd fd(::open(const_cast<storage::ImageStore&>(store).blobs().BlobPath(digest).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    chunk->set_error(fmt::format("blob {} is not in the front's store: {}", digest.str(), std::strerror(errno)));
    return stream->Write(m);
  }
  std::string buf(service::kImageChunkBytes, '\0');
  uint64_t sent = 0;
  for (;;) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), max_bytes + 1 - sent));
    ssize_t r = want ? ::read(fd.get(), buf.data(), want) : 0;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      chunk->Clear();
      chunk->set_error(fmt::format("reading blob {}: {}", digest.str(), std::strerror(errno)));
      return stream->Write(m);
    }
    sent += static_cast<uint64_t>(r);
    chunk->Clear();
    chunk->set_data(buf.data(), static_cast<size_t>(r));
    chunk->set_last(r == 0);
    if (!stream->Write(m)) return false;
    if (r == 0) return true;
  }
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
      if (!SendBlob(stream.get(), store_, *d, ask.blob().max_bytes())) break;
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

}  // namespace paddock::fleet
