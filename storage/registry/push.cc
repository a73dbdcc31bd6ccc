#include "storage/registry/push.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <set>

#include <fmt/format.h>

#include "storage/oci_image.h"
#include "storage/registry/blob_sources.h"
#include "storage/registry/throttled_progress.h"

namespace paddock::storage::registry {

namespace {

std::string Mib(uint64_t b) { return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20)); }

// Progress at most every 200 ms, and always at phase changes.
using Reporter = ThrottledProgress<PushProgress>;

class Pusher {
 public:
  Pusher(ImageStore& store, const Reference& ref, RegistryOptions options, Reporter& say)
      : store_(store), ref_(ref), client_(ref, std::move(options)), say_(say) {}

  RegistryClient& client() { return client_; }

  // Whether the registry has the blob (HEAD: 200 yes, 404 no).
  Result<bool> Has(const OciBlob& b) {
    const std::string what = "blob " + b.digest.str();
    PADDOCK_ASSIGN_OR_RETURN(auto resp, client_.Send("HEAD", client_.At(Blobs() + b.digest.str()), {}, nullptr,
                                                     client_.DeadlineFor(0), what));
    if (resp->status() >= 200 && resp->status() < 300) return true;
    if (resp->status() == 404) return false;
    return client_.ErrorFor(*resp, what);
  }

  // POST uploads/ (with ?mount=&from= when `from` is given): true when the
  // registry mounted the blob (201); else the upload's location in `*location`.
  Result<bool> Start(const OciBlob& b, const std::string& from, Url* location) {
    const std::string what = from.empty() ? "upload of blob " + b.digest.str()
                                          : fmt::format("mount of blob {} from {}", b.digest.str(), from);
    std::string path = Blobs() + "uploads/";
    if (!from.empty()) path += "?mount=" + b.digest.str() + "&from=" + from;
    PADDOCK_ASSIGN_OR_RETURN(auto resp, client_.Send("POST", client_.At(path), {}, nullptr, client_.DeadlineFor(0), what));
    unsigned s = resp->status();
    if (s == 201 && !from.empty()) return true;
    if (s != 202) return client_.ErrorFor(*resp, what);
    std::string loc = resp->Header("location");
    auto u = Url::Parse(loc, &client_.base());
    if (loc.empty() || !u.ok())
      return Error(Code::kUnavailable, "{}: {}: {} answered 202 without a usable upload location", ref_.str(), what,
                   ref_.registry);
    *location = *u;
    return false;
  }

  // PUT <location>?digest=<d> with the whole blob, streamed from the store.
  Status Upload(const OciBlob& b, Url location, uint64_t* bytes_done, uint64_t bytes_total, size_t n, size_t of) {
    const std::string what = "upload of blob " + b.digest.str();
    location.target += (location.target.find('?') == std::string::npos ? "?" : "&") + std::string("digest=") +
                       b.digest.str();
    const uint64_t start = *bytes_done;
    HttpBody body;
    body.size = b.size;
    body.write = [&](const std::function<Status(const void*, size_t)>& sink) {
      uint64_t sent = 0;
      return b.write([&](const void* p, size_t len) -> Status {
        PADDOCK_RETURN_IF_ERROR(sink(p, len));
        sent += len;
        *bytes_done = start + sent;
        say_.Say({"blob",
                  fmt::format("{}: blob {} of {}: {} / {} ({} / {} in all)", ref_.str(), n, of, Mib(sent), Mib(b.size),
                              Mib(*bytes_done), Mib(bytes_total)),
                  *bytes_done, bytes_total},
                 false);
        return Status::Ok();
      });
    };
    PADDOCK_ASSIGN_OR_RETURN(auto resp, client_.Send("PUT", location, {{"Content-Type", "application/octet-stream"}},
                                                     &body, client_.DeadlineFor(b.size), what));
    *bytes_done = start + b.size;
    if (resp->status() != 201 && resp->status() != 204 && resp->status() != 200) return client_.ErrorFor(*resp, what);
    return Status::Ok();
  }

  // Chunked upload of a blob larger than `chunk`: the blob is streamed from the
  // store once, through a buffer of one chunk; each full chunk goes out as a
  // PATCH (Content-Range start-end) to the location the previous answer named,
  // and a final PUT ?digest= with no body closes the upload. A PATCH that fails
  // transiently (the connection broke, 429, 5xx, or 416 after the first chunk)
  // is followed by a status request (GET location → 204, Range 0-N) and the
  // chunk is sent again from byte N+1: what the registry kept is not sent
  // twice. When the registry answers the first PATCH with 404, 405 or 416 it
  // does not take chunks: `*unsupported` is set and nothing is sent (the caller
  // uploads monolithically with a new upload).
  Status UploadChunked(const OciBlob& b, Url location, uint64_t chunk, uint64_t* bytes_done, uint64_t bytes_total,
                       size_t n, size_t of, bool* unsupported) {
    const std::string what = "chunked upload of blob " + b.digest.str();
    const uint64_t start = *bytes_done;
    std::string buf;
    buf.reserve(chunk);
    uint64_t chunk_start = 0;  // blob offset of buf[0]
    uint64_t acked = 0;        // bytes the registry holds
    Retrier retrier(client_.options().retry, [] { return false; });
    *unsupported = false;

    // Sends buf (from what the registry lacks of it) until the registry holds it all.
    auto send_chunk = [&]() -> Status {
      const uint64_t chunk_end = chunk_start + buf.size();
      while (acked < chunk_end) {
        if (acked < chunk_start)
          return Error(Code::kDataLoss, "{}: {}: the registry holds {} bytes, less than the {} it acknowledged",
                       ref_.str(), what, acked, chunk_start);
        const uint64_t skip = acked - chunk_start, len = chunk_end - acked;
        HttpBody body;
        body.size = len;
        body.write = [&buf, skip, len](const std::function<Status(const void*, size_t)>& sink) {
          return sink(buf.data() + skip, len);
        };
        AttemptFailure failure;
        auto r = client_.Send("PATCH", location,
                              {{"Content-Type", "application/octet-stream"},
                               {"Content-Range", fmt::format("{}-{}", acked, chunk_end - 1)}},
                              &body, client_.DeadlineFor(len), what, &failure);
        if (r.ok() && (*r)->status() == 202) {
          PADDOCK_RETURN_IF_ERROR(NextLocation(**r, what, &location));
          acked = chunk_end;
          *bytes_done = start + acked;
          say_.Say({"blob",
                    fmt::format("{}: blob {} of {}: {} / {} in chunks ({} / {} in all)", ref_.str(), n, of, Mib(acked),
                                Mib(b.size), Mib(*bytes_done), Mib(bytes_total)),
                    *bytes_done, bytes_total},
                   false);
          continue;
        }
        if (r.ok()) {
          const unsigned st = (*r)->status();
          if (acked == 0 && (st == 404 || st == 405 || st == 416)) {
            *unsupported = true;
            return client_.ErrorFor(**r, what);
          }
          failure.transient = st == 416 || st == 429 || st >= 500;
          failure.retry_after = ParseRetryAfter((*r)->Header("retry-after"));
          Status err = client_.ErrorFor(**r, what);
          if (!failure.transient) return err;
          if (!retrier.WaitBeforeRetry(failure))
            return err.Prefix(fmt::format("after {} attempts", retrier.attempts()));
        } else {
          if (!failure.transient) return r.status();
          if (!retrier.WaitBeforeRetry(failure))
            return r.status().Prefix(fmt::format("after {} attempts", retrier.attempts()));
        }
        // Where the upload stands: resume from there.
        PADDOCK_RETURN_IF_ERROR(UploadStatus(what, &location, &acked));
        resumes_++;
      }
      chunk_start = chunk_end;
      buf.clear();
      return Status::Ok();
    };

    Status streamed = b.write([&](const void* p, size_t len) -> Status {
      const char* c = static_cast<const char*>(p);
      while (len > 0) {
        size_t take = std::min<size_t>(len, chunk - buf.size());
        buf.append(c, take);
        c += take;
        len -= take;
        if (buf.size() == chunk) PADDOCK_RETURN_IF_ERROR(send_chunk());
      }
      return Status::Ok();
    });
    if (*unsupported) return streamed;
    PADDOCK_RETURN_IF_ERROR(streamed);
    if (!buf.empty()) PADDOCK_RETURN_IF_ERROR(send_chunk());
    if (acked != b.size)
      return Error(Code::kInternal, "{}: {}: {} bytes sent, the blob has {}", ref_.str(), what, acked, b.size);

    location.target += (location.target.find('?') == std::string::npos ? "?" : "&") + std::string("digest=") +
                       b.digest.str();
    PADDOCK_ASSIGN_OR_RETURN(auto resp, client_.Send("PUT", location, {}, nullptr, client_.DeadlineFor(0), what));
    if (resp->status() != 201 && resp->status() != 204 && resp->status() != 200) return client_.ErrorFor(*resp, what);
    *bytes_done = start + b.size;
    return Status::Ok();
  }

  // Times a chunked upload asked where it stood and went on from there.
  uint64_t resumes() const { return resumes_; }

  Status PutManifest(const OciImage& oci, const std::string& tag_or_digest) {
    const std::string what = "manifest " + tag_or_digest;
    HttpBody body = HttpBody::Of(oci.manifest);
    PADDOCK_ASSIGN_OR_RETURN(auto resp, client_.Send("PUT", client_.At("/v2/" + ref_.repository + "/manifests/" + tag_or_digest),
                                                     {{"Content-Type", kOciManifestType}}, &body,
                                                     client_.DeadlineFor(0), what));
    if (resp->status() != 201 && resp->status() != 200) return client_.ErrorFor(*resp, what);
    std::string echoed = resp->Header("docker-content-digest");
    if (!echoed.empty() && echoed != oci.manifest_digest.str())
      return Error(Code::kDataLoss, "{}: {}: the registry stored it as {}, not as {}", ref_.str(), what, echoed,
                   oci.manifest_digest.str());
    return Status::Ok();
  }

 private:
  // The upload location a 202 names (the next request goes there).
  Status NextLocation(HttpResponse& resp, const std::string& what, Url* location) {
    std::string loc = resp.Header("location");
    if (loc.empty()) return Status::Ok();  // the same location serves on
    auto u = Url::Parse(loc, location);
    if (!u.ok())
      return Error(Code::kUnavailable, "{}: {}: {} named an unusable upload location '{}'", ref_.str(), what,
                   ref_.registry, loc.substr(0, 200));
    *location = *u;
    return Status::Ok();
  }

  // GET <location>: 204 with "Range: 0-N" (N+1 bytes held; "0-0" is read as
  // none, as the reference registry says it for an empty upload) and the
  // location to go on at.
  Status UploadStatus(const std::string& what, Url* location, uint64_t* held) {
    const std::string asked = "status of the " + what;
    PADDOCK_ASSIGN_OR_RETURN(auto resp, client_.Send("GET", *location, {}, nullptr, client_.DeadlineFor(0), asked));
    if (resp->status() != 204 && resp->status() != 200) return client_.ErrorFor(*resp, asked);
    std::string range = resp->Header("range");
    uint64_t lo = 0, hi = 0;
    int used = 0;
    if (range.empty()) {
      *held = 0;
    } else if (std::sscanf(range.c_str(), "%" SCNu64 "-%" SCNu64 "%n", &lo, &hi, &used) == 2 && lo == 0 &&
               static_cast<size_t>(used) == range.size()) {
      *held = hi == 0 ? 0 : hi + 1;
    } else {
      return Error(Code::kUnavailable, "{}: {}: {} answered with Range '{}', not 0-N", ref_.str(), asked,
                   ref_.registry, range.substr(0, 100));
    }
    return NextLocation(*resp, asked, location);
  }

  std::string Blobs() const { return "/v2/" + ref_.repository + "/blobs/"; }
  ImageStore& store_;
  const Reference& ref_;
  RegistryClient client_;
  Reporter& say_;
  uint64_t resumes_ = 0;
};

Result<PushResult> Push(ImageStore& store, const std::string& image, const Reference& ref,
                        const PushOptions& options, const std::function<void(const PushProgress&)>& progress) {
  Reporter say(progress);
  PADDOCK_ASSIGN_OR_RETURN(Image img, store.Get(image));
  PADDOCK_ASSIGN_OR_RETURN(OciImage oci, DescribeOciImage(store, img));
  std::string target = ref.tag;
  if (!ref.digest.empty()) {
    if (ref.digest != oci.manifest_digest.str())
      return Error(Code::kInvalidArgument,
                   "{}: the image's OCI manifest is {}, not the digest in the reference; push it by tag", ref.str(),
                   oci.manifest_digest.str());
    if (target.empty()) target = ref.digest;
  }
  // Distinct blobs, config first; each one's mount sources on this registry.
  std::vector<const OciBlob*> blobs{&oci.config};
  std::set<std::string> seen{oci.config.digest.hex()};
  for (const auto& l : oci.layers)
    if (seen.insert(l.digest.hex()).second) blobs.push_back(&l);
  std::vector<std::vector<std::string>> sources;
  RegistryOptions ro = options.registry;
  ro.scopes.push_back("repository:" + ref.repository + ":pull,push");
  for (const OciBlob* b : blobs) {
    sources.push_back(BlobSourcesOn(store, b->digest, ref.registry, ref.repository));
    if (sources.back().size() > 2) sources.back().resize(2);
    for (const auto& repo : sources.back())
      if (std::find(ro.scopes.begin(), ro.scopes.end(), "repository:" + repo + ":pull") == ro.scopes.end())
        ro.scopes.push_back("repository:" + repo + ":pull");
  }
  if (options.chunk_size > kMaxChunkSize)
    return Error(Code::kInvalidArgument, "{}: chunk size {} is over the largest allowed ({})", ref.str(),
                 options.chunk_size, kMaxChunkSize);
  const uint64_t chunk = options.chunk_size;
  Pusher pusher(store, ref, std::move(ro), say);
  PushResult result;
  result.image = img.digest;
  result.manifest_digest = oci.manifest_digest;
  result.blobs_total = blobs.size();
  say.Say({"checking", fmt::format("{}: pushing {} ({} blobs) to {}", ref.str(), img.digest.str().substr(0, 19),
                                   blobs.size(), pusher.client().base().str())});

  // 1. Which blobs the registry lacks.
  std::vector<bool> missing(blobs.size());
  uint64_t to_send = 0;
  for (size_t i = 0; i < blobs.size(); ++i) {
    PADDOCK_ASSIGN_OR_RETURN(bool has, pusher.Has(*blobs[i]));
    missing[i] = !has;
    if (has) {
      ++result.blobs_present;
      RecordBlobSource(store, blobs[i]->digest, ref.registry, ref.repository);
    } else {
      to_send += blobs[i]->size;
    }
  }
  say.Say({"checking",
           fmt::format("{}: {} of {} blobs to send ({})", ref.str(), blobs.size() - result.blobs_present, blobs.size(),
                       Mib(to_send)),
           0, to_send});

  // 2. Mount or upload each missing blob.
  uint64_t done = 0;
  for (size_t i = 0; i < blobs.size(); ++i) {
    if (!missing[i]) continue;
    const OciBlob& b = *blobs[i];
    Url location;
    bool mounted = false;
    for (const auto& from : sources[i]) {
      auto m = pusher.Start(b, from, &location);
      // A declined mount (no such blob there any more, no access) is no error:
      // the blob is uploaded instead.
      if (m.ok()) {
        mounted = *m;
        break;
      }
      if (m.status().code() == Code::kCancelled || m.status().code() == Code::kDeadlineExceeded) return m.status();
    }
    if (mounted) {
      ++result.blobs_mounted;
      to_send -= b.size;
    } else {
      if (location.host.empty()) {
        PADDOCK_ASSIGN_OR_RETURN(bool unexpected_mount, pusher.Start(b, "", &location));
        (void)unexpected_mount;
      }
      bool monolithic = chunk == 0 || b.size <= chunk;
      if (!monolithic) {
        bool unsupported = false;
        const uint64_t before = done;
        Status st = pusher.UploadChunked(b, location, chunk, &done, to_send, i + 1, blobs.size(), &unsupported);
        if (unsupported) {
          // The registry takes no chunks: the whole blob in one PUT, to a new upload.
          done = before;
          monolithic = true;
          ++result.chunk_fallbacks;
          PADDOCK_ASSIGN_OR_RETURN(bool unexpected_mount, pusher.Start(b, "", &location));
          (void)unexpected_mount;
        } else {
          PADDOCK_RETURN_IF_ERROR(st);
          ++result.blobs_chunked;
        }
      }
      if (monolithic) PADDOCK_RETURN_IF_ERROR(pusher.Upload(b, location, &done, to_send, i + 1, blobs.size()));
      ++result.blobs_uploaded;
      result.bytes_uploaded += b.size;
    }
    RecordBlobSource(store, b.digest, ref.registry, ref.repository);
  }

  result.chunk_resumes = pusher.resumes();

  // 3. The manifest: the image exists on the registry from here on.
  say.Say({"manifest", fmt::format("{}: putting manifest {}", ref.str(), oci.manifest_digest.str()), done, to_send});
  PADDOCK_RETURN_IF_ERROR(pusher.PutManifest(oci, target));
  say.Say({"pushed",
           fmt::format("{}: {} blobs, {} sent ({}), {} mounted, {} already there; manifest {}", ref.str(),
                       result.blobs_total, result.blobs_uploaded, Mib(result.bytes_uploaded), result.blobs_mounted,
                       result.blobs_present, oci.manifest_digest.str()),
           done, to_send});
  return result;
}

}  // namespace

Result<PushResult> PushImage(ImageStore& store, const std::string& image, const Reference& ref,
                             const PushOptions& options, const std::function<void(const PushProgress&)>& progress) {
  auto r = Push(store, image, ref, options, progress);
  if (!r.ok() && r.status().message().find(ref.str()) == std::string::npos)
    return r.status().Prefix(fmt::format("pushing {} to {}", image, ref.str()));
  return r;
}

}  // namespace paddock::storage::registry
