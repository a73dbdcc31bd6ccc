// User namespace id maps. Containers map their root to one unprivileged host
// range and function sandboxes to another (docs/security.md says why).
#pragma once

#include <sys/types.h>

#include "sandbox/base/status.h"
#include "sandbox/base/unique_fd.h"

namespace paddock {

struct IdRange {
  uint32_t host_base;  // container id 0 is this host id
  uint32_t count;
};

inline constexpr IdRange kContainerIds{200000, 65536};
inline constexpr IdRange kFunctionIds{300000, 65536};

Status WriteIdMaps(pid_t pid, IdRange range);

// A user namespace with `range` mapped, held by an fd (for idmapped mounts).
Result<UniqueFd> OpenUsernsWithMap(IdRange range);

}  // namespace paddock
