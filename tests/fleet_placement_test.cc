// Placement and node discovery of a front (rollout/fleet), without daemons:
// which node a create goes to, and why none when none can take it.
#include <unistd.h>

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "rollout/fleet/node_discovery.h"
#include "rollout/fleet/placement.h"

namespace paddock::fleet {
namespace {

using ::testing::HasSubstr;

NodeView Ready(const std::string& addr, uint32_t live, uint32_t max) {
  NodeView v;
  v.address = addr;
  v.ready = true;
  v.substrates = {"container", "function"};
  v.live = live;
  v.max = max;
  v.mem_available_bytes = 8ull << 30;
  return v;
}

SandboxSpec Spec(const std::string& substrate = "container", const std::string& image = "busybox:1") {
  SandboxSpec s;
  s.substrate = substrate;
  s.image = image;
  return s;
}

TEST(FleetPlacement, TheNodeWithMostRoomWinsAndPendingCreatesCount) {
  std::vector<NodeView> nodes = {Ready("a:1", 8, 10), Ready("b:1", 2, 10), Ready("c:1", 5, 10)};
  auto p = ChooseNode(nodes, Spec());
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(nodes[p->index].address, "b:1");
  nodes[1].pending = 5;  // b has creates in flight: c has more room now
  p = ChooseNode(nodes, Spec());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nodes[p->index].address, "c:1");
}

TEST(FleetPlacement, ImageLocalityWinsOverASmallDifferenceInRoom) {
  std::vector<NodeView> nodes = {Ready("a:1", 3, 10), Ready("b:1", 4, 10)};
  nodes[1].has_image = true;
  auto p = ChooseNode(nodes, Spec());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nodes[p->index].address, "b:1");
  EXPECT_TRUE(p->image_local);
  // ... but not over a node that is nearly full.
  nodes[1].live = 9;
  p = ChooseNode(nodes, Spec());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nodes[p->index].address, "a:1");
}

TEST(FleetPlacement, OnlyReadyNodesWithTheSubstrateRoomAndMemoryQualify) {
  std::vector<NodeView> nodes = {Ready("full:1", 10, 10), Ready("novm:1", 0, 10), Ready("lost:1", 0, 10),
                                 Ready("small:1", 0, 10)};
  nodes[0].substrates.insert("microvm");
  nodes[2].ready = false;
  nodes[3].substrates.insert("microvm");
  nodes[3].mem_available_bytes = 1 << 20;
  SandboxSpec vm = Spec("microvm");
  vm.limits.memory_bytes = 512 << 20;
  auto p = ChooseNode(nodes, vm);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), Code::kUnavailable);
  EXPECT_THAT(p.status().message(), HasSubstr("of 4 node(s)"));
  EXPECT_THAT(p.status().message(), HasSubstr("1 not ready"));
  EXPECT_THAT(p.status().message(), HasSubstr("1 without the microvm substrate"));
  EXPECT_THAT(p.status().message(), HasSubstr("1 full"));
  EXPECT_THAT(p.status().message(), HasSubstr("1 without the memory asked for"));
  vm.limits.memory_bytes = 0;
  p = ChooseNode(nodes, vm);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nodes[p->index].address, "small:1");
  EXPECT_FALSE(ChooseNode({}, Spec()).ok());
}

// A microVM memory snapshot stays on the node that took it: a create from it
// goes there however much room others have, and is refused (NOT_FOUND, not a
// wait) when no ready node holds it.
TEST(FleetPlacement, AMemorySnapshotGoesOnlyToTheNodeThatHoldsIt) {
  auto spec = Spec("microvm", "microvm-snapshot:warm");
  std::vector<NodeView> nodes = {Ready("a:1", 0, 10), Ready("b:1", 9, 10)};
  for (auto& n : nodes) n.substrates.insert("microvm");
  nodes[1].has_image = true;
  auto p = ChooseNode(nodes, spec);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(nodes[p->index].address, "b:1");
  nodes[1].live = 10;  // the holder is full: wait for it, do not go elsewhere
  p = ChooseNode(nodes, spec);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), Code::kUnavailable);
  EXPECT_THAT(p.status().message(), HasSubstr("1 full"));
  EXPECT_THAT(p.status().message(), HasSubstr("1 without microvm-snapshot:warm"));
  nodes[1].has_image = false;
  p = ChooseNode(nodes, spec);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), Code::kNotFound);
  EXPECT_THAT(p.status().message(), HasSubstr("no node holds microvm-snapshot:warm"));
  // A plain image is still only a preference.
  p = ChooseNode(nodes, Spec());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nodes[p->index].address, "a:1");
}

TEST(FleetPlacement, ARateLimitedFleetSaysWaitNotRefuse) {
  std::vector<NodeView> nodes = {Ready("a:1", 0, 10), Ready("b:1", 0, 10)};
  nodes[0].rate_limited = nodes[1].rate_limited = true;
  auto p = ChooseNode(nodes, Spec());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), Code::kResourceExhausted);
  nodes[1].rate_limited = false;
  p = ChooseNode(nodes, Spec());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nodes[p->index].address, "b:1");
}

TEST(FleetDiscovery, StaticListsAreValidatedSortedAndDeduplicated) {
  auto d = NodeDiscovery::Parse(" 10.0.0.2:7443, node-a.example:7443,10.0.0.2:7443 ,[::1]:9");
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto r = d->Resolve();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, (std::vector<std::string>{"10.0.0.2:7443", "[::1]:9", "node-a.example:7443"}));
  for (const char* bad : {"", "host", "host:0", "host:70000", "ho st:1", "a:1,b", "dns:name", "dns::80", "file:",
                          "x;rm -rf:1"}) {
    auto e = NodeDiscovery::Parse(bad);
    EXPECT_FALSE(e.ok()) << bad;
    if (!e.ok()) EXPECT_EQ(e.status().code(), Code::kInvalidArgument) << bad;
  }
}

TEST(FleetDiscovery, DnsNamesResolveOrSayWhyAndFilesAreReadAgain) {
  auto local = NodeDiscovery::Parse("dns:localhost:7443");
  ASSERT_TRUE(local.ok());
  auto r = local->Resolve();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(r->empty());
  for (const auto& a : *r) EXPECT_THAT(a, HasSubstr(":7443"));

  auto none = NodeDiscovery::Parse("dns:no-such-node.invalid:7443");
  ASSERT_TRUE(none.ok());
  auto e = none->Resolve();
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kUnavailable);
  EXPECT_THAT(e.status().message(), HasSubstr("no-such-node.invalid"));

  std::string path = "/tmp/paddock-fleet-nodes-" + std::to_string(::getpid());
  std::ofstream(path) << "# the nodes\n127.0.0.1:7001\n\n127.0.0.1:7002  # second\n";
  auto f = NodeDiscovery::Parse("file:" + path);
  ASSERT_TRUE(f.ok());
  auto fr = f->Resolve();
  ASSERT_TRUE(fr.ok()) << fr.status().message();
  EXPECT_EQ(*fr, (std::vector<std::string>{"127.0.0.1:7001", "127.0.0.1:7002"}));
  std::ofstream(path) << "127.0.0.1:7003\nnot an address\n";
  fr = f->Resolve();
  ASSERT_FALSE(fr.ok());
  EXPECT_THAT(fr.status().message(), HasSubstr("line 2"));
  ::unlink(path.c_str());
  EXPECT_EQ(f->Resolve().status().code(), Code::kUnavailable);
}

}  // namespace
}  // namespace paddock::fleet
