#include "rollout/fleet/node_transport.h"

#include "paddock/client.h"
#include "proto/api_version.h"
#include "rollout/fleet/fleet.h"
#include "rollout/service/front_leases.h"

namespace paddock::fleet {

namespace {

class GrpcConnection final : public NodeConnection {
 public:
  explicit GrpcConnection(client::Client c) : c_(std::move(c)) {}

  Result<client::DaemonStats> Report(std::chrono::milliseconds timeout) override { return c_.Stats("", timeout); }
  Result<client::SandboxInfo> Create(const SandboxSpec& spec) override { return c_.Create(spec); }
  Result<ExecResult> Exec(const std::string& id, const ExecRequest& req, const OutputCallback& on_output,
                          client::ExecCancel* cancel) override {
    return c_.ExecStream(id, req, on_output, cancel);
  }
  Status WriteFile(const std::string& id, const std::string& path, std::string_view content, uint32_t mode,
                   bool make_parents) override {
    auto r = c_.WriteFile(id, path, content, mode, make_parents);
    return r.ok() ? Status::Ok() : r.status();
  }
  Result<std::string> ReadFile(const std::string& id, const std::string& path, uint64_t max_bytes) override {
    return c_.ReadFile(id, path, max_bytes);
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& id, const std::string& path) override {
    return c_.ListDir(id, path);
  }
  Result<FileInfo> Stat(const std::string& id, const std::string& path) override { return c_.Stat(id, path); }
  Result<Usage> GetUsage(const std::string& id) override {
    auto r = c_.Stats(id);
    if (!r.ok()) return r.status();
    return r->usage;
  }
  Status Destroy(const std::string& id) override { return c_.Destroy(id); }
  Result<client::SnapshotInfo> Snapshot(const std::string& id, const std::string& name) override {
    return c_.SnapshotImage(id, name);
  }

  Result<PauseResult> Pause(const std::string& id) override {
    auto r = c_.Pause(id);
    if (!r.ok()) return r.status();
    return PauseResult{*r, {}};  // the saved state lies on the node, not here
  }
  Status Resume(const std::string& id) override { return c_.Resume(id); }
  Result<std::vector<client::SandboxInfo>> Fork(const std::string& id, uint32_t count) override {
    return c_.Fork(id, count);
  }

  client::Client* GrpcClient() override { return &c_; }

 private:
  client::Client c_;
};

class GrpcTransport final : public NodeTransport {
 public:
  Result<std::shared_ptr<NodeConnection>> Connect(const std::string& address, const FleetOptions& options) override {
    client::ClientOptions o;
    o.tcp_target = address;
    o.token = options.token;
    o.tls = options.tls;
    o.tls_ca_file = options.tls_ca_file;
    o.tls_cert_file = options.tls_cert_file;
    o.tls_key_file = options.tls_key_file;
    o.connect_timeout = options.heartbeat;
    o.call_timeout = std::chrono::milliseconds(120000);
    o.metadata = {{service::kFrontIdMetadata, options.front_id},
                  {service::kFrontEpochMetadata, std::to_string(options.epoch)},
                  {service::kFrontApiMetadata, std::to_string(kApiVersion)}};
    auto made = client::Client::Connect(o);
    if (!made.ok()) return made.status();
    return std::shared_ptr<NodeConnection>(std::make_shared<GrpcConnection>(std::move(*made)));
  }
};

}  // namespace

std::shared_ptr<NodeTransport> GrpcNodeTransport() {
  static const std::shared_ptr<NodeTransport> t = std::make_shared<GrpcTransport>();
  return t;
}

}  // namespace paddock::fleet
