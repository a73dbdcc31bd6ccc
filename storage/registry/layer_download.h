// One layer blob from a registry as a ByteSource for the store's ingest.
//
// Verified while it streams: never more than one byte past the size the
// manifest declares is read, and the length and sha256 are checked before the
// end is reported, so the ingest never sees the end of a wrong blob.
//
// Resumed, not restarted: when the connection breaks mid-body the download
// asks again from where it stopped (`Range: bytes=N-`). A 206 whose
// Content-Range starts at N continues the stream; a server that ignores ranges
// answers 200 from byte 0, and the N bytes already handed on are read and
// dropped. Either way the hash runs over the one stream the ingest saw, so the
// final digest check covers the pieces together (a server sending different
// bytes the second time fails it). Breaks and failed reopenings share one
// Retrier: bounded attempts, backoff between them.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "sandbox/base/status.h"
#include "storage/digest.h"
#include "storage/registry/registry_client.h"

namespace paddock::storage::registry {

class LayerDownload {
 public:
  // `who` names the layer in errors ("host/repo:tag: layer sha256:…");
  // `on_bytes` is told of every new byte count (progress); a set `abort`
  // (another layer failed) stops the download with CANCELLED.
  LayerDownload(RegistryClient& client, Digest digest, uint64_t size, std::string who,
                std::function<void(uint64_t)> on_bytes, const std::atomic<bool>* abort);

  // The ByteSource: up to n bytes, 0 once the whole verified blob was read.
  Result<size_t> Read(void* buf, size_t n);

  // The first error of the download itself (not the ingest's), or OK.
  const Status& error() const { return error_; }
  uint64_t bytes() const { return got_; }
  int resumes() const { return resumes_; }

 private:
  Status Fail(Status st);
  // Opens the blob at got_, skipping what a server ignoring the range resends.
  Status Open();

  RegistryClient& client_;
  const Digest digest_;
  const uint64_t size_;
  const std::string who_;
  std::function<void(uint64_t)> on_bytes_;
  const std::atomic<bool>* abort_;
  Retrier retrier_;
  std::unique_ptr<HttpResponse> body_;
  Sha256 hash_;
  uint64_t got_ = 0;
  int resumes_ = 0;
  bool verified_ = false;  // the end was reached and checked (the ingest may ask again)
  Status error_;
};

}  // namespace paddock::storage::registry
