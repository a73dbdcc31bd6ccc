#include "storage/layer_unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>

#include <memory>
#include <utility>
#include <vector>

#include "storage/entry_policy.h"
#include "storage/layer_decompress.h"
#include "storage/overlay_whiteout.h"

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

// Drops trusted.* xattrs (overlayfs metadata must come from us, not the layer).
void FilterXattrs(archive_entry* e) {
  if (archive_entry_xattr_reset(e) == 0) return;
  std::vector<std::tuple<std::string, std::string>> keep;
  bool dropped = false;
  const char* name;
  const void* value;
  size_t size;
  while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
    if (std::string_view(name).substr(0, 8) == "trusted.") {
      dropped = true;
      continue;
    }
    keep.emplace_back(name, std::string(static_cast<const char*>(value), size));
  }
  if (!dropped) return;
  archive_entry_xattr_clear(e);
  for (auto& [n, v] : keep) archive_entry_xattr_add_entry(e, n.c_str(), v.data(), v.size());
}

}  // namespace

Result<UnpackStats> UnpackLayer(ImageStore& store, const StoredLayer& layer, const std::string& dest) {
  char real[PATH_MAX];
  if (!::realpath(dest.c_str(), real)) return ErrnoError(fmt::format("resolving {}", dest));
  const std::string root(real);
  UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd.valid()) return ErrnoError(fmt::format("opening {}", root));
  const std::string what = fmt::format("layer {}", layer.diff_id.str());

  PADDOCK_ASSIGN_OR_RETURN(auto pipe, DecompressPipe::Start(store.blobs().BlobPath(layer.blob), layer.compression,
                                                             layer.uncompressed_size));
  ReadCtx ctx{pipe.get(), Status::Ok()};
  std::unique_ptr<archive, decltype(&archive_read_free)> in(archive_read_new(), &archive_read_free);
  archive_read_support_format_tar(in.get());
  if (archive_read_open(in.get(), &ctx, nullptr, ReadCb, nullptr) != ARCHIVE_OK)
    return Error(Code::kDataLoss, "{}: {}", what, archive_error_string(in.get()));

  std::unique_ptr<archive, decltype(&archive_write_free)> out(archive_write_disk_new(), &archive_write_free);
  archive_write_disk_set_options(out.get(), ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                                ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                                ARCHIVE_EXTRACT_SECURE_SYMLINKS);
  // No archive_write_disk_set_standard_lookup: owners stay numeric.

  EntryPolicy policy(LayerLimits{});
  UnpackStats stats;
  std::vector<std::string> whiteouts, opaques;
  auto fail = [&](std::string_view entry, const std::string& msg) {
    if (!ctx.status.ok()) return ctx.status.Prefix(what);
    return Error(Code::kDataLoss, "{}: entry '{}': {}", what, entry, msg);
  };
  for (;;) {
    archive_entry* e;
    int r = archive_read_next_header(in.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return fail("(header)", archive_error_string(in.get()));
    LayerEntry le;
    Status st = policy.Check(e, &le);
    if (!st.ok()) return Error(Code::kInvalidArgument, "{}: refused at unpack: {}", what, st.message());
    ++stats.entries;
    if (le.type == EntryType::kWhiteout) {
      whiteouts.push_back(le.path);
      continue;
    }
    if (le.type == EntryType::kOpaque) {
      opaques.push_back(le.path);
      continue;
    }
    // Absolute destination paths: archive_write_disk resolves relative ones against
    // the process cwd, which other threads share.
    archive_entry_set_pathname(e, le.path == "." ? root.c_str() : (root + "/" + le.path).c_str());
    if (le.type == EntryType::kHardlink) archive_entry_set_hardlink(e, (root + "/" + le.link).c_str());
    FilterXattrs(e);
    r = archive_write_header(out.get(), e);
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return fail(le.path, archive_error_string(out.get()));
    if (le.type == EntryType::kFile && archive_entry_size(e) > 0) {
      const void* buf;
      size_t size;
      la_int64_t off;
      for (;;) {
        r = archive_read_data_block(in.get(), &buf, &size, &off);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return fail(le.path, archive_error_string(in.get()));
        if (archive_write_data_block(out.get(), buf, size, off) < 0)
          return fail(le.path, archive_error_string(out.get()));
      }
    }
    r = archive_write_finish_entry(out.get());
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return fail(le.path, archive_error_string(out.get()));
  }
  // Whiteouts go in after every entry (a same-layer entry wins over a whiteout) and
  // before close, whose fixups then restore directory mtimes and modes.
  for (const auto& w : whiteouts) PADDOCK_RETURN_IF_ERROR(MakeOverlayWhiteout(root_fd.get(), w).Prefix(what));
  for (const auto& o : opaques) PADDOCK_RETURN_IF_ERROR(MakeOverlayOpaque(root_fd.get(), o).Prefix(what));
  stats.whiteouts = whiteouts.size();
  stats.opaque_dirs = opaques.size();
  if (archive_write_close(out.get()) != ARCHIVE_OK) return fail("(close)", archive_error_string(out.get()));
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
