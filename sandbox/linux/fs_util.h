// Small filesystem helpers returning Status.
#pragma once

#include <string>

#include "sandbox/base/status.h"

namespace paddock {

Status MkdirAll(const std::string& path, mode_t mode = 0755);
// Removes a tree without following symlinks or crossing into mounts.
Status RemoveTree(const std::string& path);
Result<std::string> ReadSmallFile(const std::string& path);
Status WriteSmallFile(const std::string& path, std::string_view content);

// Sandboxes run as unprivileged host users; they need search permission on
// every directory above `path` (their root is mounted below it). Returns a
// clear error naming the first directory they cannot pass.
Status CheckSearchableByOthers(const std::string& path);

}  // namespace paddock
