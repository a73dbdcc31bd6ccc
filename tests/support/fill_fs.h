// For tests that run a store out of space on a small tmpfs they mount: free bytes,
// and a filler file that leaves an exact amount free (tmpfs supports fallocate).
#pragma once

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace paddock::testing {

// Bytes an unprivileged writer may still use on the filesystem of `dir`; 0 on error.
inline uint64_t FreeBytesAt(const std::string& dir) {
  struct statvfs s;
  if (::statvfs(dir.c_str(), &s) != 0) return 0;
  return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
}

// Allocates `dir`/filler so that `leave` bytes remain free. False when less than
// that is free already or the allocation fails.
inline bool FillLeaving(const std::string& dir, uint64_t leave) {
  uint64_t free = FreeBytesAt(dir);
  if (free <= leave) return false;
  int fd = ::open((dir + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = ::posix_fallocate(fd, 0, static_cast<off_t>(free - leave)) == 0;
  ::close(fd);
  return ok;
}

}  // namespace paddock::testing
