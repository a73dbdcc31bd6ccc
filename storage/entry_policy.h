// The rules every tar entry of an imported layer must pass (docs/image-store.md,
// "Hostile input"). An EntryPolicy sees one layer's entries in order and refuses
// the first bad one with INVALID_ARGUMENT naming it.
#pragma once

#include <set>
#include <string>
#include <string_view>

#include "sandbox/base/status.h"
#include "storage/layer.h"

struct archive_entry;

namespace paddock::storage {

// "./a//b/./c/" → "a/b/c"; "./" or "." → ".". Refuses absolute paths, ".."
// components and empty names.
Result<std::string> NormalizeEntryPath(std::string_view raw);

// True when `target`, resolved lexically from the directory holding `link_path`,
// climbs above the root. Absolute targets are resolved against the image root
// (as they will be inside a sandbox) and so never escape.
bool SymlinkEscapes(std::string_view link_path, std::string_view target);

class EntryPolicy {
 public:
  explicit EntryPolicy(LayerLimits limits) : limits_(limits) {}
  // Checks one header and fills `out` (offset left to the caller).
  Status Check(archive_entry* entry, LayerEntry* out);

 private:
  LayerLimits limits_;
  uint64_t entries_ = 0;
  uint64_t bytes_ = 0;
  std::set<std::string> symlinks_;   // symlink paths seen in this layer
  std::set<std::string> linkable_;   // non-directory paths a hard link may name
};

// Refuses a path one of whose parent directories is a symlink in `symlinks`.
Status CheckNotThroughSymlink(const std::string& path, const std::set<std::string>& symlinks,
                              std::string_view where);

}  // namespace paddock::storage
