#include "storage/oci_image.h"

#include <nlohmann/json.hpp>

namespace paddock::storage {

using nlohmann::json;

Result<OciImage> DescribeOciImage(ImageStore& store, const Image& img) {
  OciImage out;
  const BlobStore& blobs = store.blobs();
  auto stored_blob = [&blobs](const Digest& d) {
    return [&blobs, d](const std::function<Status(const void*, size_t)>& sink) { return blobs.Stream(d, sink); };
  };
  PADDOCK_ASSIGN_OR_RETURN(uint64_t config_size, blobs.Size(img.manifest.config));
  out.config = {kOciConfigType, img.manifest.config, config_size, stored_blob(img.manifest.config)};
  json layers = json::array();
  for (const StoredLayer& l : img.manifest.layers) {
    OciBlob b;
    if (l.compression == Compression::kZstd) {
      b = {"application/vnd.oci.image.layer.v1.tar+zstd", l.blob, l.size, stored_blob(l.blob)};
    } else if (l.compression == Compression::kGzip) {
      // Kept as a registry sent it: the same blob and digest go back out.
      b = {"application/vnd.oci.image.layer.v1.tar+gzip", l.blob, l.size, stored_blob(l.blob)};
    } else {
      // The tar itself: its digest is the diff_id, its size the uncompressed one.
      b = {"application/vnd.oci.image.layer.v1.tar", l.diff_id, l.uncompressed_size,
           [&store, l](const std::function<Status(const void*, size_t)>& sink) {
             return store.StreamLayerTar(l, sink);
           }};
    }
    layers.push_back({{"mediaType", b.media_type}, {"digest", b.digest.str()}, {"size", b.size}});
    out.layers.push_back(std::move(b));
  }
  json manifest = {{"schemaVersion", 2},
                   {"mediaType", kOciManifestType},
                   {"config", {{"mediaType", kOciConfigType}, {"digest", out.config.digest.str()}, {"size", config_size}}},
                   {"layers", layers}};
  out.manifest = manifest.dump();
  out.manifest_digest = Sha256::Of(out.manifest);
  return out;
}

}  // namespace paddock::storage
