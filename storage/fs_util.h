// Small file helpers for the store: every write that must survive a crash goes
// through AtomicWriteFile (temp in the same directory, fsync, rename, fsync dir).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"

namespace paddock::storage {

Status WriteAll(int fd, const void* data, size_t n, std::string_view what);
Status FsyncDir(const std::string& dir);
Status MakeDirs(const std::string& dir);
// MakeDirs, then mode 0700: what images and sandboxes put there (setuid files
// among them) must be unreachable by other host users.
Status MakePrivateDir(const std::string& dir);
// Replaces `path` atomically with `data`; readers see the old or the new file.
Status AtomicWriteFile(const std::string& path, std::string_view data);
// Reads a whole file, refusing ones larger than max_bytes (RESOURCE_EXHAUSTED).
Result<std::string> ReadFileLimited(const std::string& path, uint64_t max_bytes);
// A name unlikely to collide across nodes sharing the store: host, pid, random.
std::string UniqueTempName(std::string_view prefix);
// Percent-encodes everything outside [A-Za-z0-9._-] so any name is one path component.
std::string EscapeComponent(std::string_view s);
std::string UnescapeComponent(std::string_view s);

}  // namespace paddock::storage
