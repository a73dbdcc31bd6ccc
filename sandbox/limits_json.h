// Limits as JSON ({"cpu_millicores", "memory_bytes", "pids", "disk_bytes"}),
// found by nlohmann::json through ADL: `{"limits", spec.limits}` writes it,
// `j.at("limits").get<Limits>()` reads it (every field required). The one
// form the manager's paused records, a microVM's vm.json and the CLI's --json
// output share.
#pragma once

#include <nlohmann/json.hpp>

#include "sandbox/types.h"

namespace paddock {

inline void to_json(nlohmann::json& j, const Limits& l) {
  j = {{"cpu_millicores", l.cpu_millicores},
       {"memory_bytes", l.memory_bytes},
       {"pids", l.pids},
       {"disk_bytes", l.disk_bytes}};
}

inline void from_json(const nlohmann::json& j, Limits& l) {
  l.cpu_millicores = j.at("cpu_millicores").get<uint32_t>();
  l.memory_bytes = j.at("memory_bytes").get<uint64_t>();
  l.pids = j.at("pids").get<uint32_t>();
  l.disk_bytes = j.at("disk_bytes").get<uint64_t>();
}

}  // namespace paddock
