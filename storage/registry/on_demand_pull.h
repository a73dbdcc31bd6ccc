// Pull on first use: a sandbox or rollout task whose image is a registry
// reference the store lacks gets it pulled here, once per node.
//
// Store name or registry reference? A name already in the store always wins
// (so `py:3`, `sha256:…` and names given by `image pull --name` keep their
// meaning). Otherwise the text is a registry reference when its first
// '/'-separated component looks like a host (holds '.' or ':' or is
// "localhost", as storage/registry/reference.h parses) or it carries a
// "@sha256:" digest; anything else stays a store name and is NOT_FOUND there.
//
// One pull per reference: concurrent callers naming the same reference (with
// the same trust, see below) wait on one pull and share its result. A failure
// is handed to every caller waiting on it but not remembered: the next call
// tries again. A tag is pulled once and then served from the store under the
// reference's own name; `paddock image pull` refreshes it. A reference by
// digest only (no tag, so no name) is remembered in memory for this process.
//
// Trust: `local_client` callers (the unix socket's clients, and rollouts they
// started) pull with the daemon's registry options as they are: loopback
// registries and --insecure-registry hosts included. Others (TCP clients) pull
// under the rules of their own Images.Pull: no loopback address (by name or as
// resolved, redirects included) and no plain HTTP. The two kinds never share a
// pull in flight.
//
// One pass: when PullOptions::layer_cache is set (paddockd sets its node's
// cache), the new layers are unpacked into it while they download, so the
// sandbox that asked for the image finds them materialized.
//
// Credentials: `local_client` pulls use the entry for the reference's registry
// in the daemon's credentials file (paddockd --registry-creds-file), read at
// each pull; other pulls are anonymous (a TCP client's credentials are its
// own, and a sandbox spec carries none).
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "sandbox/base/status.h"
#include "storage/image_store.h"
#include "storage/registry/pull.h"

namespace paddock::storage::registry {

// Whether `text` (not a name in the store) is to be pulled from a registry.
bool NamesRegistryImage(std::string_view text);

class OnDemandPuller {
 public:
  // `options`: the daemon's registry options (timeouts, --insecure-registry
  // hosts, TLS context from --registry-ca-file); `creds_file`: the daemon's
  // docker-config credentials file, or "" for none; `store` outlives this.
  OnDemandPuller(ImageStore& store, PullOptions options, std::string creds_file = "")
      : store_(store), options_(std::move(options)), creds_file_(std::move(creds_file)) {}

  // The image id ("sha256:<hex>") of `text` in the store, pulling it first
  // when it is not there. Errors name the reference: INVALID_ARGUMENT for a
  // malformed one, NOT_FOUND for one the registry does not have, and the
  // pull's own errors otherwise.
  Result<std::string> Ensure(const std::string& text, bool local_client);

  // Pulls started (not joined); for tests and benchmarks.
  uint64_t pulls() const { return pulls_.load(); }

 private:
  struct Flight {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Result<std::string> result = Error(Code::kInternal, "pull not finished");
  };
  // The image already in the store for `ref`, or "" (mu_ held).
  std::string InStoreLocked(const Reference& ref);
  Result<std::string> RunPull(const Reference& ref, bool local_client);

  ImageStore& store_;
  const PullOptions options_;
  const std::string creds_file_;
  std::atomic<uint64_t> pulls_{0};
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Flight>> flights_;  // by trust + reference
  std::map<std::string, std::string> by_digest_;            // digest-only reference → image id
};

}  // namespace paddock::storage::registry
