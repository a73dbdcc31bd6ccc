#include "storage/registry/registry_client.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "storage/registry/auth.h"

namespace paddock::storage::registry {

namespace {

constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

// "MANIFEST_UNKNOWN: manifest unknown" from the spec's error body, or "".
std::string RegistryErrorText(const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("errors") || !j["errors"].is_array() ||
      j["errors"].empty() || !j["errors"][0].is_object())
    return "";
  const auto& e = j["errors"][0];
  std::string code = e.contains("code") && e["code"].is_string() ? e["code"].get<std::string>() : "";
  std::string msg = e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>() : "";
  std::string out = code.empty() ? msg : msg.empty() ? code : code + ": " + msg;
  return out.size() > 300 ? out.substr(0, 300) + "…" : out;
}

bool IsRedirect(unsigned s) { return s == 301 || s == 302 || s == 303 || s == 307 || s == 308; }

}  // namespace

RegistryClient::RegistryClient(Reference ref, RegistryOptions options)
    : ref_(std::move(ref)), options_(std::move(options)) {
  // The host was validated by ParseReference; the URL parse cannot fail for it.
  std::string host = ref_.ApiHost();
  auto u = Url::Parse("https://" + host + "/");
  base_ = u.ok() ? *u : Url{};
  base_.target = "/";
  if (!options_.tls_everywhere && PlainHttpAllowed(base_, options_.http)) {
    base_.https = false;
    if (host.find(':') == std::string::npos || host.back() == ']') base_.port = 80;
  }
}

Url RegistryClient::At(const std::string& path) const {
  Url u = base_;
  u.target = path;
  return u;
}

Clock::time_point RegistryClient::DeadlineFor(uint64_t bytes) const {
  auto extra = std::chrono::milliseconds(bytes * 1000 / std::max<uint64_t>(1, options_.blob_min_bytes_per_s));
  return Clock::now() + options_.request_timeout + extra;
}

bool RegistryClient::SameOrigin(const Url& url) const {
  return url.https == base_.https && url.host == base_.host && url.port == base_.port;
}

Result<bool> RegistryClient::Authenticate(const std::string& www_authenticate, Clock::time_point deadline,
                                          const std::string& what) {
  const std::string who = fmt::format("{}: {}", ref_.str(), what);
  auto challenge = ParseChallenge(www_authenticate);
  if (!challenge.ok())
    return Error(Code::kUnauthenticated, "{}: {} asks for credentials with an unreadable challenge ({})", who,
                 ref_.registry, challenge.status().message());
  if (!MaySendCredentials(base_))
    return Error(Code::kPermissionDenied,
                 "{}: {} asks for credentials over plain HTTP; credentials go only over TLS or to loopback hosts "
                 "(drop --insecure-registry for it, or give --ca-file)",
                 who, ref_.registry);
  if (challenge->scheme == "basic") {
    if (options_.credentials.empty()) return false;  // ErrorFor says so, quoting the registry
    std::lock_guard<std::mutex> lock(auth_mu_);
    auth_scheme_ = "basic";
    authorization_ = BasicAuthorization(options_.credentials);
    return true;
  }
  if (challenge->scheme == "bearer") {
    // The realm is spoken to under the registry's rules (plain HTTP, loopback).
    PADDOCK_ASSIGN_OR_RETURN(std::string token, FetchBearerToken(*challenge, options_.scopes, options_.credentials,
                                                                 options_.http, deadline, who));
    std::lock_guard<std::mutex> lock(auth_mu_);
    auth_scheme_ = "bearer";
    authorization_ = "Bearer " + token;
    return true;
  }
  return Error(Code::kUnimplemented, "{}: {} asks for '{}' authentication; only Basic and Bearer are spoken", who,
               ref_.registry, challenge->scheme.substr(0, 40));
}

std::string RegistryClient::Authorization() const {
  std::lock_guard<std::mutex> lock(auth_mu_);
  return authorization_;
}

std::string RegistryClient::AuthScheme() const {
  std::lock_guard<std::mutex> lock(auth_mu_);
  return auth_scheme_;
}

Result<std::unique_ptr<HttpResponse>> RegistryClient::Send(const std::string& method, const Url& start,
                                                           const HttpHeaders& headers, const HttpBody* body,
                                                           Clock::time_point deadline, const std::string& what,
                                                           AttemptFailure* failure) {
  HttpRequest req;
  req.method = method;
  req.url = start;
  req.body = body;
  const bool follow = method == "GET" || method == "HEAD";
  bool challenge_met = false;
  for (int hop = 0;;) {
    req.headers = headers;
    // Credentials only to the registry's own origin: a redirect to storage on
    // another host goes without them.
    if (std::string authorization = Authorization(); !authorization.empty() && SameOrigin(req.url)) {
      if (!MaySendCredentials(req.url))
        return Error(Code::kPermissionDenied, "{}: {}: refusing to send credentials over plain HTTP to {}",
                     ref_.str(), what, req.url.Authority());
      req.headers.emplace_back("Authorization", std::move(authorization));
    }
    auto r = HttpSend(req, deadline, options_.http);
    if (!r.ok()) {
      // Resolve/connect/reset: the network's; TLS, policy and deadline errors are not.
      if (failure) failure->transient = r.status().code() == Code::kUnavailable;
      return r.status().Prefix(fmt::format("{}: {}", ref_.str(), what));
    }
    auto& resp = *r;
    unsigned s = resp->status();
    if (s == 401 && !challenge_met && SameOrigin(req.url)) {
      challenge_met = true;
      std::string challenge = resp->Header("www-authenticate");
      if (challenge.empty()) return std::move(resp);
      PADDOCK_ASSIGN_OR_RETURN(bool retry, Authenticate(challenge, deadline, what));
      if (!retry) return std::move(resp);
      continue;
    }
    if (!follow || !IsRedirect(s)) return std::move(resp);
    if (++hop > options_.max_redirects)
      return Error(Code::kUnavailable, "{}: {}: more than {} redirects (last to {})", ref_.str(), what,
                   options_.max_redirects, req.url.str());
    std::string loc = resp->Header("location");
    auto next = Url::Parse(loc, &req.url);
    if (!next.ok())
      return Error(Code::kUnavailable, "{}: {}: redirect to an unusable location '{}'", ref_.str(), what,
                   loc.substr(0, 200));
    req.url = *next;
  }
}

Status RegistryClient::ErrorFor(HttpResponse& resp, const std::string& what) {
  unsigned s = resp.status();
  auto body = resp.ReadAll(64 << 10, "error response");
  std::string detail = body.ok() ? RegistryErrorText(*body) : "";
  std::string said = detail.empty() ? "" : fmt::format(" (the registry says: {})", detail);
  std::string where = ref_.registry;
  switch (s) {
    case 401: {
      std::string challenge = resp.Header("www-authenticate");
      std::string scheme = challenge.substr(0, challenge.find(' '));
      if (options_.credentials.empty())
        return Error(Code::kUnauthenticated,
                     "{}: {}: {} asks for credentials{} and none were given{}; add them to ~/.docker/config.json "
                     "(\"auths\") or pass --creds-file",
                     ref_.str(), what, where, scheme.empty() ? "" : " (" + scheme + ")", said);
      return Error(Code::kUnauthenticated, "{}: {}: {} rejected the {} for user '{}'{}", ref_.str(), what, where,
                   AuthScheme() == "bearer" ? "token issued" : "credentials", options_.credentials.username, said);
    }
    case 403:
      return Error(Code::kPermissionDenied, "{}: {}: {} refuses access (403){}", ref_.str(), what, where, said);
    case 404:
      return Error(Code::kNotFound, "{}: {} not found on {} (404){}", ref_.str(), what, where, said);
    case 429: {
      std::string after = resp.Header("retry-after");
      return Error(Code::kResourceExhausted, "{}: {}: {} is rate limiting (429){}{}", ref_.str(), what, where,
                   after.empty() ? "" : "; retry after " + after.substr(0, 40) + (std::isdigit(after[0]) ? " s" : ""),
                   said);
    }
    default:
      if (s >= 500)
        return Error(Code::kUnavailable, "{}: {}: {} failed with HTTP {}{}; try again later", ref_.str(), what,
                     where, s, said);
      if (s >= 300 && s < 400)
        return Error(Code::kUnavailable, "{}: {}: {} answered a redirect (HTTP {}) where none is expected",
                     ref_.str(), what, where, s);
      return Error(Code::kInvalidArgument, "{}: {}: {} answered HTTP {}{}", ref_.str(), what, where, s, said);
  }
}

Result<std::unique_ptr<HttpResponse>> RegistryClient::GetOnce(const std::string& path, const HttpHeaders& headers,
                                                              Clock::time_point deadline, const std::string& what,
                                                              AttemptFailure* failure) {
  PADDOCK_ASSIGN_OR_RETURN(auto resp, Send("GET", At(path), headers, nullptr, deadline, what, failure));
  unsigned s = resp->status();
  if (s >= 200 && s < 300) return resp;
  failure->transient = s == 429 || s == 502 || s == 503 || s == 504;
  failure->retry_after = ParseRetryAfter(resp->Header("retry-after"));
  return ErrorFor(*resp, what);
}

template <typename T>
Result<T> RegistryClient::WithRetries(const std::function<Result<T>(AttemptFailure*)>& attempt, Retrier* shared) {
  Retrier own(options_.retry, options_.http.cancelled);
  Retrier& retrier = shared ? *shared : own;
  for (;;) {
    AttemptFailure failure;
    Result<T> r = attempt(&failure);
    if (r.ok()) return r;
    if (retrier.WaitBeforeRetry(failure)) continue;
    if (retrier.attempts() > 1)
      return Status(r.status().code(), fmt::format("{} (after {} attempts)", r.status().message(), retrier.attempts()));
    return r;
  }
}

Result<FetchedManifest> RegistryClient::GetManifest(const std::string& tag_or_digest) {
  const std::string what = "manifest " + tag_or_digest;
  return WithRetries<FetchedManifest>(
      [&](AttemptFailure* failure) -> Result<FetchedManifest> {
        auto deadline = Clock::now() + options_.request_timeout;
        PADDOCK_ASSIGN_OR_RETURN(auto resp, GetOnce("/v2/" + ref_.repository + "/manifests/" + tag_or_digest,
                                                    {{"Accept", kManifestAccept}}, deadline, what, failure));
        FetchedManifest m;
        auto bytes = resp->ReadAll(options_.max_manifest_bytes, what);
        if (!bytes.ok()) {
          failure->transient = bytes.status().code() == Code::kUnavailable;  // the connection broke
          return bytes.status().Prefix(ref_.str());
        }
        m.bytes = std::move(*bytes);
        m.digest = Sha256::Of(m.bytes);
        if (tag_or_digest.rfind("sha256:", 0) == 0 && m.digest.str() != tag_or_digest)
          return Error(Code::kDataLoss, "{}: {} does not match its digest: its bytes hash to {}", ref_.str(), what,
                       m.digest.str());
        m.media_type = resp->Header("content-type");
        if (auto semi = m.media_type.find(';'); semi != std::string::npos) m.media_type.resize(semi);
        while (!m.media_type.empty() && m.media_type.back() == ' ') m.media_type.pop_back();
        return m;
      },
      nullptr);
}

Result<std::unique_ptr<HttpResponse>> RegistryClient::OpenBlob(const Digest& digest, uint64_t size) {
  PADDOCK_ASSIGN_OR_RETURN(OpenedBlob b, OpenBlobAt(digest, size, 0));
  return std::move(b.body);
}

namespace {
// "bytes START-END/TOTAL" (TOTAL may be "*"): START, or nullopt.
std::optional<uint64_t> ContentRangeStart(const std::string& v, uint64_t size) {
  unsigned long long start = 0, end = 0, total = 0;
  char star = 0;
  if (std::sscanf(v.c_str(), "bytes %llu-%llu/%llu", &start, &end, &total) == 3) {
    if (end + 1 != size || total != size) return std::nullopt;
    return start;
  }
  if (std::sscanf(v.c_str(), "bytes %llu-%llu/%c", &start, &end, &star) == 3 && star == '*' && end + 1 == size)
    return start;
  return std::nullopt;
}
}  // namespace

Result<OpenedBlob> RegistryClient::OpenBlobOnce(const Digest& digest, uint64_t size, uint64_t offset,
                                                AttemptFailure* failure) {
  const std::string what = "blob " + digest.str();
  HttpHeaders headers;
  if (offset > 0) headers.emplace_back("Range", fmt::format("bytes={}-", offset));
  auto deadline = DeadlineFor(size - std::min(offset, size));
  PADDOCK_ASSIGN_OR_RETURN(auto resp, GetOnce("/v2/" + ref_.repository + "/blobs/" + digest.str(), headers, deadline,
                                              what, failure));
  OpenedBlob out;
  if (offset > 0 && resp->status() == 206) {
    // Only the range we asked for, of the blob we know, is taken.
    auto start = ContentRangeStart(resp->Header("content-range"), size);
    if (!start || *start != offset)
      return Error(Code::kUnavailable, "{}: {}: asked for bytes {}- but the registry sent Content-Range '{}'",
                   ref_.str(), what, offset, resp->Header("content-range").substr(0, 100));
    out.offset = offset;
  } else if (resp->status() != 200) {
    return Error(Code::kInvalidArgument, "{}: {}: the registry answered HTTP {} to a blob GET", ref_.str(), what,
                 resp->status());
  }
  if (auto len = resp->ContentLength(); len && *len != size - out.offset)
    return Error(Code::kDataLoss, "{}: {} is announced as {} bytes, but the manifest says {}; nothing was stored",
                 ref_.str(), what, *len + out.offset, size);
  out.body = std::move(resp);
  return out;
}

Result<OpenedBlob> RegistryClient::OpenBlobAt(const Digest& digest, uint64_t size, uint64_t offset,
                                              Retrier* retrier) {
  return WithRetries<OpenedBlob>(
      [&](AttemptFailure* failure) { return OpenBlobOnce(digest, size, offset, failure); }, retrier);
}

Result<std::string> RegistryClient::GetSmallBlob(const Digest& digest, uint64_t size, uint64_t max) {
  const std::string what = "blob " + digest.str();
  if (size > max)
    return Error(Code::kInvalidArgument, "{}: {} is declared as {} bytes, over the limit of {}", ref_.str(), what,
                 size, max);
  return WithRetries<std::string>(
      [&](AttemptFailure* failure) -> Result<std::string> {
        PADDOCK_ASSIGN_OR_RETURN(OpenedBlob b, OpenBlobOnce(digest, size, 0, failure));
        auto data = b.body->ReadAll(size, what);
        if (!data.ok()) {
          failure->transient = data.status().code() == Code::kUnavailable;
          return data.status().Prefix(ref_.str());
        }
        if (data->size() != size)
          return Error(Code::kDataLoss, "{}: {} ended after {} of its {} bytes", ref_.str(), what, data->size(), size);
        Digest got = Sha256::Of(*data);
        if (!(got == digest))
          return Error(Code::kDataLoss, "{}: {} does not match its digest: its bytes hash to {}", ref_.str(), what,
                       got.str());
        return std::move(*data);
      },
      nullptr);
}

}  // namespace paddock::storage::registry
