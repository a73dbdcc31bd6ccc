#include "rollout/fleet/placement.h"

#include <optional>

#include <fmt/format.h>

#include "sandbox/sandbox.h"

namespace paddock::fleet {

Result<Placement> ChooseNode(const std::vector<NodeView>& nodes, const SandboxSpec& spec) {
  size_t not_ready = 0, no_substrate = 0, full = 0, no_memory = 0, limited = 0, elsewhere = 0;
  // A microVM memory snapshot lives on the node that took it: only there can
  // a create restore it.
  const bool pinned = spec.image.rfind(kMemorySnapshotPrefix, 0) == 0;
  std::optional<Placement> best;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const NodeView& n = nodes[i];
    if (!n.ready) {
      ++not_ready;
      continue;
    }
    if (pinned && !n.has_image) {
      ++elsewhere;
      continue;
    }
    if (!n.substrates.count(spec.substrate)) {
      ++no_substrate;
      continue;
    }
    const uint64_t used = uint64_t{n.live} + n.pending;
    if (n.max == 0 || used >= n.max) {
      ++full;
      continue;
    }
    if (spec.limits.memory_bytes && n.mem_available_bytes && spec.limits.memory_bytes > n.mem_available_bytes) {
      ++no_memory;
      continue;
    }
    if (n.rate_limited) {
      ++limited;
      continue;
    }
    Placement p;
    p.index = i;
    p.image_local = n.has_image;
    p.score = static_cast<double>(n.max - used) / n.max + (p.image_local ? 0.25 : 0.0);
    if (!best || p.score > best->score) best = p;
  }
  if (best) return *best;
  if (limited)
    return Error(Code::kResourceExhausted, "every node that can take a {} sandbox is at its creation rate",
                 spec.substrate);
  if (nodes.empty()) return Error(Code::kUnavailable, "no node is known to this front");
  if (pinned && elsewhere == nodes.size())
    return Error(Code::kNotFound, "no node holds {} (a memory snapshot stays on the node that took it)", spec.image);
  std::string why;
  auto add = [&](size_t n, const char* what) {
    if (n) why += fmt::format("{}{} {}", why.empty() ? "" : ", ", n, what);
  };
  add(not_ready, "not ready");
  add(no_substrate, fmt::format("without the {} substrate", spec.substrate).c_str());
  add(full, "full");
  add(no_memory, "without the memory asked for");
  add(elsewhere, fmt::format("without {}", spec.image).c_str());
  return Error(Code::kUnavailable, "no node can take a {} sandbox now: of {} node(s), {}", spec.substrate,
               nodes.size(), why);
}

}  // namespace paddock::fleet
