#include "rollout/service/image_blob_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "sandbox/base/unique_fd.h"

namespace paddock::service {

bool SendImageBlob(const WriteChunk& write, const storage::ImageStore& store, const storage::Digest& digest,
                   uint64_t max_bytes) {
  v1::ReceiveMessage m;
  auto* chunk = m.mutable_chunk();
  UniqueFd fd(::open(const_cast<storage::ImageStore&>(store).blobs().BlobPath(digest).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    chunk->set_error(fmt::format("blob {} is not in this store: {}", digest.str(), std::strerror(errno)));
    return write(m);
  }
  std::string buf(kImageChunkBytes, '\0');
  uint64_t sent = 0;
  for (;;) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), max_bytes + 1 - sent));
    ssize_t r = want ? ::read(fd.get(), buf.data(), want) : 0;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      chunk->Clear();
      chunk->set_error(fmt::format("reading blob {}: {}", digest.str(), std::strerror(errno)));
      return write(m);
    }
    sent += static_cast<uint64_t>(r);
    chunk->Clear();
    chunk->set_data(buf.data(), static_cast<size_t>(r));
    chunk->set_last(r == 0);
    if (!write(m)) return false;
    if (r == 0) return true;
  }
}

Result<storage::ByteSource> StreamBlobFetcher::Open(const storage::Digest& digest, uint64_t size,
                                                    uint64_t max_bytes) {
  if (open_ && !*open_) return Error(Code::kInternal, "a blob is still being read");
  v1::ReceiveAsk ask;
  ask.mutable_blob()->set_digest(digest.str());
  ask.mutable_blob()->set_max_bytes(size ? size : max_bytes);
  if (!write_(ask)) return Error(Code::kUnavailable, "{}'s call ended before blob {} was asked for", peer_, digest.str());
  auto ended = std::make_shared<bool>(false);
  open_ = ended;
  auto buf = std::make_shared<std::string>();
  auto pos = std::make_shared<size_t>(0);
  return storage::ByteSource([this, digest, ended, buf, pos](void* out, size_t n) -> Result<size_t> {
    while (*pos == buf->size()) {
      if (*ended) return size_t{0};
      v1::ReceiveMessage m;
      if (!read_(&m)) return Error(Code::kUnavailable, "{}'s call ended in the middle of blob {}", peer_, digest.str());
      if (!m.has_chunk())
        return Error(Code::kInvalidArgument, "{} sent something else than blob {}'s bytes", peer_, digest.str());
      const v1::BlobChunk& c = m.chunk();
      if (!c.error().empty()) return Error(Code::kUnavailable, "{} cannot send blob {}: {}", peer_, digest.str(), c.error());
      if (c.data().size() > kImageChunkBytes)
        return Error(Code::kInvalidArgument, "{} sent a chunk of {} bytes of blob {} (at most {})", peer_,
                     c.data().size(), digest.str(), kImageChunkBytes);
      *buf = c.data();
      *pos = 0;
      *ended = c.last();
    }
    size_t take = std::min(n, buf->size() - *pos);
    std::memcpy(out, buf->data() + *pos, take);
    *pos += take;
    return take;
  });
}

}  // namespace paddock::service
