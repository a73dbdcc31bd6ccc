// ExportOci: an image back out as an OCI image layout directory.
#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "storage/fs_util.h"
#include "storage/image_import.h"
#include "storage/layer_codec.h"
#include "storage/oci_image.h"

namespace paddock::storage {

using nlohmann::json;

namespace {
// Writes a blob into out/blobs/sha256 via a temp file, returning its digest.
Result<std::pair<Digest, uint64_t>> WriteOutBlob(const std::string& out,
                                                const std::function<Status(const ByteSink&)>& produce) {
  std::string tmp = out + "/blobs/sha256/" + UniqueTempName(".tmp-");
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoError(fmt::format("creating {}", tmp));
  Sha256 h;
  uint64_t size = 0;
  Status st = produce([&](const void* p, size_t n) {
    h.Update(p, n);
    size += n;
    return WriteAll(fd.get(), p, n, tmp);
  });
  if (st.ok() && ::fsync(fd.get()) != 0) st = ErrnoError("fsync");
  fd.reset();
  Digest d = h.Finish();
  if (st.ok() && ::rename(tmp.c_str(), (out + "/blobs/sha256/" + d.hex()).c_str()) != 0) st = ErrnoError("rename");
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return std::make_pair(d, size);
}
}  // namespace

Status ExportOci(ImageStore& store, std::string_view ref, const std::string& out) {
  PADDOCK_ASSIGN_OR_RETURN(Image img, store.Get(ref));
  PADDOCK_ASSIGN_OR_RETURN(OciImage oci, DescribeOciImage(store, img));
  PADDOCK_RETURN_IF_ERROR(MakeDirs(out + "/blobs/sha256"));
  auto write_blob = [&](const OciBlob& b) -> Status {
    PADDOCK_ASSIGN_OR_RETURN(auto written, WriteOutBlob(out, b.write));
    if (!(written.first == b.digest) || written.second != b.size)
      return Error(Code::kDataLoss, "exported blob {} came out as {} ({} bytes)", b.digest.str(), written.first.str(),
                   written.second);
    return Status::Ok();
  };
  PADDOCK_RETURN_IF_ERROR(write_blob(oci.config));
  for (const OciBlob& l : oci.layers) PADDOCK_RETURN_IF_ERROR(write_blob(l));
  const std::string& mtext = oci.manifest;
  PADDOCK_ASSIGN_OR_RETURN(auto man, WriteOutBlob(out, [&](const ByteSink& sink) { return sink(mtext.data(), mtext.size()); }));
  json desc = {{"mediaType", kOciManifestType},
               {"digest", man.first.str()},
               {"size", man.second}};
  if (!img.names.empty())
    desc["annotations"] = {{"io.containerd.image.name", img.names[0]},
                           {"org.opencontainers.image.ref.name", img.names[0].substr(img.names[0].rfind(':') + 1)}};
  json index = {{"schemaVersion", 2}, {"mediaType", kOciIndexType}, {"manifests", {desc}}};
  PADDOCK_RETURN_IF_ERROR(AtomicWriteFile(out + "/oci-layout", R"({"imageLayoutVersion":"1.0.0"})"));
  return AtomicWriteFile(out + "/index.json", index.dump());
}

}  // namespace paddock::storage
