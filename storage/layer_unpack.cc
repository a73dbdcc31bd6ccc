#include "storage/layer_unpack.h"

#include <archive.h>
#include <archive_entry.h>

#include <memory>

#include "storage/entry_policy.h"
#include "storage/layer_decompress.h"
#include "storage/layer_tree_writer.h"

namespace paddock::storage {
namespace {

struct ReadCtx {
  DecompressPipe* pipe;
  Status status;
};

la_ssize_t ReadCb(archive* a, void* p, const void** out) {
  auto* ctx = static_cast<ReadCtx*>(p);
  auto chunk = ctx->pipe->Next();
  if (!chunk.ok()) {
    ctx->status = chunk.status();
    archive_set_error(a, EIO, "%s", chunk.status().message().c_str());
    return -1;
  }
  *out = chunk->data();
  return static_cast<la_ssize_t>(chunk->size());
}

}  // namespace

Result<UnpackStats> UnpackLayer(ImageStore& store, const StoredLayer& layer, const std::string& dest,
                                const UnpackOptions& options) {
  const std::string what = fmt::format("layer {}", layer.diff_id.str());
  PADDOCK_ASSIGN_OR_RETURN(auto out, LayerTreeWriter::Open(dest, what, options.start_writeback));
  PADDOCK_ASSIGN_OR_RETURN(auto pipe, DecompressPipe::Start(store.blobs().BlobPath(layer.blob), layer.compression,
                                                             layer.uncompressed_size));
  ReadCtx ctx{pipe.get(), Status::Ok()};
  std::unique_ptr<archive, decltype(&archive_read_free)> in(archive_read_new(), &archive_read_free);
  archive_read_support_format_tar(in.get());
  if (archive_read_open(in.get(), &ctx, nullptr, ReadCb, nullptr) != ARCHIVE_OK)
    return Error(Code::kDataLoss, "{}: {}", what, archive_error_string(in.get()));

  EntryPolicy policy(LayerLimits{});
  for (;;) {
    archive_entry* e;
    int r = archive_read_next_header(in.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      if (!ctx.status.ok()) return ctx.status.Prefix(what);
      return Error(Code::kDataLoss, "{}: entry '(header)': {}", what, archive_error_string(in.get()));
    }
    LayerEntry le;
    Status st = policy.Check(e, &le);
    if (!st.ok()) return Error(Code::kInvalidArgument, "{}: refused at unpack: {}", what, st.message());
    st = out->Add(in.get(), e, le);
    if (!st.ok()) return ctx.status.ok() ? st : ctx.status.Prefix(what);
  }
  PADDOCK_ASSIGN_OR_RETURN(UnpackStats stats, out->Finish());
  // Drain the rest of the stream (tar padding) so the whole tar is hashed.
  for (;;) {
    PADDOCK_ASSIGN_OR_RETURN(std::string_view chunk, pipe->Next());
    if (chunk.empty()) break;
  }
  stats.tar_bytes = pipe->bytes_out();
  if (!(pipe->digest() == layer.diff_id))
    return Error(Code::kDataLoss, "{}: blob {} decompresses to {}, not the diff_id", what, layer.blob.str(),
                 pipe->digest().str());
  return stats;
}

}  // namespace paddock::storage
