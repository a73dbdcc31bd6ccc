// Translation between the API's protobuf messages and the domain types of the
// sandbox layer (sandbox/types.h, sandbox/manager.h). Pure functions: no
// validation here (SandboxService does that) and no gRPC status.
#pragma once

#include "sandbox.pb.h"
#include "sandbox/manager.h"
#include "sandbox/types.h"

namespace paddock::service {

// Requests: proto -> domain.
SandboxSpec FromProto(const v1::SandboxSpec& p);
ExecRequest FromProto(const v1::ExecRequest& p);

// Answers: domain -> proto.
void ToProto(const Limits& d, v1::Limits* p);
void ToProto(const SandboxInfo& d, v1::SandboxInfo* p);
void ToProto(const ExecResult& d, v1::ExecResult* p);
void ToProto(const FileInfo& d, v1::FileInfo* p);
void ToProto(const Usage& d, v1::SandboxUsage* p);

}  // namespace paddock::service
