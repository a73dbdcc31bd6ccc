// Internal to the C++ client library (not part of its public headers): what
// every service client needs for one gRPC call, kept in one place so the
// Sandboxes/Log/Images client and the Rollouts client cannot drift apart.
#pragma once

#include <chrono>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "paddock/client.h"
#include "sandbox/base/status.h"

namespace paddock::client::internal {

// grpc::StatusCode and paddock::Code share values 0..16; others are UNKNOWN.
Status FromGrpc(const grpc::Status& st);

// A fresh context for one call: a deadline `timeout` from now (none when
// `timeout` is zero, for streams that last as long as their subject) and the
// bearer token when the options carry one.
std::unique_ptr<grpc::ClientContext> CallContext(const ClientOptions& options, std::chrono::milliseconds timeout);

}  // namespace paddock::client::internal
