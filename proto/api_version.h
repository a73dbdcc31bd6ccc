// The version of the gRPC API this build speaks. A front (rollout/fleet) places
// sandboxes only on nodes reporting the same kApiVersion in Stats: a change to
// the Sandboxes API that an older daemon would misread raises it.
#pragma once

#include <cstdint>

namespace paddock {

inline constexpr uint32_t kApiVersion = 2;
inline constexpr const char* kPaddockVersion = "0.4.0";

}  // namespace paddock
