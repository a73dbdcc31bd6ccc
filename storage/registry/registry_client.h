// The OCI distribution API of one repository: manifests by tag or digest, and
// blobs, with redirects followed (bounded) and every non-2xx answer mapped to a
// typed error naming the reference:
//   401 UNAUTHENTICATED (after the challenge was answered, or when there is
//   nothing to answer it with), 403 PERMISSION_DENIED,
//   404 NOT_FOUND, 429 RESOURCE_EXHAUSTED (with Retry-After), 5xx UNAVAILABLE,
//   other statuses INVALID_ARGUMENT; the registry's own error code and message
//   (the spec's {"errors": [...]}) are quoted.
//
// Auth (auth.h): anonymous until the registry answers 401; then its challenge
// is met once per request (Basic: the credentials; Bearer: a token from the
// realm, cached for the client's later requests) and the request is sent again.
// Authorization goes only to the registry's own origin (a redirect or upload
// location on another host gets none) and never over plain HTTP to a
// non-loopback host (PERMISSION_DENIED).
//
// Transient failures of the pull's requests (manifests and blobs: a broken
// connection, 429, 502/503/504) are retried with backoff as
// storage/registry/retry.h says, each attempt going through auth as above; the
// error after the last attempt says how many were made. Send (push's requests)
// is one attempt.
//
// One client may serve several threads (a pull's parallel layers): the learned
// Authorization is guarded.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "storage/registry/credentials.h"
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
  // Empty: anonymous. Never logged.
  Credentials credentials;
  // Token scopes asked for besides the challenge's own, e.g. a push's
  // "repository:<repo>:pull,push" (so one token serves every request).
  std::vector<std::string> scopes;
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
  // The registry's URL for `path` ("/v2/…").
  Url At(const std::string& path) const;
  // A request's deadline: the request timeout plus `bytes` at blob_min_bytes_per_s.
  Clock::time_point DeadlineFor(uint64_t bytes) const;

  // One request with auth (see above); redirects followed for GET and HEAD
  // (bounded), the transport's errors prefixed with the reference and `what`.
  // Any status comes back; ErrorFor maps a non-2xx one. With `failure`, a
  // transport error says there whether it is worth retrying (UNAVAILABLE:
  // resolve, connect, reset).
  Result<std::unique_ptr<HttpResponse>> Send(const std::string& method, const Url& url, const HttpHeaders& headers,
                                             const HttpBody* body, Clock::time_point deadline,
                                             const std::string& what, AttemptFailure* failure = nullptr);
  // The typed error for a non-2xx response to the request for `what`.
  Status ErrorFor(HttpResponse& resp, const std::string& what);

 private:
  // One GET (Send) with auth, following redirects; a 2xx response or the
  // mapped error for `what`, with whether it is worth retrying in `failure`.
  Result<std::unique_ptr<HttpResponse>> GetOnce(const std::string& path, const HttpHeaders& headers,
                                                Clock::time_point deadline, const std::string& what,
                                                AttemptFailure* failure);
  Result<OpenedBlob> OpenBlobOnce(const Digest& digest, uint64_t size, uint64_t offset, AttemptFailure* failure);
  // Runs `attempt` (which fills an AttemptFailure) until it succeeds or the
  // retry policy gives up.
  template <typename T>
  Result<T> WithRetries(const std::function<Result<T>(AttemptFailure*)>& attempt, Retrier* shared);
  // Meets a 401's challenge for a retry: true to retry, false when there is
  // nothing to meet it with (no credentials for Basic), or an error.
  Result<bool> Authenticate(const std::string& www_authenticate, Clock::time_point deadline, const std::string& what);
  bool SameOrigin(const Url& url) const;
  std::string Authorization() const;
  std::string AuthScheme() const;
  Reference ref_;
  RegistryOptions options_;
  Url base_;
  mutable std::mutex auth_mu_;  // guards the two below
  std::string authorization_;   // the Authorization value for the registry's origin, once learned
  std::string auth_scheme_;     // "basic" | "bearer" once a challenge was met
};

}  // namespace paddock::storage::registry
