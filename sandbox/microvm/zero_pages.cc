#include "sandbox/microvm/zero_pages.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>
#include <vector>

namespace paddock::microvm {

namespace {
constexpr uint64_t kPage = 4096;

bool PageIsZero(const unsigned char* p) {
  uint64_t acc = 0;
  for (uint64_t i = 0; i < kPage; i += sizeof(uint64_t)) {
    uint64_t w;
    std::memcpy(&w, p + i, sizeof w);
    acc |= w;
  }
  return acc == 0;
}
}  // namespace

Result<uint64_t> DropZeroPages(int fd, uint64_t size) {
  size -= size % kPage;
  if (size == 0) return uint64_t{0};
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return ErrnoError("mapping a memory file to find its zero pages");
  const auto* base = static_cast<const unsigned char*>(map);
  uint64_t dropped = 0, run_start = 0, run_len = 0;
  Status failed = Status::Ok();
  auto punch = [&]() {
    if (run_len == 0 || !failed.ok()) return;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(run_start),
                  static_cast<off_t>(run_len)) != 0)
      failed = ErrnoError("punching the zero pages out of a memory file");
    else
      dropped += run_len;
    run_len = 0;
  };
  // mincore first: a page that is a hole already costs nothing to skip.
  std::vector<unsigned char> resident(size / kPage);
  const bool known = mincore(map, size, resident.data()) == 0;
  for (uint64_t off = 0; off < size && failed.ok(); off += kPage) {
    const bool zero = (known && !(resident[off / kPage] & 1)) ? false : PageIsZero(base + off);
    if (zero) {
      if (run_len == 0) run_start = off;
      run_len += kPage;
    } else {
      punch();
    }
  }
  punch();
  munmap(map, size);
  if (!failed.ok()) return failed;
  return dropped;
}

}  // namespace paddock::microvm
