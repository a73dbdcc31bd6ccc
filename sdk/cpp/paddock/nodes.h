// The C++ client of a front's Nodes API (proto/node.proto): the nodes its
// sandboxes are placed on, and draining one. Messages are the generated
// paddock::v1 types; errors are paddock::Status with the daemon's code and
// message (FAILED_PRECONDITION from a daemon that is not a front).
#pragma once

#include <string>

#include "node.pb.h"
#include "paddock/client.h"
#include "sandbox/base/status.h"

namespace paddock::client {

Result<v1::NodeListResponse> ListNodes(const Client& client);
Result<v1::NodeInfo> DrainNode(const Client& client, const std::string& address);

}  // namespace paddock::client
