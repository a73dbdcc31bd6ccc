#include "policy/backends/connection_pool.h"

#include <utility>

namespace paddock::policy {

std::unique_ptr<Connection> ConnectionPool::Acquire(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end()) return nullptr;
  auto now = std::chrono::steady_clock::now();
  while (!it->second.empty()) {
    // Most recently used first: the least likely to have been closed by the server.
    Idle idle = std::move(it->second.back());
    it->second.pop_back();
    if (now - idle.since > options_.max_idle_time || !idle.conn->tcp().socket().is_open()) {
      idle.conn->Close();
      continue;
    }
    return std::move(idle.conn);
  }
  return nullptr;
}

void ConnectionPool::Release(const std::string& key, std::unique_ptr<Connection> conn) {
  auto& list = idle_[key];
  if (list.size() >= options_.max_idle_per_endpoint) {
    conn->Close();
    return;
  }
  conn->tcp().expires_never();
  list.push_back(Idle{std::move(conn), std::chrono::steady_clock::now()});
}

void ConnectionPool::Clear() {
  for (auto& [key, list] : idle_) {
    for (auto& idle : list) idle.conn->Close();
  }
  idle_.clear();
}

}  // namespace paddock::policy
