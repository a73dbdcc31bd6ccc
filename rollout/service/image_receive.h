// A node's side of Images.Receive (proto/image.proto): a front hands this node
// an image of the front's store by its id; this node asks for the blobs it
// lacks over the front's call and copies the image into its store
// (storage/image_copy.h checks every byte and commits atomically).
//
// One fetch per image per node: offers of an image while a fetch of it runs
// (from another create, or another front) wait for that fetch and share its
// outcome. A failure is not remembered: the next offer fetches again.
// Bounded: chunks of at most 1 MiB, blobs by the sizes their manifest declares
// (manifest and config by the store's JSON limit), and the whole fetch by
// `timeout` (the call is cancelled then), besides the front's own deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "image.grpc.pb.h"
#include "rollout/service/image_blob_stream.h"
#include "sandbox/base/status.h"
#include "storage/image_copy.h"
#include "storage/image_store.h"

namespace paddock::service {

class ImageReceiver {
 public:
  explicit ImageReceiver(storage::ImageStore& store, std::chrono::milliseconds timeout = std::chrono::minutes(10))
      : store_(store), timeout_(timeout) {}

  // Serves one Receive call whose offer has been read.
  grpc::Status Serve(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::ReceiveAsk, v1::ReceiveMessage>* stream,
                     const v1::ImageOffer& offer);

  // Images fetched into the store (copies that ran and committed).
  uint64_t fetched() const { return fetched_.load(); }

 private:
  struct Flight {
    bool done = false;
    Result<storage::CopyResult> result = Error(Code::kInternal, "fetch not finished");
  };
  storage::ImageStore& store_;
  const std::chrono::milliseconds timeout_;
  std::atomic<uint64_t> fetched_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Flight>> flights_;  // by image id
};

}  // namespace paddock::service
