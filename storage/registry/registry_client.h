// The OCI distribution API of one repository, anonymously: manifests by tag or
// digest, and blobs, with redirects followed (bounded) and every non-2xx answer
// mapped to a typed error naming the reference:
//   401 UNAUTHENTICATED (no auth in this version), 403 PERMISSION_DENIED,
//   404 NOT_FOUND, 429 RESOURCE_EXHAUSTED (with Retry-After), 5xx UNAVAILABLE,
//   other statuses INVALID_ARGUMENT; the registry's own error code and message
//   (the spec's {"errors": [...]}) are quoted.
// Transient failures (a broken connection, 429, 502/503/504) are retried with
// backoff as storage/registry/retry.h says; the error after the last attempt
// says how many were made.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "storage/registry/http_get.h"
#include "storage/registry/reference.h"
#include "storage/registry/retry.h"

namespace paddock::storage::registry {

struct RegistryOptions {
  HttpGetOptions http;
  // Deadline of a manifest or small blob request; a layer gets this plus its
  // size at `blob_min_bytes_per_s` (a server dripping bytes is cut off).
  std::chrono::milliseconds request_timeout{60000};
  uint64_t blob_min_bytes_per_s = 256 << 10;
  int max_redirects = 5;
  uint64_t max_manifest_bytes = 4 << 20;
  // Speak HTTPS to loopback and --insecure-registry hosts too (set when a CA
  // file is given: a loopback registry with its own CA).
  bool tls_everywhere = false;
  RetryPolicy retry;
};

// A blob response positioned at `offset` of the blob: 0, or where a Range
// request asked to start when the server honoured it (206). A server that
// ignores the range answers 200 from byte 0; the caller skips what it has.
struct OpenedBlob {
  std::unique_ptr<HttpResponse> body;
  uint64_t offset = 0;
};

struct FetchedManifest {
  std::string media_type;  // Content-Type, else the document's mediaType
  std::string bytes;
  Digest digest;  // sha256 of bytes; checked when fetched by digest
};

class RegistryClient {
 public:
  RegistryClient(Reference ref, RegistryOptions options);

  // GET /v2/<repo>/manifests/<tag or digest>, bounded by max_manifest_bytes.
  Result<FetchedManifest> GetManifest(const std::string& tag_or_digest);
  // GET /v2/<repo>/blobs/<digest>, positioned at the body; DATA_LOSS when the
  // server announces a length other than `size`. The caller verifies the bytes.
  Result<std::unique_ptr<HttpResponse>> OpenBlob(const Digest& digest, uint64_t size);
  // The same from byte `offset` on (a Range request when offset > 0). With
  // `retrier`, its attempts are shared with the caller's (a layer's resumes).
  Result<OpenedBlob> OpenBlobAt(const Digest& digest, uint64_t size, uint64_t offset, Retrier* retrier = nullptr);
  // A small blob (the config) read whole and checked against digest and size.
  Result<std::string> GetSmallBlob(const Digest& digest, uint64_t size, uint64_t max);

  const Reference& ref() const { return ref_; }
  const Url& base() const { return base_; }
  const RegistryOptions& options() const { return options_; }

 private:
  using Headers = std::vector<std::pair<std::string, std::string>>;
  // One GET following redirects; a 2xx response or the mapped error for
  // `what`, with whether it is worth retrying in `failure`.
  Result<std::unique_ptr<HttpResponse>> GetOnce(const std::string& path, const Headers& headers,
                                                Clock::time_point deadline, const std::string& what,
                                                AttemptFailure* failure);
  Result<OpenedBlob> OpenBlobOnce(const Digest& digest, uint64_t size, uint64_t offset, AttemptFailure* failure);
  // Runs `attempt` (which fills an AttemptFailure) until it succeeds or the
  // retry policy gives up.
  template <typename T>
  Result<T> WithRetries(const std::function<Result<T>(AttemptFailure*)>& attempt, Retrier* shared);
  Reference ref_;
  RegistryOptions options_;
  Url base_;
};

}  // namespace paddock::storage::registry
