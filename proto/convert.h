// Translation between the API's protobuf messages (proto/sandbox.proto,
// paddock::v1) and the plain domain types of sandbox/types.h, in both
// directions. Shared by the daemon's gRPC edge (rollout/service) and the C++
// client (sdk/cpp). Pure field-for-field copies: no validation (the service
// does that), no gRPC, and nothing that belongs to one side only — the
// request's sandbox_id, ExecRequest::stream and the two SandboxInfo types are
// handled where they are used.
#pragma once

#include "sandbox.pb.h"
#include "sandbox/types.h"

namespace paddock::v1conv {

Limits FromProto(const v1::Limits& p);
void ToProto(const Limits& d, v1::Limits* p);

SandboxSpec FromProto(const v1::SandboxSpec& p);
void ToProto(const SandboxSpec& d, v1::SandboxSpec* p);

// Leaves ExecRequest::stream false / v1::ExecRequest::sandbox_id untouched.
ExecRequest FromProto(const v1::ExecRequest& p);
void ToProto(const ExecRequest& d, v1::ExecRequest* p);

ExecResult FromProto(const v1::ExecResult& p);
void ToProto(const ExecResult& d, v1::ExecResult* p);

// paddock::FileType and v1::FileType share their numbers.
FileType FromProto(v1::FileType p);
v1::FileType ToProto(FileType d);

FileInfo FromProto(const v1::FileInfo& p);
void ToProto(const FileInfo& d, v1::FileInfo* p);

Usage FromProto(const v1::SandboxUsage& p);
void ToProto(const Usage& d, v1::SandboxUsage* p);

}  // namespace paddock::v1conv
