// LayerTreeWriter: writes one layer's tar entries into a directory as a tar
// reader yields them. The materializer (layer_unpack.h, from a stored blob) and
// a streamed pull (layer_ingest.h, from the registry's bytes as they arrive) both
// write through it, so the two produce the same tree.
//
// Every entry is created relative to an open directory fd (a cache of open
// parents by path) instead of resolving a path per entry: parents are opened
// with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) one component at a time,
// leaves created with O_CREAT | O_EXCL | O_NOFOLLOW, mkdirat, symlinkat, mknodat,
// linkat (no AT_SYMLINK_FOLLOW). Nothing can be created through a symlink or
// outside the root, whatever the entries say, independently of EntryPolicy
// (which the caller has applied to each entry already).
//
// Kept: numeric owners (no name lookup), permissions incl. setuid/setgid (never
// under our own id when not root), mtimes, xattrs except `trusted.*` (a layer
// must not smuggle overlayfs metadata). ACLs and file flags are not restored.
// Whiteouts are made after every entry, in overlayfs form (overlay_whiteout.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "sandbox/base/status.h"
#include "storage/layer.h"

struct archive;
struct archive_entry;

namespace paddock::storage {

struct UnpackStats {
  uint64_t entries = 0;
  uint64_t tar_bytes = 0;
  uint64_t whiteouts = 0;
  uint64_t opaque_dirs = 0;
};

class LayerTreeWriter {
 public:
  // `dest`: an existing, empty directory on a filesystem with trusted.* xattrs
  // and device nodes (whiteouts); `what` names the layer in errors. With
  // `start_writeback` each large file's writeback is started as it is closed
  // (the caller syncs the tree at the end).
  static Result<std::unique_ptr<LayerTreeWriter>> Open(const std::string& dest, std::string what,
                                                       bool start_writeback);
  ~LayerTreeWriter();

  // The entry whose header `tar` has just read, already checked by EntryPolicy
  // (`le`): creates it and copies its data from `tar`. A read error of `tar` is
  // DATA_LOSS naming the entry (the caller may know a better cause).
  Status Add(archive* tar, archive_entry* e, const LayerEntry& le);
  // Whiteouts and opaque directories (after every entry: a same-layer entry wins
  // over a whiteout), then directory modes and times. `tar_bytes` is left 0.
  Result<UnpackStats> Finish();

 private:
  struct Impl;
  explicit LayerTreeWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace paddock::storage
