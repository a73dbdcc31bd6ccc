// Read-only block images of image layers, one per layer, built once (erofs
// by default, ext4 as the measured alternative) and cached under the state
// dir; concurrent first uses of a layer wait on one build.
#pragma once

#include <future>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::microvm {

class LayerDisks {
 public:
  LayerDisks(std::string cache_dir, std::string fs_type)
      : dir_(std::move(cache_dir)), fs_(std::move(fs_type)) {}

  // The disk image of the layer directory `layer_dir`, building it when it is
  // not cached yet. The key is the layer's canonical path and the identity
  // (device, inode, mtime) of its root: a store layer's directory never
  // changes once materialized, and a development directory that is replaced
  // gets a new disk.
  Result<std::string> Get(const std::string& layer_dir);

  const std::string& fs_type() const { return fs_; }

 private:
  Status Build(const std::string& layer_dir, const std::string& out);

  std::string dir_, fs_;
  std::mutex mu_;
  std::map<std::string, std::shared_future<Result<std::string>>> building_;
};

// Runs argv (absolute program path), returning its stderr tail in the error
// when it fails.
Status RunTool(const std::vector<std::string>& argv);

}  // namespace paddock::microvm
