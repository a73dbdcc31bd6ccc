// Gives back the pages of a memory file that hold only zeros. A fork's
// template is loaded from a migration stream, where a zero page is a flag;
// QEMU's load reads the destination page to see whether it must clear it,
// and a read of a hole in a shared shmem mapping allocates the page. So the
// load leaves every page of guest RAM resident, zero or not; punching the
// zero ones out afterwards leaves the memfd holding what the guest wrote.
#pragma once

#include <cstdint>

#include "sandbox/base/status.h"

namespace paddock::microvm {

// Punches out (FALLOC_FL_PUNCH_HOLE) every 4 KiB page of `fd`'s first
// `size` bytes that reads as zeros; reads still see zeros there. Returns the
// bytes given back. `fd` is a shmem file (a memfd) no one writes meanwhile.
Result<uint64_t> DropZeroPages(int fd, uint64_t size);

}  // namespace paddock::microvm
