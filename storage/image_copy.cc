#include "storage/image_copy.h"

#include <memory>

#include <fmt/format.h>

#include "storage/image.h"

namespace paddock::storage {

ByteSource VerifiedSource(ByteSource inner, const Digest& digest, uint64_t size, uint64_t max_bytes,
                          std::string what) {
  struct State {
    Sha256 hash;
    uint64_t got = 0;
    bool done = false;
  };
  auto state = std::make_shared<State>();
  const uint64_t cap = size ? size : max_bytes;
  return [inner = std::move(inner), state, digest, size, cap, what = std::move(what)](void* buf,
                                                                                       size_t n) -> Result<size_t> {
    if (state->done) return size_t{0};
    PADDOCK_ASSIGN_OR_RETURN(size_t r, inner(buf, n));
    if (r > 0) {
      state->got += r;
      if (state->got > cap)
        return Error(Code::kDataLoss, "{} {} is longer than the {} bytes {}", what, digest.str(), cap,
                     size ? "its manifest declares" : "allowed");
      state->hash.Update(buf, r);
      return r;
    }
    state->done = true;
    if (size && state->got != size)
      return Error(Code::kDataLoss, "{} {} ended after {} of its {} bytes", what, digest.str(), state->got, size);
    Digest got = state->hash.Finish();
    if (!(got == digest))
      return Error(Code::kDataLoss, "{} {}: the bytes received hash to {}, not to the digest they were asked by",
                   what, digest.str(), got.str());
    return size_t{0};
  };
}

namespace {

// A small document (manifest, config), whole and verified.
Result<std::string> FetchSmall(BlobFetcher& from, const Digest& digest, uint64_t max_bytes, const char* what,
                               uint64_t* fetched) {
  PADDOCK_ASSIGN_OR_RETURN(ByteSource raw, from.Open(digest, 0, max_bytes));
  ByteSource src = VerifiedSource(std::move(raw), digest, 0, max_bytes, what);
  std::string out;
  std::string buf(64 << 10, '\0');
  for (;;) {
    PADDOCK_ASSIGN_OR_RETURN(size_t n, src(buf.data(), buf.size()));
    if (n == 0) break;
    out.append(buf.data(), n);
  }
  *fetched += out.size();
  return out;
}

}  // namespace

Result<CopyResult> CopyImage(ImageStore& store, const Digest& image, BlobFetcher& from, const CopyOptions& options,
                             const std::function<void(const CopyProgress&)>& progress) {
  const std::string label =
      options.display.empty() || options.display == image.str() ? image.str()
                                                                 : fmt::format("{} ({})", options.display, image.str());
  auto report = [&](CopyProgress p) {
    if (progress) progress(p);
  };
  CopyResult out;
  out.image = image;
  if (auto have = store.Get(image.str()); have.ok() && have->digest == image) {
    out.already_present = true;
    out.layers_total = have->manifest.layers.size();
    return out;
  }
  auto fail = [&](const Status& st) { return st.Prefix("fetching image " + label); };

  report({"manifest", "manifest " + image.Short(), 0, 0});
  const uint64_t max_json = store.options().max_json_bytes;
  auto mtext = FetchSmall(from, image, max_json, "manifest", &out.bytes_fetched);
  if (!mtext.ok()) return fail(mtext.status());
  auto manifest = Manifest::Decode(*mtext);
  if (!manifest.ok()) return fail(manifest.status().Prefix("manifest " + image.str()));
  if (manifest->layers.size() > options.max_layers)
    return fail(Error(Code::kInvalidArgument, "its manifest lists {} layers, more than the {} allowed",
                      manifest->layers.size(), options.max_layers));
  auto config = FetchSmall(from, manifest->config, max_json, "config", &out.bytes_fetched);
  if (!config.ok()) return fail(config.status());

  auto txn = store.Begin();
  if (!txn.ok()) return fail(txn.status());
  std::vector<StoredLayer> layers;
  std::vector<const StoredLayer*> missing;
  uint64_t to_fetch = 0;
  for (const StoredLayer& l : manifest->layers) {
    if (l.size > store.options().limits.max_unpacked_bytes)
      return fail(Error(Code::kInvalidArgument, "layer blob {} declares {} bytes, over the store's limit of {}",
                        l.blob.str(), l.size, store.options().limits.max_unpacked_bytes));
    auto reused = (*txn)->ReuseStoredLayer(l);
    if (reused.ok()) continue;
    missing.push_back(&l);
    to_fetch += l.size;
  }
  out.layers_total = manifest->layers.size();
  uint64_t done = 0;
  for (const StoredLayer* l : missing) {
    report({"layer", fmt::format("layer {} ({} bytes)", l->blob.Short(), l->size), done, to_fetch});
    const std::string what = "layer blob";
    auto raw = from.Open(l->blob, l->size, l->size);
    if (!raw.ok()) return fail(raw.status().Prefix(fmt::format("{} {}", what, l->blob.str())));
    ByteSource src = VerifiedSource(std::move(*raw), l->blob, l->size, l->size, what);
    auto added = (*txn)->AddStoredLayer(src, *l, fmt::format("{} {}", what, l->blob.str()));
    if (!added.ok()) return fail(added.status());
    done += l->size;
    ++out.layers_fetched;
  }
  out.bytes_fetched += done;
  report({"committing", "committing", done, to_fetch});
  auto made = (*txn)->AddImage(*config, manifest->layers, {});
  if (!made.ok()) return fail(made.status());
  if (!(*made == image))
    return fail(Error(Code::kDataLoss, "its manifest, stored here, gives the image id {}: it is not in canonical form",
                      made->str()));
  if (Status st = (*txn)->Commit(); !st.ok()) return fail(st);
  report({"committed", fmt::format("{} layers, {} fetched, {} bytes", out.layers_total, out.layers_fetched,
                                   out.bytes_fetched),
          done, to_fetch});
  return out;
}

}  // namespace paddock::storage
