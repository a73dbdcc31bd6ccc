// The warm pool builds at the lowest CPU priority; what a handed-over sandbox
// keeps for its life (its init client's reader thread) must not inherit that
// priority, or under load every exec reply and every destroy waits behind all
// other runnable threads. Real threads, a real container substrate with a
// warm pool (namespaces, overlayfs, cgroups); needs root.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "sandbox/container/container_substrate.h"
#include "sandbox/manager.h"
#include "sandbox/warm_pool.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;

namespace paddock {
namespace {

// The nice value of thread `tid` of this process (field 19 of its stat).
int ThreadNice(const std::string& tid) {
  std::ifstream in("/proc/self/task/" + tid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));  // after "pid (comm) "
  std::string field;
  for (int i = 3; i <= 19; ++i) rest >> field;
  return std::stoi(field);
}

int ThreadsAtNice(int nice) {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/task"))
    if (ThreadNice(e.path().filename()) == nice) ++n;
  return n;
}

TEST(NormalPriorityScope, ThreadsStartedInsideRunAtNormalPriorityAndTheCallerGetsItsOwnBack) {
  int inside = -100, outside = -100, caller_after = -100;
  std::thread low([&] {
    ASSERT_EQ(setpriority(PRIO_PROCESS, 0, 19), 0);
    {
      NormalPriorityScope normal;
      std::thread t([&] { inside = getpriority(PRIO_PROCESS, 0); });
      t.join();
    }
    caller_after = getpriority(PRIO_PROCESS, 0);
    std::thread t([&] { outside = getpriority(PRIO_PROCESS, 0); });
    t.join();
  });
  low.join();
  EXPECT_EQ(inside, 0);
  EXPECT_EQ(caller_after, 19);
  EXPECT_EQ(outside, 19);
}

TEST(NormalPriorityScope, LeavesANormalOrRaisedPriorityAlone) {
  // On a thread of its own set to normal (0) and to raised (-5) priority: the
  // suite itself may run niced (`nice make test`), which the scope would raise.
  for (int prio : {0, -5}) {
    int before = 1000, inside = 1000, after = 1000;
    std::thread t([&] {
      if (setpriority(PRIO_PROCESS, 0, prio) != 0) return;
      before = getpriority(PRIO_PROCESS, 0);
      {
        NormalPriorityScope normal;
        inside = getpriority(PRIO_PROCESS, 0);
      }
      after = getpriority(PRIO_PROCESS, 0);
    });
    t.join();
    if (before == 1000) GTEST_SKIP() << "cannot set a thread's priority to " << prio << " here (needs root)";
    EXPECT_EQ(before, prio);
    EXPECT_EQ(inside, prio);
    EXPECT_EQ(after, prio);
  }
}

TEST(WarmPoolPriority, HandedOverContainersKeepNoThreadAtTheLowestPriority) {
  char tmpl[] = "/var/tmp/paddock-warm-prio-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  chmod(dir.c_str(), 0755);
  SubstrateEnv env;
  env.state_dir = dir + "/state";
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 2;
  fs::create_directories(env.state_dir);
  {
    SandboxManager manager(ManagerOptions{});
    manager.RegisterSubstrate(MakeContainerSubstrate(env));
    SandboxSpec spec;
    spec.substrate = "container";
    spec.image = testing::EnsureBusyboxRootfs();
    auto first = manager.Create(spec);  // cold; asks the pool for two more
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    auto containers = [&] {
      size_t n = 0;
      for (const auto& e : fs::directory_iterator(env.state_dir + "/containers")) n += e.is_directory();
      return n;
    };
    for (int i = 0; i < 400 && containers() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    ASSERT_EQ(containers(), 3u);
    auto second = manager.Create(spec);  // handed over from the pool
    ASSERT_TRUE(second.ok()) << second.status().ToString();
    for (int i = 0; i < 400 && containers() < 4; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    ASSERT_EQ(containers(), 4u);  // one sandbox built in the foreground, three by the pool
    // Only the pool's filler thread itself runs at the lowest priority; the
    // reader threads of the three pool-built sandboxes run at normal priority.
    EXPECT_LE(ThreadsAtNice(19), 1);
    ExecRequest req;
    req.shell = "cut -d' ' -f19 /proc/self/stat";
    auto r = manager.Get(second->id).value()->Exec(req, nullptr);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->stdout_data, "0\n") << "a command in a handed-over container runs at normal priority";
    manager.Shutdown();
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace paddock
