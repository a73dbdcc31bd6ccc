#include "sandbox/container/overlay_diff.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/base/unique_fd.h"

namespace paddock {

namespace {

constexpr uint32_t kOverflowId = 65534;

class DiffWriter {
 public:
  DiffWriter(const OverlayDiffOptions& o, const TarBytesSink& sink, OverlayDiffStats* stats)
      : opts_(o), sink_(sink), stats_(stats) {}

  Status Run(int upper_fd) {
    a_ = archive_write_new();
    archive_write_set_format_pax_restricted(a_);
    archive_write_set_bytes_per_block(a_, 10240);
    if (archive_write_open2(a_, this, nullptr, &DiffWriter::WriteCb, nullptr, nullptr) != ARCHIVE_OK) {
      Status st = Fail("opening the layer tar");
      archive_write_free(a_);
      return st;
    }
    Status st = Dir(upper_fd, "");
    if (archive_write_close(a_) != ARCHIVE_OK && st.ok()) st = Fail("closing the layer tar");
    archive_write_free(a_);
    if (!sink_err_.ok()) return sink_err_;
    return st;
  }

 private:
  static la_ssize_t WriteCb(archive*, void* cd, const void* buf, size_t n) {
    auto* self = static_cast<DiffWriter*>(cd);
    Status st = self->sink_(buf, n);
    if (!st.ok()) {
      self->sink_err_ = st;
      return -1;
    }
    return static_cast<la_ssize_t>(n);
  }

  Status Fail(const std::string& what) {
    if (!sink_err_.ok()) return sink_err_;
    const char* e = archive_error_string(a_);
    return Error(Code::kInternal, "{}: {}", what, e ? e : "libarchive error");
  }

  uint32_t MapId(uint32_t host) const {
    if (host >= opts_.id_base && host - opts_.id_base < opts_.id_count) return host - opts_.id_base;
    return kOverflowId;
  }

  static bool HasXattr(int fd, const char* name, std::string* value = nullptr) {
    char buf[256];
    ssize_t n = fgetxattr(fd, name, buf, sizeof buf);
    if (n < 0) return false;
    if (value) value->assign(buf, static_cast<size_t>(n));
    return true;
  }

  using EntryPtr = std::unique_ptr<archive_entry, decltype(&archive_entry_free)>;
  EntryPtr NewEntry(const std::string& path, const struct stat& st) {
    EntryPtr e(archive_entry_new(), &archive_entry_free);
    archive_entry_set_pathname(e.get(), path.c_str());
    archive_entry_set_mode(e.get(), st.st_mode);
    archive_entry_set_uid(e.get(), MapId(st.st_uid));
    archive_entry_set_gid(e.get(), MapId(st.st_gid));
    archive_entry_set_mtime(e.get(), st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    archive_entry_set_size(e.get(), 0);
    return e;
  }

  Status Header(archive_entry* e, const std::string& path) {
    if (archive_write_header(a_, e) != ARCHIVE_OK) return Fail("writing " + path);
    if (stats_) stats_->entries++;
    return Status::Ok();
  }

  // A marker file (whiteout or opaque marker): empty, mode 0, owned by 0:0.
  Status Marker(const std::string& path, int64_t mtime) {
    EntryPtr e(archive_entry_new(), &archive_entry_free);
    archive_entry_set_pathname(e.get(), path.c_str());
    archive_entry_set_filetype(e.get(), AE_IFREG);
    archive_entry_set_perm(e.get(), 0);
    archive_entry_set_size(e.get(), 0);
    archive_entry_set_mtime(e.get(), mtime, 0);
    return Header(e.get(), path);
  }

  // Writes the children of directory `fd` (whose path in the layer is `rel`,
  // "" for the root).
  Status Dir(int fd, const std::string& rel) {
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) return ErrnoError("dup");
    DIR* d = fdopendir(dup_fd);
    if (!d) {
      close(dup_fd);
      return ErrnoError("listing " + Show(rel));
    }
    std::vector<std::string> names;
    while (dirent* de = readdir(d)) {
      std::string n = de->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) PADDOCK_RETURN_IF_ERROR(Entry(fd, n, rel.empty() ? n : rel + "/" + n));
    return Status::Ok();
  }

  static std::string Show(const std::string& rel) { return "/" + rel; }

  Status Entry(int parent, const std::string& name, const std::string& path) {
    struct stat st;
    if (fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      return ErrnoError("stat " + Show(path));
    if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 0 && minor(st.st_rdev) == 0) {
      if (stats_) stats_->whiteouts++;
      size_t slash = path.rfind('/');
      std::string wh = slash == std::string::npos ? ".wh." + path
                                                  : path.substr(0, slash + 1) + ".wh." + name;
      return Marker(wh, st.st_mtim.tv_sec);
    }
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode)) {
      if (stats_) stats_->skipped_special++;
      return Status::Ok();
    }
    if (S_ISDIR(st.st_mode)) {
      UniqueFd dfd(openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!dfd.valid()) return ErrnoError("opening " + Show(path));
      if (HasXattr(dfd.get(), "trusted.overlay.redirect"))
        return Error(Code::kFailedPrecondition,
                     "directory {} was renamed inside the sandbox (overlayfs redirect); a renamed "
                     "image directory cannot be expressed as a layer",
                     Show(path));
      std::string opaque;
      bool is_opaque = HasXattr(dfd.get(), "trusted.overlay.opaque", &opaque) && opaque == "y";
      EntryPtr e = NewEntry(path + "/", st);
      PADDOCK_RETURN_IF_ERROR(Header(e.get(), path));
      if (is_opaque) {
        if (stats_) stats_->opaque_dirs++;
        PADDOCK_RETURN_IF_ERROR(Marker(path + "/.wh..wh..opq", st.st_mtim.tv_sec));
      }
      return Dir(dfd.get(), path);
    }
    EntryPtr e = NewEntry(path, st);
    if (S_ISLNK(st.st_mode)) {
      std::string target(PATH_MAX, '\0');
      ssize_t n = readlinkat(parent, name.c_str(), target.data(), target.size());
      if (n < 0) return ErrnoError("readlink " + Show(path));
      target.resize(static_cast<size_t>(n));
      archive_entry_set_symlink(e.get(), target.c_str());
      return Header(e.get(), path);
    }
    if (S_ISFIFO(st.st_mode)) return Header(e.get(), path);
    if (!S_ISREG(st.st_mode)) {
      if (stats_) stats_->skipped_special++;
      return Status::Ok();
    }
    if (st.st_nlink > 1) {
      auto key = std::make_pair(st.st_dev, st.st_ino);
      auto it = links_.find(key);
      if (it != links_.end()) {
        archive_entry_set_hardlink(e.get(), it->second.c_str());
        if (stats_) stats_->hardlinks++;
        return Header(e.get(), path);
      }
      links_.emplace(key, path);
    }
    UniqueFd f(openat(parent, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!f.valid()) return ErrnoError("opening " + Show(path));
    if (HasXattr(f.get(), "trusted.overlay.metacopy"))
      return Error(Code::kFailedPrecondition,
                   "{} is a metadata-only copy-up (overlayfs metacopy); its data is in a lower "
                   "layer and cannot be written as a layer",
                   Show(path));
    archive_entry_set_size(e.get(), st.st_size);
    PADDOCK_RETURN_IF_ERROR(Header(e.get(), path));
    std::string buf(1 << 20, '\0');
    uint64_t left = static_cast<uint64_t>(st.st_size);
    while (left > 0) {
      ssize_t r = read(f.get(), buf.data(), std::min<uint64_t>(buf.size(), left));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ErrnoError("reading " + Show(path));
      if (r == 0)
        return Error(Code::kAborted, "{} shrank while it was being read; snapshot again", Show(path));
      if (archive_write_data(a_, buf.data(), static_cast<size_t>(r)) < 0) return Fail("writing " + path);
      left -= static_cast<uint64_t>(r);
      if (stats_) stats_->file_bytes += static_cast<uint64_t>(r);
    }
    return Status::Ok();
  }

  OverlayDiffOptions opts_;
  const TarBytesSink& sink_;
  OverlayDiffStats* stats_;
  archive* a_ = nullptr;
  Status sink_err_;
  std::map<std::pair<dev_t, ino_t>, std::string> links_;
};

}  // namespace

Status WriteOverlayDiffTar(int upper_fd, const OverlayDiffOptions& options, const TarBytesSink& sink,
                           OverlayDiffStats* stats) {
  if (stats) *stats = {};
  DiffWriter w(options, sink, stats);
  return w.Run(upper_fd);
}

}  // namespace paddock
