#include "storage/registry/on_demand_pull.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "storage/registry/credentials.h"

namespace paddock::storage::registry {

bool NamesRegistryImage(std::string_view text) {
  if (text.find("@sha256:") != std::string_view::npos) return true;
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) return false;  // "py:3" is a name:tag, not a host
  std::string_view first = text.substr(0, slash);
  return first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
         first == "localhost";
}

std::string OnDemandPuller::InStoreLocked(const Reference& ref) {
  if (!ref.DefaultName().empty()) {
    auto d = store_.Resolve(ref.DefaultName());
    return d.ok() ? d->str() : "";
  }
  auto it = by_digest_.find(ref.str());
  if (it == by_digest_.end()) return "";
  if (store_.Resolve(it->second).ok()) return it->second;
  by_digest_.erase(it);  // removed from the store since: pull again
  return "";
}

Result<std::string> OnDemandPuller::Ensure(const std::string& text, bool local_client) {
  PADDOCK_ASSIGN_OR_RETURN(Reference ref, ParseReference(text));
  const std::string key = (local_client ? "local " : "remote ") + ref.str();
  std::shared_ptr<Flight> flight;
  bool lead = false;
  {
    std::lock_guard lock(mu_);
    // Checked under mu_: a pull that finished between the caller's store
    // lookup and here has committed (and left flights_) before we look.
    if (std::string id = InStoreLocked(ref); !id.empty()) return id;
    auto it = flights_.find(key);
    if (it != flights_.end()) {
      flight = it->second;
    } else {
      flight = std::make_shared<Flight>();
      flights_.emplace(key, flight);
      lead = true;
    }
  }
  if (!lead) {
    std::unique_lock l(flight->mu);
    flight->cv.wait(l, [&] { return flight->done; });
    return flight->result;
  }
  pulls_++;
  Result<std::string> result = RunPull(ref, local_client);
  {
    std::lock_guard lock(mu_);
    if (result.ok() && ref.DefaultName().empty()) by_digest_[ref.str()] = *result;
    flights_.erase(key);  // an error is not kept: the next caller tries again
  }
  {
    std::lock_guard l(flight->mu);
    flight->result = result;
    flight->done = true;
  }
  flight->cv.notify_all();
  return result;
}

Result<std::string> OnDemandPuller::RunPull(const Reference& ref, bool local_client) {
  PullOptions o = options_;
  if (!local_client) {
    // The rules of a TCP client's own Images.Pull (rollout/service/image_service.cc).
    o.registry.http.refuse_loopback = true;
    o.registry.http.insecure_hosts.clear();
    o.registry.credentials = {};
  } else if (!creds_file_.empty()) {
    // The daemon's own credentials serve its host's users, never a TCP client.
    auto found = ReadCredentialsFile(creds_file_, ref.registry);
    if (!found.ok())
      return found.status().Prefix(
          fmt::format("image '{}' is not in the store; paddockd --registry-creds-file", ref.str()));
    if (!found->note.empty()) spdlog::info("pull of {} on first use: {}", ref.str(), found->note);
    o.registry.credentials = found->creds;
  }
  auto t0 = Clock::now();
  spdlog::info("pulling {} on first use", ref.str());
  auto r = PullImage(store_, ref, o);
  if (!r.ok()) {
    spdlog::warn("pull of {} on first use failed: {}", ref.str(), r.status().message());
    return r.status().Prefix(fmt::format("image '{}' is not in the store and pulling it failed", ref.str()));
  }
  spdlog::info("pulled {} on first use in {} ms: {} of {} layers fetched, {} bytes", ref.str(),
               std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count(), r->layers_new,
               r->layers_total, r->bytes_fetched);
  return r->image.str();
}

}  // namespace paddock::storage::registry
