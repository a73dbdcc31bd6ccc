// Streaming compression of layer tars into one zstd or lz4 frame. Decompression
// goes through libarchive (which reads both filters) when materializing.
#pragma once

#include <functional>
#include <memory>

#include "sandbox/base/status.h"
#include "storage/layer.h"

namespace paddock::storage {

using ByteSink = std::function<Status(const void*, size_t)>;

class Compressor {
 public:
  virtual ~Compressor() = default;
  // level: zstd 1..19 (default 3); lz4 0 = fast mode, >0 = HC level.
  static Result<std::unique_ptr<Compressor>> Create(Compression c, int level, ByteSink sink);
  virtual Status Write(const void* data, size_t n) = 0;
  virtual Status Finish() = 0;
};

}  // namespace paddock::storage
