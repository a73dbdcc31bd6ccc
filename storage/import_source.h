// Where an image archive's files come from: an unpacked directory or a tar
// (optionally compressed). Internal to image_import.cc.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "sandbox/base/status.h"
#include "storage/layer_ingest.h"

namespace paddock::storage {

class ImportSource {
 public:
  virtual ~ImportSource() = default;
  // Paths are relative, "/"-separated, normalized ("blobs/sha256/<hex>").
  virtual bool Exists(const std::string& path) = 0;
  // The name a path is stored under (links inside a tar resolved).
  virtual std::string Canonical(const std::string& path) { return path; }
  virtual Result<std::string> ReadSmall(const std::string& path, uint64_t max_bytes) = 0;
  // Calls fn once per path in `paths`, in the order the source holds them (a tar
  // is read sequentially, so large files are streamed, never extracted).
  virtual Status ForEach(const std::set<std::string>& paths,
                         const std::function<Status(const std::string&, const ByteSource&)>& fn) = 0;

  // A directory, or a tar file (anything libarchive's tar reader and filters take).
  static Result<std::unique_ptr<ImportSource>> Open(const std::string& path);
};

}  // namespace paddock::storage
