// Which node gets a new sandbox: a pure choice over what the nodes last
// reported, so it can be tested and benchmarked without nodes.
//
// A node qualifies when it is ready, speaks this front's API version, can run
// the substrate, has a free slot (its cap less its live sandboxes and the
// creates this front has in flight there) and room for the memory limit asked
// for. Among those: most free slots (as a share of the node's cap) first, with
// a bonus for holding the image already (no fetch before the first exec), so
// that load spreads and images stay where they are used.
#pragma once

#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "sandbox/types.h"

namespace paddock::fleet {

struct NodeView {
  std::string address;
  bool ready = false;  // answering heartbeats, same API version, not draining
  std::set<std::string> substrates;
  uint32_t live = 0, max = 0;  // as last reported
  uint32_t pending = 0;        // this front's creates in flight there
  uint64_t mem_available_bytes = 0;
  bool has_image = false;      // holds the image asked for
  bool rate_limited = false;   // its creation rate is spent for now
};

struct Placement {
  size_t index = 0;      // into the views
  bool image_local = false;
  double score = 0;
};

// The best node for `spec`. UNAVAILABLE when no node qualifies (the message
// says why for each kind of refusal); RESOURCE_EXHAUSTED when nodes qualify but
// every one of them is rate-limited right now (the caller waits and asks again).
// A microVM memory snapshot (kMemorySnapshotPrefix) goes only to a node that
// holds it: NOT_FOUND when none does.
Result<Placement> ChooseNode(const std::vector<NodeView>& nodes, const SandboxSpec& spec);

}  // namespace paddock::fleet
