#include "policy/backends/connection_pool.h"

#include <utility>

namespace paddock::policy {

std::unique_ptr<boost::beast::tcp_stream> ConnectionPool::Acquire(const std::string& authority) {
  auto it = idle_.find(authority);
  if (it == idle_.end()) return nullptr;
  auto now = std::chrono::steady_clock::now();
  while (!it->second.empty()) {
    // Most recently used first: the least likely to have been closed by the server.
    Idle idle = std::move(it->second.back());
    it->second.pop_back();
    if (now - idle.since > options_.max_idle_time || !idle.stream->socket().is_open()) {
      boost::system::error_code ignored;
      idle.stream->socket().close(ignored);
      continue;
    }
    return std::move(idle.stream);
  }
  return nullptr;
}

void ConnectionPool::Release(const std::string& authority,
                             std::unique_ptr<boost::beast::tcp_stream> stream) {
  auto& list = idle_[authority];
  if (list.size() >= options_.max_idle_per_endpoint) {
    boost::system::error_code ignored;
    stream->socket().close(ignored);
    return;
  }
  stream->expires_never();
  list.push_back(Idle{std::move(stream), std::chrono::steady_clock::now()});
}

void ConnectionPool::Clear() {
  for (auto& [authority, list] : idle_) {
    for (auto& idle : list) {
      boost::system::error_code ignored;
      idle.stream->socket().close(ignored);
    }
  }
  idle_.clear();
}

}  // namespace paddock::policy
