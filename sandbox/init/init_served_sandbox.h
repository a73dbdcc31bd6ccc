// A sandbox whose own paddock-init serves its files (container, microvm): the
// file calls and the liveness check go to the init client while the sandbox
// lives. Subclasses start `client_` and reset it in Destroy.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sandbox/init/init_client.h"
#include "sandbox/sandbox.h"

namespace paddock {

class InitServedSandbox : public Sandbox {
 public:
  const std::string& id() const override { return id_; }

  Status WriteFile(const std::string& path, std::string_view content, uint32_t mode,
                   bool make_parents) override {
    if (!client_) return Destroyed();
    return client_->WriteFile(path, content, mode, make_parents);
  }
  Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) override {
    if (!client_) return Destroyed();
    return client_->ReadFile(path, max_bytes);
  }
  Result<std::vector<FileInfo>> ListDir(const std::string& path) override {
    if (!client_) return Destroyed();
    return client_->ListDir(path);
  }
  Result<FileInfo> Stat(const std::string& path) override {
    if (!client_) return Destroyed();
    return client_->Stat(path);
  }
  bool Alive() const override { return client_ && client_->alive(); }

 protected:
  explicit InitServedSandbox(std::string id) : id_(std::move(id)) {}
  // What every call on a destroyed sandbox answers.
  Status Destroyed() const { return Error(Code::kUnavailable, "sandbox {} is destroyed", id_); }

  const std::string id_;
  std::unique_ptr<InitClient> client_;
};

}  // namespace paddock
