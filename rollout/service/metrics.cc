#include "rollout/service/metrics.h"

#include <fmt/format.h>

#include "rollout/service/sandbox_service.h"

namespace paddock::service {

namespace {

std::string Number(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v))) return std::to_string(static_cast<int64_t>(v));
  return fmt::format("{:.6g}", v);
}

}  // namespace

std::string EscapeLabel(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

void AppendMetric(std::string& out, const std::string& name, const char* type, const std::string& help,
                  const std::vector<std::pair<std::string, double>>& samples) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  for (const auto& [labels, value] : samples)
    out += fmt::format("{}{}{}{} {}\n", name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}",
                       Number(value));
}

void AppendHistogram(std::string& out, const std::string& name, const std::string& help,
                     const LatencyHistogram::Counts& c) {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < LatencyHistogram::kBounds.size(); ++i) {
    cumulative += c.per_bucket[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, Number(LatencyHistogram::kBounds[i]), cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, c.count, name,
                     Number(c.sum_seconds), name, c.count);
}

MetricsEndpoint::MetricsEndpoint(SandboxManager& manager, std::function<void(std::string&)> extra)
    : manager_(manager), extra_(std::move(extra)) {}

std::string MetricsEndpoint::Render() const {
  std::string out;
  AppendMetric(out, "paddock_sandboxes_live", "gauge", "Live sandboxes.", {{"", manager_.live()}});
  AppendMetric(out, "paddock_sandboxes_max", "gauge", "Cap on live sandboxes (--max-sandboxes).",
               {{"", manager_.max_sandboxes()}});
  std::vector<std::pair<std::string, double>> by_substrate;
  for (const auto& [name, n] : manager_.CountBySubstrate())
    by_substrate.emplace_back(fmt::format("substrate=\"{}\"", EscapeLabel(name)), n);
  if (!by_substrate.empty())
    AppendMetric(out, "paddock_sandboxes_live_by_substrate", "gauge", "Live sandboxes per substrate.", by_substrate);
  AppendMetric(out, "paddock_sandbox_creates_total", "counter", "Sandboxes created.",
               {{"", static_cast<double>(manager_.creates_total())}});
  AppendMetric(out, "paddock_sandbox_create_failures_total", "counter", "Sandbox creates that failed.",
               {{"", static_cast<double>(manager_.create_failures_total())}});
  AppendHistogram(out, "paddock_sandbox_create_seconds", "Time to create a sandbox (warm hand-over or build).",
                  manager_.create_latency().Read());
  AppendHistogram(out, "paddock_exec_seconds", "Time of one exec in a sandbox, as its caller sees it.",
                  manager_.exec_latency().Read());
  AppendMetric(out, "paddock_draining", "gauge", "1 while the daemon takes no new sandboxes.",
               {{"", manager_.draining() ? 1.0 : 0.0}});
  AppendMetric(out, "paddock_daemon_rss_bytes", "gauge", "Resident memory of paddockd.",
               {{"", static_cast<double>(DaemonRssBytes())}});
  if (extra_) extra_(out);
  return out;
}

policy::engine::server::HttpReply MetricsEndpoint::Handle(const std::string& method, const std::string& target,
                                                          const std::string&) {
  const std::string path = target.substr(0, target.find('?'));
  if (path != "/metrics") return {404, "text/plain", "not found: paddockd serves /metrics only\n"};
  if (method != "GET" && method != "HEAD") return {405, "text/plain", "GET /metrics\n"};
  return {200, "text/plain; version=0.0.4", Render()};
}

}  // namespace paddock::service
