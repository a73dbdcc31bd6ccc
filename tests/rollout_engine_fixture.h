// The rollout engine in process on real parts, for the rollout suites: a
// SandboxManager with the function and container substrates over the busybox
// test rootfs, a real trajectory log (RocksDB in a temp dir), the real V4
// tokenizer and codec, the scripted in-process policy.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/v4/tokenizer/tokenizer.h"
#include "replay/trajectory_log.h"
#include "rollout/engine/rollout_engine.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "tests/support/test_rootfs.h"

namespace paddock {

class RolloutEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!rootfs_) rootfs_ = new std::string(testing::EnsureBusyboxRootfs());
  }

  void SetUp() override {
    if (!std::filesystem::exists(v4::Tokenizer::DefaultPath())) GTEST_SKIP() << "no tokenizer at " << v4::Tokenizer::DefaultPath();
    dir_ = std::filesystem::temp_directory_path() / ("rollout-engine-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/state");
    SubstrateEnv env;
    env.state_dir = dir_ + "/state";
    env.init_path = testing::BuiltBinary("paddock-init");
    env.warm_pool_size = 4;
    manager_ = std::make_unique<SandboxManager>(manager_options_);
    manager_->RegisterSubstrate(MakeFunctionSubstrate(env));
    manager_->RegisterSubstrate(MakeContainerSubstrate(env));
    replay::LogOptions lo;
    lo.dir = dir_ + "/log";
    lo.reserve_bytes = 0;
    auto log = replay::TrajectoryLog::Open(lo);
    ASSERT_TRUE(log.ok()) << log.status().message();
    log_ = std::move(*log);
    engine_ = std::make_unique<rollout::RolloutEngine>(*manager_, *log_, engine_options_);
  }
  void TearDown() override {
    engine_.reset();
    if (manager_) manager_->Shutdown();
    manager_.reset();
    log_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  v1::StartRolloutRequest Request(const std::string& tasks, const std::string& script, uint32_t concurrency) {
    v1::StartRolloutRequest req;
    req.set_tasks_jsonl(tasks);
    req.mutable_policy()->set_kind("scripted");
    req.mutable_policy()->set_script(script);
    req.set_concurrency(concurrency);
    return req;
  }

  v1::RolloutProgress WaitDone(const std::string& id, std::chrono::seconds limit = std::chrono::seconds(120)) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      auto p = engine_->Progress(id);
      EXPECT_TRUE(p.ok());
      // waiting_for_nodes: running, every episode waiting for a sandbox.
      if (p.ok() && p->state() != "running" && p->state() != "waiting_for_nodes") return *p;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "rollout " << id << " did not stop within " << limit.count() << " s";
    return {};
  }

  std::vector<nlohmann::json> Export(const std::string& id) {
    std::vector<nlohmann::json> out;
    Status st = engine_->Export(id, false, [&](const std::string& line) {
      out.push_back(nlohmann::json::parse(line));
      return true;
    });
    EXPECT_TRUE(st.ok()) << st.message();
    return out;
  }

  static inline std::string* rootfs_ = nullptr;
  // What SetUp builds with; a derived fixture may change them in its constructor.
  ManagerOptions manager_options_{};
  rollout::EngineOptions engine_options_{.blocking_threads = 16};
  std::string dir_;
  std::unique_ptr<SandboxManager> manager_;
  std::unique_ptr<replay::TrajectoryLog> log_;
  std::unique_ptr<rollout::RolloutEngine> engine_;
};

}  // namespace paddock
