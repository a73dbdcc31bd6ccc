// Prometheus text exposition of a paddockd (front or node) at GET /metrics,
// served by the small HTTP server of policy/engine/server (paddockd
// --metrics-listen HOST:PORT). Read-only and secret-free: counts, gauges and
// latency histograms, never ids, paths or commands.
//
// Families: paddock_sandboxes_live / _max, paddock_sandbox_creates_total,
// paddock_sandbox_create_failures_total, paddock_sandbox_create_seconds and
// paddock_exec_seconds (histograms), paddock_daemon_rss_bytes, paddock_draining;
// plus what `extra` appends (the rollout engine, the log's syncs, a front's nodes).
#pragma once

#include <functional>
#include <string>

#include "policy/engine/server/http_server.h"
#include "sandbox/latency_histogram.h"
#include "sandbox/manager.h"

namespace paddock::service {

// Appends one family: "# HELP", "# TYPE" and its samples.
void AppendMetric(std::string& out, const std::string& name, const char* type, const std::string& help,
                  const std::vector<std::pair<std::string, double>>& samples);  // labels ("" or `k="v"`) → value
void AppendHistogram(std::string& out, const std::string& name, const std::string& help,
                     const LatencyHistogram::Counts& counts);
// A label value escaped for the exposition format.
std::string EscapeLabel(const std::string& value);

class MetricsEndpoint final : public policy::engine::server::HttpHandler {
 public:
  MetricsEndpoint(SandboxManager& manager, std::function<void(std::string&)> extra);
  policy::engine::server::HttpReply Handle(const std::string& method, const std::string& target,
                                           const std::string& body) override;
  std::string Render() const;

 private:
  SandboxManager& manager_;
  std::function<void(std::string&)> extra_;
};

}  // namespace paddock::service
