#include "paddock/nodes.h"

#include "node.grpc.pb.h"
#include "paddock/grpc_call.h"

namespace paddock::client {

namespace {
constexpr std::chrono::milliseconds kNodeCallTimeout{10000};
}

Result<v1::NodeListResponse> ListNodes(const Client& client) {
  auto stub = v1::Nodes::NewStub(client.channel());
  auto ctx = internal::CallContext(client.options(), kNodeCallTimeout);
  v1::NodeListResponse resp;
  PADDOCK_RETURN_IF_ERROR(internal::FromGrpc(stub->List(ctx.get(), v1::NodeListRequest(), &resp)));
  return resp;
}

Result<v1::NodeInfo> DrainNode(const Client& client, const std::string& address) {
  auto stub = v1::Nodes::NewStub(client.channel());
  auto ctx = internal::CallContext(client.options(), kNodeCallTimeout);
  v1::NodeDrainRequest req;
  req.set_address(address);
  v1::NodeDrainResponse resp;
  PADDOCK_RETURN_IF_ERROR(internal::FromGrpc(stub->Drain(ctx.get(), req, &resp)));
  return resp.node();
}

}  // namespace paddock::client
