#include "storage/registry/layer_download.h"

#include <algorithm>

#include <fmt/format.h>

namespace paddock::storage::registry {

LayerDownload::LayerDownload(RegistryClient& client, Digest digest, uint64_t size, std::string who,
                             std::function<void(uint64_t)> on_bytes, const std::atomic<bool>* abort)
    : client_(client),
      digest_(std::move(digest)),
      size_(size),
      who_(std::move(who)),
      on_bytes_(std::move(on_bytes)),
      abort_(abort),
      retrier_(client.options().retry, client.options().http.cancelled) {}

Status LayerDownload::Fail(Status st) {
  if (error_.ok()) error_ = st;
  return st;
}

Status LayerDownload::Open() {
  PADDOCK_ASSIGN_OR_RETURN(OpenedBlob b, client_.OpenBlobAt(digest_, size_, got_, &retrier_));
  body_ = std::move(b.body);
  // A 200 to a range request: the blob from byte 0; drop what we have.
  uint64_t skip = got_ - b.offset;
  char scratch[16384];
  while (skip > 0) {
    auto read = body_->Read(scratch, static_cast<size_t>(std::min<uint64_t>(skip, sizeof scratch)));
    if (!read.ok()) return read.status().Prefix(who_);
    size_t r = *read;
    if (r == 0)
      return Error(Code::kUnavailable, "{}: the registry resent the blob from the start and ended after {} bytes",
                   who_, got_ - skip);
    skip -= r;
  }
  return Status::Ok();
}

Result<size_t> LayerDownload::Read(void* buf, size_t n) {
  if (verified_) return size_t{0};
  for (;;) {
    if (abort_ && abort_->load()) return Error(Code::kCancelled, "{}: stopped: another layer of the pull failed", who_);
    Status st = body_ ? Status::Ok() : Open();
    Result<size_t> read = st;
    if (st.ok()) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(n, size_ - std::min(got_, size_) + 1));
      read = body_->Read(buf, want);
    }
    if (!read.ok()) {
      // A broken connection (while reading, or while reopening past what a
      // 200 resent) is resumed from got_ while the retry policy allows.
      AttemptFailure f{read.status().code() == Code::kUnavailable, std::nullopt};
      if (f.transient && retrier_.WaitBeforeRetry(f)) {
        body_.reset();
        ++resumes_;
        continue;
      }
      // Open's errors name the reference and blob already; the body's do not.
      std::string msg = st.ok() ? who_ + ": " + read.status().message() : read.status().message();
      if (resumes_ > 0) msg += fmt::format(" (after {} resumed downloads)", resumes_);
      return Fail(Status(read.status().code(), msg));
    }
    size_t r = *read;
    got_ += r;
    if (got_ > size_)
      return Fail(Error(Code::kDataLoss, "{} is longer than the {} bytes its manifest declares; nothing was stored",
                        who_, size_));
    hash_.Update(buf, r);
    if (r > 0) {
      if (on_bytes_) on_bytes_(r);
      return r;
    }
    if (got_ < size_)
      return Fail(Error(Code::kDataLoss, "{} ended after {} of its {} bytes; nothing was stored", who_, got_, size_));
    Digest h = hash_.Finish();
    if (!(h == digest_))
      return Fail(Error(Code::kDataLoss, "{} does not match its digest: its bytes hash to {}; nothing was stored", who_,
                        h.str()));
    verified_ = true;
    return size_t{0};
  }
}

}  // namespace paddock::storage::registry
