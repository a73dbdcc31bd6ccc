// A front's side of Images.Receive (proto/image.proto): handing a node an image
// of this front's store that the node lacks. The front resolves what the user
// named in its own store and places by the image's id; when the node chosen
// has not reported that id, the front offers it and serves the blobs the node
// asks for (only blobs of that image; the node fetches only those it lacks and
// checks every byte, rollout/service/image_receive.h). Concurrent creates on
// one node wait on one offer of an image; the node keeps to one fetch as well.
// And of Images.Send: a snapshot taken on a node is copied into the front's
// store (Fetch), so that it is the fleet's, not that node's alone.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sandbox/base/status.h"
#include "storage/image_copy.h"
#include "storage/image_store.h"

namespace paddock::client {
class Client;
}

namespace paddock::fleet {

struct ImageHanded {
  bool fetched = false;  // the node fetched it now (false: it had it already)
  uint32_t layers_fetched = 0;
  uint64_t bytes_fetched = 0;
};

class ImageSender {
 public:
  // `store` (the front's) outlives this; `timeout` bounds one offer.
  ImageSender(storage::ImageStore& store, std::chrono::milliseconds timeout) : store_(store), timeout_(timeout) {}

  // The image id ("sha256:<hex>") `ref` names in the front's store; NOT_FOUND
  // when it names none (the node resolves it then: its own names, registries).
  Result<std::string> Lookup(const std::string& ref) const;

  // Until `node` (at `address`) holds image `id`: offers it and serves its
  // blobs. Errors name the image (`name`, `id`) and the node.
  Result<ImageHanded> Ensure(const std::string& address, client::Client& node, const std::string& id,
                             const std::string& name);
  // Images nodes fetched from this front (offers they took, not those they
  // held already), since the start.
  uint64_t handed() const { return handed_.load(); }

  // The other way (Images.Send): copies image `id` of the store of `node` (at
  // `address`) into the front's store, e.g. a snapshot taken there, so that
  // creates from it can go to any node and outlive that one. Every byte is
  // checked (storage/image_copy.h); nothing is stored unless all of it is.
  Result<storage::CopyResult> Fetch(const std::string& address, client::Client& node, const std::string& id,
                                    const std::string& name);

 private:
  Result<ImageHanded> Offer(client::Client& node, const std::string& id, const std::string& name);
  struct Flight {
    bool done = false;
    Result<ImageHanded> result = Error(Code::kInternal, "not finished");
  };
  storage::ImageStore& store_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Flight>> flights_;  // by node address + image id
  std::atomic<uint64_t> handed_{0};
};

}  // namespace paddock::fleet
