#include "node_commands.h"

#include <chrono>
#include <cstdio>
#include <memory>

#include "cli_format.h"
#include "paddock/nodes.h"

namespace paddock::cli {

namespace {

using nlohmann::json;

int Fail(bool as_json, const Status& st) {
  std::fprintf(stderr, "paddock: %s\n", st.message().c_str());
  if (as_json)
    std::printf("%s\n", Dump({{"error", {{"code", CodeName(st.code())}, {"message", st.message()}}}}).c_str());
  return 1;
}

json ToJson(const v1::NodeInfo& n) {
  return {{"address", n.address()},
          {"state", n.state()},
          {"detail", n.detail()},
          {"substrates", std::vector<std::string>(n.substrates().begin(), n.substrates().end())},
          {"live_sandboxes", n.live_sandboxes()},
          {"max_sandboxes", n.max_sandboxes()},
          {"placed", n.placed()},
          {"placed_total", n.placed_total()},
          {"mem_available_bytes", n.mem_available_bytes()},
          {"cpus", n.cpus()},
          {"version", n.version()},
          {"api_version", n.api_version()},
          {"images", n.images()},
          {"last_heartbeat_unix_ms", n.last_heartbeat_unix_ms()}};
}

std::string Heartbeat(int64_t unix_ms) {
  if (unix_ms == 0) return "never";
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  return fmt::format("{:.1f}s ago", std::max<int64_t>(0, now - unix_ms) / 1000.0);
}

int RunLs(const client::Client& c, bool as_json) {
  auto r = client::ListNodes(c);
  if (!r.ok()) return Fail(as_json, r.status());
  if (as_json) {
    json nodes = json::array();
    for (const auto& n : r->nodes()) nodes.push_back(ToJson(n));
    std::printf("%s\n", Dump({{"front_id", r->front_id()}, {"epoch", r->epoch()}, {"nodes", nodes}}).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ADDRESS", "STATE", "SUBSTRATES", "LIVE", "PLACED", "MEM FREE", "CPUS", "IMAGES", "VERSION", "HEARTBEAT"}};
  std::vector<std::string> details;
  for (const auto& n : r->nodes()) {
    std::string subs;
    for (const auto& s : n.substrates()) subs += (subs.empty() ? "" : ",") + s;
    rows.push_back({n.address(), n.state(), subs.empty() ? "-" : subs,
                    fmt::format("{}/{}", n.live_sandboxes(), n.max_sandboxes()), std::to_string(n.placed()),
                    FormatBytes(n.mem_available_bytes()), std::to_string(n.cpus()), std::to_string(n.images()),
                    n.version().empty() ? "-" : n.version(), Heartbeat(n.last_heartbeat_unix_ms())});
    if (!n.detail().empty()) details.push_back(n.address() + ": " + n.detail());
  }
  std::printf("front %s (epoch %lld), %d node(s)\n%s", r->front_id().c_str(), static_cast<long long>(r->epoch()),
              r->nodes_size(), FormatTable(rows).c_str());
  for (const auto& d : details) std::printf("  %s\n", d.c_str());
  return 0;
}

int RunDrain(const client::Client& c, const std::string& address, bool as_json) {
  auto r = client::DrainNode(c, address);
  if (!r.ok()) return Fail(as_json, r.status());
  if (as_json) {
    std::printf("%s\n", Dump(ToJson(*r)).c_str());
    return 0;
  }
  std::printf("node %s: %s; it takes no new sandboxes (%u of this front's still there)\n", r->address().c_str(),
              r->state().c_str(), r->placed());
  return 0;
}

}  // namespace

void RegisterNodeCommands(CLI::App& app, std::function<Result<client::Client>()> connect, const bool& json,
                          std::optional<int>& rc) {
  CLI::App* node = app.add_subcommand("node", "a front's nodes (paddockd --nodes): list them, drain one");
  node->require_subcommand(1);
  auto run = [connect, &json, &rc](std::function<int(const client::Client&)> body) {
    auto c = connect();
    rc = c.ok() ? body(*c) : Fail(json, c.status());
  };
  node->add_subcommand("ls", "list the nodes: state (ready|draining|lost|connecting|refused), capacity, heartbeat")
      ->callback([run, &json] { run([&](const client::Client& c) { return RunLs(c, json); }); });
  auto address = std::make_shared<std::string>();
  CLI::App* drain = node->add_subcommand("drain", "place no new sandboxes on a node (those there run on)");
  drain->add_option("address", *address, "the node as `paddock node ls` shows it (host:port)")->required();
  drain->callback([run, address, &json] { run([&](const client::Client& c) { return RunDrain(c, *address, json); }); });
}

}  // namespace paddock::cli
