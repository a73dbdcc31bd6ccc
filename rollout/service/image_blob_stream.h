// The two ends of an image's blobs over a gRPC stream between a front and a
// node (proto/image.proto, Images.Receive and Images.Send): the side that has
// the image sends each blob asked for in chunks; the side that copies it asks
// for one blob at a time and reads its chunks (storage/image_copy.h checks the
// bytes). Which side is which depends on the call: the front sends in Receive,
// the node in Send. The functions take the stream's read and write as callables
// so that client and server streams share them.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "image.pb.h"
#include "storage/image_copy.h"
#include "storage/image_store.h"

namespace paddock::service {

inline constexpr size_t kImageChunkBytes = 1 << 20;

using WriteChunk = std::function<bool(const v1::ReceiveMessage&)>;
using WriteAsk = std::function<bool(const v1::ReceiveAsk&)>;
using ReadChunk = std::function<bool(v1::ReceiveMessage*)>;

// Sends blob `digest` of `store` in chunks of at most kImageChunkBytes, at most
// `max_bytes` + 1 bytes (one more than the asker takes, so that it sees a blob
// longer than it asked for). The bytes go as the file holds them: the asker
// checks them against the digest. A blob that cannot be read goes as a chunk
// with `error`. False when the stream broke.
bool SendImageBlob(const WriteChunk& write, const storage::ImageStore& store, const storage::Digest& digest,
                   uint64_t max_bytes);

// Blobs over a stream: Open asks for one and yields its chunks. `peer` names the
// other side in errors ("the front", "node 10.0.0.7:7070").
class StreamBlobFetcher final : public storage::BlobFetcher {
 public:
  StreamBlobFetcher(WriteAsk write, ReadChunk read, std::string peer)
      : write_(std::move(write)), read_(std::move(read)), peer_(std::move(peer)) {}

  Result<storage::ByteSource> Open(const storage::Digest& digest, uint64_t size, uint64_t max_bytes) override;

 private:
  WriteAsk write_;
  ReadChunk read_;
  const std::string peer_;
  std::shared_ptr<bool> open_;  // whether the blob last opened has ended
};

}  // namespace paddock::service
